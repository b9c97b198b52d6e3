"""Reading checkpoints safely: no code from a file ever runs.

``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers
only; the single extra type allowed is ``argparse.Namespace`` (the official trainer stores its ``args`` as one).
``.safetensors`` files hold no code at all. Containers are unwrapped (``model_ema`` → ``model`` → ``state_dict`` →
bare), DDP's ``module.`` prefixes stripped, and every tensor checked for finiteness before anything uses it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vanilladeploy.errors import CheckpointError

CONTAINER_KEYS = ("model_ema", "model", "state_dict")
"""Probed in this order; the official evaluation uses ``model_ema``."""
SAFE_GLOBALS: list[type] = [argparse.Namespace]
DEFAULT_DECAY_EPOCHS = 100
"""The official trainer's ``--decay_epochs`` default (λ schedule length E)."""

Form = Literal["train", "deploy", "detector"]
"""``detector``: an mmdetection checkpoint (``backbone.*``, ``neck.*``, heads); see :mod:`vanilladeploy.detector`."""
DETECTOR_PREFIX = "backbone."


@dataclass
class Checkpoint:
    """A state dict and what its file said about how it was trained."""

    state_dict: dict[str, Tensor]
    source: str
    form: Form
    container_key: str | None = None
    epoch: int | None = None
    args: dict[str, Any] = field(default_factory=dict)
    untrained: bool = False
    file: Path | None = None
    """The file it was read from (None: made in memory)."""
    file_stamp: tuple[int, int, int] | None = None
    """The file's (size, mtime_ns, inode) when it was read."""
    meta: dict[str, Any] = field(default_factory=dict)
    """mmdetection's ``meta`` (its ``config`` text, ``CLASSES``, ``mmdet_version`` …); empty for other files."""

    @functools.cached_property
    def sha256(self) -> str | None:
        """The file's sha256, computed when first asked (inspect and export ask; a loader that only reads does not
        pay for hashing 100 MB), and refused if the file has changed since it was read: the digest always names the
        bytes that were loaded."""
        if self.file is None:
            return None
        if _stamp(self.file) != self.file_stamp:
            raise CheckpointError(f"{self.file} changed after it was read; read it again.")
        return sha256_of(self.file)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: Path, *, key: str | None = None) -> Checkpoint:
    """Read ``path`` (torch zip or safetensors) into a :class:`Checkpoint`; never executes code."""
    stamp = _stamp(path) if path.is_file() else None
    obj = _read_file(path)
    state_dict, used_key = unwrap_state_dict(obj, key=key, source=path)
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    args = obj.get("args") if isinstance(obj, Mapping) else None
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    state_dict = strip_prefix(_check_tensors(state_dict, path), "module.")
    check_finite(state_dict, source=path)
    return Checkpoint(
        state_dict=state_dict,
        source=str(path),
        form="detector" if is_detector(state_dict) else detect_form(state_dict, source=path),
        container_key=used_key,
        epoch=int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        args=dict(args) if isinstance(args, Mapping) else {},
        file=path if stamp is not None else None,
        file_stamp=stamp,
        meta=dict(meta) if isinstance(meta, Mapping) else {},
    )


def _read_file(path: Path) -> Any:
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it.")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file.") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e.strerror or e}).") from None
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or save was probably interrupted.")
    if _looks_like_safetensors(head):
        return _read_container(path, "safetensors", _read_safetensors)
    if head.startswith(b"PK"):
        return _read_container(path, "zip", _read_zip)
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a bare pickle (PyTorch's pre-1.6 format, or not a PyTorch file at all). vanilladeploy reads "
            "the zip format torch.save has written since 2020 and .safetensors, whose tensor sizes can be checked "
            "against the file before anything is allocated. Convert it with torch.save(torch.load(OLD, "
            "weights_only=True), NEW) on a recent PyTorch."
        )
    raise CheckpointError(
        f"{path} is not a checkpoint: expected a PyTorch (zip) file or .safetensors, "
        f"found bytes {head[:8]!r}."
    )


def _read_container(path: Path, kind: str, read: Callable[[Path], Any]) -> Any:
    """The boundary between the file's bytes and our code: whatever the zip reader, torch's unpickler or safetensors
    raise while reading a damaged container becomes a :class:`CheckpointError` (exit 2), so "internal error" stays
    reserved for our own bugs. Memory exhaustion and interrupts pass through."""
    try:
        return read(path)
    except CheckpointError:
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read this {kind} container; it is damaged or truncated "
                              f"({_first_line(e)}). Download or save it again.") from None


def _read_zip(path: Path) -> Any:
    check_zip_container(path)
    return _read_torch(path)


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for every malformed header
        raise CheckpointError(f"{path}: not a valid safetensors file ({_first_line(e)}).") from None


def check_zip_container(path: Path) -> None:
    """Refuse a zip that ``torch.save`` would not write, before torch reads it.

    torch stores every record uncompressed, so the records' total size cannot exceed the file's. A deflated record
    could declare gigabytes in a small file (torch would inflate it: a zip bomb); a zip without ``data.pkl`` is some
    other archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read this PyTorch file; it is truncated or corrupted "
                              f"({_first_line(e)}). Download or save it again.") from None
    if not any(i.filename.endswith("data.pkl") for i in infos):
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (it has no data.pkl).")
    compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CheckpointError(f"{path}: record {compressed[0]!r} is compressed, which torch.save never does; "
                              "refusing it (a compressed record can expand far beyond the file's size).")
    declared, actual = sum(i.file_size for i in infos), path.stat().st_size
    if declared > actual:
        raise CheckpointError(f"{path}: its records declare {declared} bytes but the file has {actual}; "
                              "the archive is corrupted or crafted.")


def _read_torch(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"'{found.group(1)}'" if found else "an object that is not a tensor or plain container"
        raise CheckpointError(
            f"{path}: refused to load: the pickle asks for {what}, which is not allow-listed, and vanilladeploy "
            "never runs code from a checkpoint. If you trust its origin, re-save only its state dict "
            "(torch.save(model.state_dict(), ...)) or convert it to .safetensors."
        ) from None
    except Exception as e:  # torch reports truncation/corruption as RuntimeError, EOFError, ValueError, ...
        raise CheckpointError(
            f"{path}: cannot read this PyTorch file; it is truncated or corrupted ({_first_line(e)}). "
            "Download or save it again."
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def unwrap_state_dict(obj: Any, *, key: str | None = None, source: object = "checkpoint") -> tuple[Any, str | None]:
    """The state dict inside a container: ``obj[key]`` if given, else the first of ``CONTAINER_KEYS``, else ``obj``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a dict of tensors.")
    if key is not None:
        if key not in obj or not isinstance(obj[key], Mapping):
            raise CheckpointError(
                f"{source}: --key {key!r} is not a state dict in this file; its top-level keys are "
                f"{_preview(obj)}."
            )
        return obj[key], key
    for candidate in CONTAINER_KEYS:
        if isinstance(obj.get(candidate), Mapping):
            return obj[candidate], candidate
    return obj, None


def _check_tensors(state_dict: Mapping[str, Any], source: object) -> dict[str, Tensor]:
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{source}: entry {bad[0]!r} is not a tensor, so this is not a state dict (top-level keys: "
            f"{_preview(state_dict)}). Use --key to pick the state dict inside the container."
        )
    return dict(state_dict)


def strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove ``prefix`` (e.g. DDP's ``module.``) when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _all_finite(t: Tensor) -> bool:
    """Whether no element is NaN or ±Inf. Exact, and one cheap pass for the usual tensor: any NaN or Inf makes the
    sum NaN or ±Inf, so a finite sum proves them absent; only a non-finite sum (a NaN/Inf, or finite values whose sum
    overflows) pays for the elementwise check (``isfinite(t).all()`` costs ~20× a sum on a 17M-element tensor)."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_finite(state_dict: Mapping[str, Tensor], *, source: object) -> None:
    """Refuse NaN/Inf anywhere, non-float weights, and negative BatchNorm variance, naming the key."""
    for name, t in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        if t.layout != torch.strided or t.device.type != "cpu" or t.is_quantized:
            raise CheckpointError(f"{source}: tensor {name!r} is {t.layout}/{t.device.type}"
                                  f"{'/quantized' if t.is_quantized else ''}; weights must be dense CPU tensors.")
        if not t.is_floating_point():
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {t.dtype}; weights must be floating point.")
        if not _all_finite(t):
            raise CheckpointError(f"{source}: tensor {name!r} contains NaN or Inf; the checkpoint is broken.")
        if name.endswith("running_var") and bool((t < 0).any()):
            raise CheckpointError(
                f"{source}: BatchNorm variance {name!r} has negative entries (min {t.min().item():.3g}); "
                "a variance cannot be negative, so the checkpoint is corrupted."
            )


def is_detector(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the keys are an mmdetection detector's (``backbone.stem1.0.weight`` …), not a classifier's."""
    return any(k.startswith(DETECTOR_PREFIX) for k in state_dict)


def detect_form(state_dict: Mapping[str, Tensor], *, source: object = "checkpoint") -> Form:
    """``train`` if the stem is ``stem1``/``stem2``, ``deploy`` if it is the merged ``stem``."""
    if "stem1.0.weight" in state_dict:
        return "train"
    if "stem.0.weight" in state_dict:
        return "deploy"
    raise CheckpointError(
        f"{source}: not a VanillaNet state dict: expected 'stem1.0.weight' (training form) or 'stem.0.weight' "
        f"(deploy form), found {len(state_dict)} keys such as {_preview(state_dict)}."
    )


def _preview(mapping: Mapping[Any, Any], n: int = 4) -> str:
    keys = [repr(k) for k in list(mapping)[:n]]
    return ", ".join(keys) + (", …" if len(mapping) > n else "") if keys else "(none)"


@dataclass(frozen=True)
class LambdaInfo:
    """λ the checkpoint was trained with, and where that number came from."""

    value: float
    epoch: int | None
    decay_epochs: int | None
    decay_linear: bool | None
    assumed: bool

    @property
    def exact(self) -> bool:
        return self.value == 1.0

    def describe(self) -> str:
        if self.assumed:
            return "λ = 1 assumed: the file records no training epoch (bare or deployed state dict)"
        schedule = "linear" if self.decay_linear else "cosine"
        return f"λ = {self.value:.4g} (epoch {self.epoch} of a {self.decay_epochs}-epoch {schedule} decay)"


def trained_lambda(epoch: int, decay_epochs: int, decay_linear: bool = True) -> float:
    """λ after epoch ``e`` of the official schedule: e/E (linear) or ½(1 − cos(πe/E)), with e = min(epoch, E).

    The official trainer sets λ at the start of every epoch ``e ≤ E`` and saves with ``epoch = e``; E ≤ 0 means
    the schedule never ran and λ kept its initial value 1.
    """
    if decay_epochs <= 0:
        return 1.0
    e = min(max(epoch, 0), decay_epochs)
    if e == decay_epochs:
        return 1.0
    return e / decay_epochs if decay_linear else 0.5 * (1.0 - math.cos(math.pi * e / decay_epochs))


def lambda_of(checkpoint: Checkpoint) -> LambdaInfo:
    """Read ``epoch``, ``args.decay_epochs`` and ``args.decay_linear`` (official defaults 100 and true)."""
    if checkpoint.epoch is None or checkpoint.form == "deploy":
        return LambdaInfo(1.0, checkpoint.epoch, None, None, assumed=True)
    decay_epochs = checkpoint.args.get("decay_epochs", DEFAULT_DECAY_EPOCHS)
    if not isinstance(decay_epochs, int) or isinstance(decay_epochs, bool):
        raise CheckpointError(f"{checkpoint.source}: args.decay_epochs is {decay_epochs!r}, not an integer, so the "
                              "λ the checkpoint was trained with is unknown.")
    decay_linear = _as_bool(checkpoint.args.get("decay_linear", True))
    value = trained_lambda(checkpoint.epoch, decay_epochs, decay_linear)
    return LambdaInfo(value, checkpoint.epoch, decay_epochs, decay_linear, assumed=False)


def _as_bool(value: Any) -> bool:
    """``args.decay_linear`` as the official ``str2bool`` would read it; other types count as the default (true)."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y", "t"}
    return bool(value) if isinstance(value, (bool, int)) else True
