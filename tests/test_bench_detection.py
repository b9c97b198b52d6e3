"""``bench --task detection`` runs end to end on a small input and reduced widths: every row timed or skipped with
its reason, FLOPs counted, the fused backbone cheaper than its training form in FLOPs, the floor from peaks measured
in the same rounds. (Speed itself is measured by the command on a real size, not here: benchmarks are not tests.)"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vanilladeploy.cli import app


def test_detection_bench_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "det.json"
    result = CliRunner().invoke(app, [
        "bench", "--task", "detection", "--det-size", "128x192", "--width-divisor", "8", "--iters", "1",
        "--warmup", "0", "--models", "vanillanet_13,vanillanet_13:train,retinanet_vanillanet_13:train",
        "--runtimes", "torch,onnxruntime", "--json-out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    info = json.loads(out.read_text())
    rows = {(r["model"], r["runtime"]): r for r in info["rows"]}
    fused, train = rows[("vanillanet_13", "onnxruntime")], rows[("vanillanet_13:train", "onnxruntime")]
    assert fused["median_ms"] > 0 and train["median_ms"] > 0
    assert 0.5 < fused["gflops"] / train["gflops"] < 0.7  # each stage's conv1 gone (0.63 here; 0.55 at full widths)
    assert info["peaks"]["fp32"]["peak_flops"] > 0 and fused["floor_ms"] > 0 and fused["efficiency"] > 0
    assert "official detection code" in rows[("retinanet_vanillanet_13:train", "onnxruntime")]["skipped"]
    assert rows[("retinanet_vanillanet_13:train", "torch")]["median_ms"] > 0
