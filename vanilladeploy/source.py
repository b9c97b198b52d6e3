"""What a source is: resolve it (a checkpoint file, or a variant name for seeded random weights), detect its
variant, and describe it. Used by ``inspect``, ``eval`` and ``export``.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vanilladeploy import __version__
from vanilladeploy.arch import Architecture, check_keys_and_shapes, detect_architecture
from vanilladeploy.checkpoint import Checkpoint, LambdaInfo, lambda_of, load_checkpoint
from vanilladeploy.errors import CheckpointError, UsageError
from vanilladeploy.models.vanillanet import VARIANTS, create_vanillanet, get_variant, randomize_

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def check_source_options(source: str, *, arch: str | None, key: str | None) -> None:
    """``arch`` must name a variant; ``key`` selects an entry of a file, so a variant name cannot take it."""
    if arch is not None:
        try:
            get_variant(arch)
        except ValueError as e:
            raise UsageError(f"--arch: {e}") from None
    if key is not None and source in VARIANTS and not Path(source).exists():
        raise UsageError(f"--key has no effect for a variant name ({source} is not a file): drop --key.")


def random_checkpoint(variant: str, *, seed: int = 0, num_classes: int = 1000) -> Checkpoint:
    """An untrained training-form checkpoint: seeded random weights and randomized BatchNorm statistics."""
    with torch.device("meta"):
        model = create_vanillanet(variant, num_classes=num_classes)
    # Module.to_empty would make each tensor with torch.empty_like from the meta device, whose Python reference
    # implementation imports sympy (0.35 s): the same uninitialized tensors, made directly
    model.load_state_dict({k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()},
                          assign=True)
    model = randomize_(model, seed=seed)
    return Checkpoint(state_dict=model.state_dict(), source=f"{variant} (untrained: random weights, seed {seed})",
                      form="train", args={"model": variant}, untrained=True)


def resolve_source(source: str, *, key: str | None = None, seed: int = 0) -> Checkpoint:
    """A checkpoint file, or — when ``source`` names a variant and no such file exists — a random one."""
    path = Path(source)
    if not path.exists() and source in VARIANTS:
        return random_checkpoint(source, seed=seed)
    if not path.exists() and not path.suffix and "/" not in source:
        try:
            get_variant(source)
        except ValueError as e:
            raise CheckpointError(f"{source}: no such file, and {e}") from None
    return load_checkpoint(path, key=key)


def detect(checkpoint: Checkpoint, *, arch: str | None = None) -> Architecture:
    """Variant, act_num and classes of ``checkpoint``, with every key and shape checked against it."""
    if checkpoint.form == "detector":
        raise UsageError(f"{checkpoint.source} is a detection checkpoint (keys 'backbone.*', 'neck.*', …): "
                         "`vanilladeploy inspect` and `vanilladeploy export` take it (docs/detection.md); this "
                         "command takes classifiers only.")
    args_model = checkpoint.args.get("model")
    detected = detect_architecture(checkpoint.state_dict, checkpoint.form, arch=arch,
                                   args_model=args_model if isinstance(args_model, str) else None)
    check_keys_and_shapes(checkpoint.state_dict, detected, checkpoint.form)
    return detected


def describe(ckpt: Checkpoint, arch: Architecture, lam: LambdaInfo) -> dict[str, Any]:
    """What was read and detected: the first sections of the report (and of ``vanilladeploy inspect``)."""
    import onnx

    return {
        "tool": {"name": "vanilladeploy", "version": __version__, "torch": torch.__version__,
                 "onnx": onnx.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": ckpt.source, "sha256": ckpt.sha256, "untrained": ckpt.untrained,
                   "container_key": ckpt.container_key, "form": ckpt.form},
        "architecture": {"variant": arch.name, "depth": arch.spec.depth, "act_num": arch.act_num,
                         "num_classes": arch.num_classes, "detected_from": arch.detected_from},
        "lambda": {"value": lam.value, "exact": lam.exact, "epoch": lam.epoch, "decay_epochs": lam.decay_epochs,
                   "decay_linear": lam.decay_linear, "assumed": lam.assumed, "note": lam.describe()},
    }


def inspect_source(source: str, *, arch: str | None = None, key: str | None = None,
                   det_config: Path | None = None) -> dict[str, Any]:
    """What ``source`` is (container, form, variant, act_num, classes, λ, tensor and parameter counts), without
    exporting anything: ``vanilladeploy inspect``. A detection checkpoint is described by
    :func:`vanilladeploy.detector.describe_detector` (``det_config``: ``--det-config``)."""
    check_source_options(source, arch=arch, key=key)
    ckpt = resolve_source(source, key=key)
    if ckpt.form == "detector":
        from vanilladeploy.detector import describe_detector

        if arch is not None:
            raise UsageError("--arch is for classifiers; a detector's backbone is read from its tensors and config.")
        return describe_detector(ckpt, det_config=det_config)
    if det_config is not None:
        raise UsageError(f"--det-config is for detection checkpoints; {source} is a classifier.")
    info = describe(ckpt, detect(ckpt, arch=arch), lambda_of(ckpt))
    info["source"]["tensors"] = len(ckpt.state_dict)
    info["source"]["parameters"] = sum(t.numel() for k, t in ckpt.state_dict.items() if not k.endswith(BN_BUFFERS))
    return info


__all__ = ["check_source_options", "describe", "detect", "inspect_source", "random_checkpoint", "resolve_source"]
