"""Hostile and broken checkpoints through the real CLI: nothing executes, every failure is one clear line.

Each hostile payload would create a file named ``pwned*`` in the test's directory if it ever ran; the tests
assert it never appears. Payloads are tried inside the zip container torch.save writes (unpickled with
``weights_only``, refused at the first non-allow-listed global) and as a bare pickle (refused unread).
"""

from __future__ import annotations

import builtins
import ctypes
import importlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import missing_in_ci, require
from safetensors.torch import save as save_safetensors
from test_cli import export, run


class AttackerObject:
    """An attacker-defined class: unpickling it would call ``__setstate__`` with the marker path."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).touch()


class _Reduce:
    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(tmp: Path) -> dict[str, object]:
    marker = str(tmp / "pwned")
    (tmp / "vd_payload_module.py").write_text(f"open({marker!r}, 'w').close()\n")
    return {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "builtins.exec": _Reduce(builtins.exec, f"open({marker!r}, 'w').close()"),
        "builtins.eval": _Reduce(builtins.eval, f"open({marker!r}, 'w')"),
        "subprocess.Popen": _Reduce(subprocess.Popen, ["touch", marker]),
        "importlib.import_module": _Reduce(importlib.import_module, "vd_payload_module"),
        "attacker class": AttackerObject(marker),
        "torch.save": _Reduce(torch.save, [1], marker),
        "numpy.save": _Reduce(np.save, marker + ".npy", [1]),
    }


def _in_torch_zip(pickled: bytes, path: Path) -> Path:
    """The zip torch.save writes, with its data.pkl replaced by ``pickled``."""
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pickled if info.filename.endswith("data.pkl") else src.read(info))
    return path


PAYLOAD_NAMES = ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen", "importlib.import_module",
                 "attacker class", "torch.save", "numpy.save"]


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_control_each_payload_does_run_under_plain_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          name: str) -> None:
    """Proof that the markers work: unpickled without weights_only, every payload leaves its marker."""
    monkeypatch.syspath_prepend(str(tmp_path))
    result = pickle.loads(pickle.dumps(_payloads(tmp_path)[name], protocol=2))
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=10)
    sys.modules.pop("vd_payload_module", None)
    assert list(tmp_path.glob("pwned*")), name


@pytest.mark.parametrize("container", ["pickle", "torch zip"])
@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_hostile_pickle_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                   container: str) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))  # so the import payload would find its module
    pickled = pickle.dumps({"model": _payloads(tmp_path)[name], "epoch": 300}, protocol=2)
    path = tmp_path / "evil.pth"
    if container == "pickle":
        path.write_bytes(pickled)
    else:
        _in_torch_zip(pickled, path)
    result = export(path, tmp_path / "out")
    assert result.exit_code == 2, result.output
    if container == "pickle":  # a bare pickle is refused before it is read at all
        assert "bare pickle" in result.output
    else:
        assert "refused to load" in result.output and "not allow-listed" in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("pwned*")) and not (tmp_path / "out").exists()
    assert "vd_payload_module" not in sys.modules


def _safetensors_with_header(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


SAFETENSORS_LIES = {
    "offsets beyond the data": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 30]}}, 16),
    "overlapping tensors": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, 24),
    "shape larger than its bytes": ({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 16]}}, 16),
    "negative-looking offsets": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, 16),
    "unknown dtype": ({"w": {"dtype": "X99", "shape": [4], "data_offsets": [0, 16]}}, 16),
    "gap before data": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, 24),
}


@pytest.mark.parametrize("case", list(SAFETENSORS_LIES))
def test_lying_safetensors_headers_are_refused(tmp_path: Path, case: str) -> None:
    header, size = SAFETENSORS_LIES[case]
    path = tmp_path / "lie.safetensors"
    path.write_bytes(_safetensors_with_header(header, bytes(size)))
    result = export(path, tmp_path / "out")
    assert result.exit_code == 2 and "not a valid safetensors file" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_safetensors_header_length_beyond_file(tmp_path: Path) -> None:
    good = save_safetensors({"w": torch.zeros(4)})
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", len(good) * 10) + good[8:])
    result = export(path, tmp_path / "out")
    assert result.exit_code == 2 and "safetensors" in result.output, result.output


def test_compressed_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    """A deflated record of 64 MB zeros in a file of ~70 kB: torch would inflate it; we refuse first."""
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(16 << 20)}}, buffer)
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert path.stat().st_size < 1 << 20
    result = export(path, tmp_path / "out")
    assert result.exit_code == 2 and "is compressed" in result.output, result.output


def test_zip_with_other_content(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    result = export(path, tmp_path / "out")
    assert result.exit_code == 2 and "not a PyTorch checkpoint" in result.output, result.output


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "a.pth").symlink_to(tmp_path / "b.pth")
    (tmp_path / "b.pth").symlink_to(tmp_path / "a.pth")
    result = export(tmp_path / "a.pth", tmp_path / "out")
    assert result.exit_code == 2 and "cannot read" in result.output, result.output


def _without_root_file_access() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that even
    root (as CI runs) obeys file modes. Harmless for other users."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.pth"
    torch.save({"w": torch.zeros(1)}, path)
    path.chmod(0)
    try:
        result = subprocess.run([sys.executable, "-m", "vanilladeploy", "export", str(path), "--out",
                                 str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                                preexec_fn=_without_root_file_access)
    except subprocess.TimeoutExpired:
        raise  # a hang is a failure, never a skip
    except subprocess.SubprocessError as e:  # preexec_fn could not drop the capabilities: a failure under CI=true
        missing_in_ci(f"cannot drop root's file-access capabilities here (CAP_SETPCAP): {e}")
    assert result.returncode == 2 and "Permission denied" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_torchvision_resnet50_state_dict(tmp_path: Path) -> None:
    models = require("torchvision.models", "torchvision is in the test extra")
    path = tmp_path / "resnet50.pth"
    torch.save(models.resnet50().state_dict(), path)
    result = export(path, tmp_path / "out")
    assert result.exit_code == 2 and "not a VanillaNet state dict" in result.output and "conv1.weight" in result.output


def test_inspect_refuses_the_same_way(tmp_path: Path) -> None:
    pickled = pickle.dumps({"model": _Reduce(os.system, f"touch {tmp_path / 'pwned'}")}, protocol=2)
    path = _in_torch_zip(pickled, tmp_path / "evil.pth")
    result = run("inspect", path)
    assert result.exit_code == 2 and "refused" in result.output and not (tmp_path / "pwned").exists()
