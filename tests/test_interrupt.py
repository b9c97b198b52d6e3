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


def _files_staged_by(proc: subprocess.Popen, parent: Path, name: str) -> int:
    """Files in ``proc``'s own staging directory beside ``parent/name`` now (0 before it writes, or after)."""
    return sum(1 for d in parent.glob(f".{name}.staging-{proc.pid}-*") for p in d.rglob("*") if p.is_file())


def _kill(proc: subprocess.Popen, sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    code = proc.wait(timeout=300)
    output = proc.stdout.read().decode()
    assert code in (0, -signal.SIGKILL, -signal.SIGINT, 130), (code, output)  # -SIGINT: during shutdown
    if code == 130:
        assert "interrupted" in output and "Traceback" not in output


def test_killed_exports_of_another_source_leave_the_old_set_or_the_new_never_a_mix(tmp_path: Path) -> None:
    """The set on disk is from ``vanillanet_5``; each round starts an export of another checkpoint into it and kills
    it (SIGKILL, SIGINT) either at a fraction of an export's time or the moment its staging directory holds a file.
    After every kill the directory holds the old set or the new one, each file with the sha256 its report records
    (the two sources' files differ, so a mix cannot pass), and at least one kill landed while files were written."""
    ckpt = tmp_path / "other.pth"
    torch.save(random_model("vanillanet_5", seed=21).state_dict(), ckpt)
    out = tmp_path / "out"
    start = time.perf_counter()
    assert _start("vanillanet_5", out).wait(timeout=300) == 0
    duration = time.perf_counter() - start
    old = _assert_complete_or_absent(out)
    assert old is not None and old != str(ckpt)
    mid_write, outcomes = 0, []
    for i, when in enumerate([0.3, 0.6, 0.9, "staged", "staged", "staged", "staged"]):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        proc = _start(ckpt, out)
        if when == "staged":
            deadline = time.monotonic() + 300
            while proc.poll() is None and not _files_staged_by(proc, tmp_path, out.name) \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
        else:
            time.sleep(duration * float(when))
        mid_write += proc.poll() is None and _files_staged_by(proc, tmp_path, out.name) > 0
        _kill(proc, sig)
        outcomes.append(_assert_complete_or_absent(out))
        assert outcomes[-1] in (old, str(ckpt)), outcomes  # the old set or the new, each self-consistent
        if outcomes[-1] != old:  # the export finished before the kill: put the old set back for the next round
            assert _start("vanillanet_5", out).wait(timeout=300) == 0
    assert mid_write >= 1, f"no kill landed while files were being written ({outcomes})"
    final = _start(ckpt, out)
    assert final.wait(timeout=300) == 0
    assert _assert_complete_or_absent(out) == str(ckpt)
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
