"""Killing exports (SIGINT, SIGKILL) at many points and racing two exports: the output directory always holds a
complete, self-consistent set (every file the report names, with the sha256 it records) or nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_IMG, random_model

from vanilladeploy import cli
from vanilladeploy.atomic import MARKER
from vanilladeploy.checkpoint import sha256_of

SET = ["vanillanet_5.onnx", "vanillanet_5_deploy.pth", "vanillanet_5.report.json"]


def _start(source: str | Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vanilladeploy", "export", str(source), "--out", str(out),
                             "--img-size", str(SMALL_IMG)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _assert_complete_or_absent(out: Path) -> str | None:
    """The source recorded in the set, or None when there is no set; fails on any partial or mixed state."""
    if not out.exists():
        return None
    assert sorted(p.name for p in out.iterdir()) == sorted(SET + [MARKER])
    report = json.loads((out / SET[2]).read_text())
    for name, meta in report["artifacts"].items():
        assert sha256_of(out / name) == meta["sha256"], name
    return report["source"]["path"]


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_killed_exports_leave_previous_set_or_none(tmp_path: Path) -> None:
    out = tmp_path / "out"
    start = time.perf_counter()
    first = _start("vanillanet_5", out)
    assert first.wait(timeout=300) == 0, first.stdout.read().decode()
    duration = time.perf_counter() - start
    assert _assert_complete_or_absent(out) is not None
    for i, fraction in enumerate([0.15, 0.35, 0.55, 0.7, 0.8, 0.9, 0.95, 1.0]):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        proc = _start("vanillanet_5", out)
        time.sleep(duration * fraction)
        proc.send_signal(sig)
        code = proc.wait(timeout=300)
        output = proc.stdout.read().decode()
        assert code in (0, -signal.SIGKILL, -signal.SIGINT, 130), (code, output)  # -SIGINT: during shutdown
        if code == 130:
            assert "interrupted" in output and "Traceback" not in output
        assert _assert_complete_or_absent(out) is not None  # the earlier set survives every kill
    final = _start("vanillanet_5", out)
    assert final.wait(timeout=300) == 0
    assert _assert_complete_or_absent(out) is not None
    assert _leftovers(tmp_path) == []  # staging directories of killed runs were cleaned up


def test_two_concurrent_exports_do_not_mix(tmp_path: Path) -> None:
    ckpt = tmp_path / "other.pth"
    torch.save(random_model("vanillanet_5", seed=21).state_dict(), ckpt)
    out = tmp_path / "out"
    procs = [_start("vanillanet_5", out), _start(ckpt, out)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()
    assert _assert_complete_or_absent(out) in {"vanillanet_5 (untrained: random weights, seed 0)", str(ckpt)}
    assert _leftovers(tmp_path) == []


def _interrupted_in_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def export(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("vanilladeploy.api.export", export)  # what the export command calls
    monkeypatch.setattr(sys, "argv", ["vanilladeploy", "export", "vanillanet_5"])  # the real app from here


def _interrupted_in_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    def app() -> None:
        raise SystemExit(130)  # typer's own handling of a Ctrl-C outside the command body: silent

    monkeypatch.setattr(cli, "app", app)


def _interrupted_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def app() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", app)


@pytest.mark.parametrize("where", [_interrupted_in_command, _interrupted_in_typer, _interrupted_at_start])
def test_every_interrupt_exits_130_with_one_line(where, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    where(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.count("interrupted") == 1 and "Traceback" not in err
