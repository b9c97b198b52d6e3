"""vanilladeploy/bench.py and benchmarks/report.py: one tiny CPU run through the real CLI; its JSON, CSV and plot;
backends that cannot run here are listed as skipped with the reason. No timing thresholds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from benchmarks.report import CSV_FIELDS, SCHEMA_VERSION
from test_cli import run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("bench")
    result = run("bench", "--models", "vanillanet_5,resnet18", "--train-form", "--device", "cpu",
                 "--backends", "torch,onnxruntime,torch-cudagraph,tensorrt", "--img-size", 32, "--warmup", 1,
                 "--iters", 3, "--threads", 1, "--json", out / "r.json", "--csv", out / "r.csv", "--plot",
                 out / "r.png", "--cache-dir", out / "cache")
    return result, out


def test_bench_runs_and_prints_the_table(bench_run: tuple) -> None:
    result, out = bench_run
    assert result.exit_code == 0, result.output
    assert "torch · cpu · fp32 · batch 1" in result.output and "onnxruntime · cpu" in result.output
    assert "tensorrt: skipped — TensorRT needs --device cuda" in result.output
    assert "torch-cudagraph: skipped — CUDA graphs need --device cuda" in result.output
    assert "1.61 / 0.33 / 0.27" in result.output  # the published A100 numbers of VanillaNet-5 beside ours


def test_bench_json_schema(bench_run: tuple) -> None:
    _, out = bench_run
    doc = json.loads((out / "r.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and doc["config"]["device"] == "cpu"
    assert doc["machine"]["pinning"]["threads"] == 1 and doc["machine"]["versions"]["onnxruntime"]
    assert doc["device_peak"]["peak_flops"] > 0
    records = doc["records"]
    keys = {(r["model"], r["backend"]) for r in records}
    models = ("vanillanet_5", "resnet18", "vanillanet_5:train")
    assert keys == {(m, b) for m in models for b in ("torch", "onnxruntime", "torch-cudagraph", "tensorrt")}
    for r in records:
        assert (r["device"], r["precision"], r["batch"], r["img_size"]) == ("cpu", "fp32", 1, 32)
        if r["backend"] in ("torch", "onnxruntime"):
            s = r["stats"]
            assert r["status"] == "ok" and s["iterations"] == 3 and 0 < s["min_ms"] <= s["median_ms"] <= s["p99_ms"]
            assert r["floor_ms"] > 0 and r["efficiency"] == pytest.approx(r["floor_ms"] / s["median_ms"], rel=1e-3)
            assert r["peak_memory_mb"] > 0 and r["copies_included"] is False
        else:
            assert r["status"] == "skipped" and "--device cuda" in r["reason"] and r["stats"] is None
    v5 = next(r for r in records if r["model"] == "vanillanet_5" and r["backend"] == "torch")
    train = next(r for r in records if r["model"] == "vanillanet_5:train" and r["backend"] == "torch")
    assert v5["depth"] == 5 and v5["published"]["top1"] == 72.49 and train["published"]["top1"] is None
    assert train["gflops"] > v5["gflops"] and train["form"] == "train"


def test_bench_csv_and_plot(bench_run: tuple) -> None:
    _, out = bench_run
    rows = list(csv.DictReader((out / "r.csv").open()))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == 12
    assert {r["status"] for r in rows} == {"ok", "skipped"}
    png = (out / "r.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("args,words", [
    (("--models", "resnet51"), "unknown model 'resnet51'"),
    (("--backends", "tvm"), "unknown backend 'tvm'"),
    (("--precision", "int8"), "--precision int8"),
    (("--device", "tpu"), "--device tpu"),
])
def test_bench_usage_errors(args: tuple[str, ...], words: str, tmp_path: Path) -> None:
    result = run("bench", *args, "--json", tmp_path / "r.json", "--cache-dir", tmp_path)
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "r.json").exists()


def test_thread_pinning_is_restored(tmp_path: Path) -> None:
    import os

    import torch

    before = (os.sched_getaffinity(0), torch.get_num_threads())
    result = run("bench", "--models", "vanillanet_5", "--backends", "torch", "--device", "cpu", "--img-size", 32,
                 "--warmup", 0, "--iters", 1, "--threads", 1, "--json", tmp_path / "r.json", "--csv",
                 tmp_path / "r.csv", "--plot", tmp_path / "r.png", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert (os.sched_getaffinity(0), torch.get_num_threads()) == before


def test_cuda_without_a_gpu_exits_3(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = run("bench", "--device", "cuda", "--json", tmp_path / "r.json", "--cache-dir", tmp_path)
    assert result.exit_code == 3 and "no CUDA GPU" in result.output


def test_missing_matplotlib_is_reported_before_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = run("bench", "--models", "vanillanet_5", "--json", tmp_path / "r.json", "--cache-dir", tmp_path)
    assert result.exit_code == 3 and "pip install 'vanilladeploy[bench]'" in result.output
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "device-peaks.json").exists()
