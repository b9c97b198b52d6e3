"""The models a benchmark can run, with the published numbers we print beside ours (DESIGN §2).

Published latencies are batch 1 on an A100 from the official VanillaNet README and paper: PyTorch, TensorRT fp32 and
TensorRT fp16, in ms. ``None`` where nothing was published.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from vanilladeploy.models.baselines import BASELINES, create_baseline, main_path_depth
from vanilladeploy.models.vanillanet import VARIANTS, create_vanillanet, randomize_


@dataclass(frozen=True)
class Published:
    top1: float | None = None
    pytorch_a100_ms: float | None = None
    trt_fp32_a100_ms: float | None = None
    trt_fp16_a100_ms: float | None = None


_VANILLA_TOP1 = (72.49, 76.36, 77.98, 79.13, 79.87, 80.57, 81.08, 81.55, 82.05, 82.53, 83.11)
_VANILLA_PT = (1.61, 2.01, 2.27, 2.56, 2.91, 3.24, 3.59, 3.82, 4.26, 7.83, 9.72)
_VANILLA_FP32 = (0.33, 0.40, 0.47, 0.52, 0.58, 0.63, 0.69, 0.75, 0.82)
_VANILLA_FP16 = (0.27, 0.33, 0.39, 0.45, 0.49, 0.53, 0.58, 0.62, 0.67)
PUBLISHED: dict[str, Published] = {
    **{name: Published(_VANILLA_TOP1[i], _VANILLA_PT[i], *(((_VANILLA_FP32[i], _VANILLA_FP16[i])) if i < 9 else ()))
       for i, name in enumerate(VARIANTS)},
    "swin_t": Published(81.18, 10.51, 1.41, 0.98),
    "swin_s": Published(83.21, 20.25),
    "swin_b": Published(),
    "resnet18": Published(70.6, 3.12, 0.41, 0.28),
    "resnet34": Published(75.5, 5.57, 0.77, 0.49),
    "resnet50": Published(79.8, 7.64, 0.80, 0.54),
    "resnet101": Published(81.3, 15.35, 1.58, 1.04),
    "resnet152": Published(81.8, 22.19, 2.30, 1.49),
}
PAPER_SET = ("swin_t", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", *list(VARIANTS)[:9])
"""The models of the official batch-1 latency table (DESIGN §2)."""


@dataclass(frozen=True)
class ModelEntry:
    """A model to time: its name (``vanillanet_6``, ``vanillanet_6:train``, ``resnet50`` …) and how to build it."""

    name: str
    family: str  # "vanillanet", "resnet" or "swin"
    form: str  # "deploy" or "train" for VanillaNet, "standard" for baselines
    build: Callable[[], nn.Module] = field(compare=False, repr=False)

    @property
    def base(self) -> str:
        return self.name.split(":")[0]

    @property
    def published(self) -> Published:
        return PUBLISHED.get(self.base, Published()) if self.form != "train" else Published()


def _vanillanet(variant: str, *, deploy: bool) -> nn.Module:
    with torch.device("meta"):
        model = create_vanillanet(variant, deploy=deploy)
    model = randomize_(model.to_empty(device="cpu"), seed=0).eval()
    if not deploy:
        model.set_lambda(1.0)  # the end of training, as deployed
    return model


def get_entry(name: str) -> ModelEntry:
    """``vanillanet_N`` (deploy form), ``vanillanet_N:train`` (training form), or a baseline name."""
    base, _, form = name.partition(":")
    if base in VARIANTS and form in ("", "deploy", "train"):
        deploy = form != "train"
        return ModelEntry(f"{base}:train" if not deploy else base, "vanillanet", "deploy" if deploy else "train",
                          lambda: _vanillanet(base, deploy=deploy))
    if base in BASELINES and not form:
        return ModelEntry(base, "resnet" if base.startswith("resnet") else "swin", "standard",
                          lambda: create_baseline(base))
    known = ", ".join([*VARIANTS, *BASELINES])
    raise ValueError(f"unknown model {name!r}: choose from {known} (append :train for a VanillaNet's training "
                     "form), or 'paper' / 'all'")


def resolve_models(spec: str | None, *, train_form: bool = False) -> list[ModelEntry]:
    """A comma-separated list; ``paper`` (the official latency table's models) and ``all`` expand."""
    names: list[str] = []
    for item in (spec or "paper").split(","):
        item = item.strip()
        if item == "paper":
            names += PAPER_SET
        elif item == "all":
            names += [*VARIANTS, *BASELINES]
        elif item:
            names.append(item)
    entries = [get_entry(n) for n in dict.fromkeys(names)]
    if train_form:
        entries += [get_entry(f"{e.name}:train") for e in entries if e.family == "vanillanet" and e.form == "deploy"]
    return list({e.name: e for e in entries}.values())


@dataclass(frozen=True)
class ModelCost:
    """What the physical floor needs: dense FLOPs of one batch and the bytes of weights read."""

    flops: int
    params: int
    depth: int

    def weight_bytes(self, precision: str) -> int:
        return self.params * {"fp16": 2, "int8": 1}.get(precision, 4)


def model_cost(model: nn.Module, *, batch: int, img_size: int) -> ModelCost:
    """FLOPs counted by torch's FlopCounterMode (2 per multiply-add of conv/matmul), running ``model`` with meta
    stand-ins for its weights and input: shapes only, no arithmetic and no copy of the weights."""
    tensors = {name: torch.empty_like(t, device="meta")
               for name, t in (*model.named_parameters(), *model.named_buffers())}
    x = torch.empty(batch, 3, img_size, img_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        functional_call(model.eval(), tensors, (x,))
    return ModelCost(int(counter.get_total_flops()), sum(p.numel() for p in model.parameters()),
                     main_path_depth(model))


def onnx_path_for(entry: ModelEntry, cache_dir: Path, *, img_size: int) -> Path:
    return cache_dir / f"{entry.name.replace(':', '-')}-{img_size}.onnx"


__all__ = ["ModelCost", "ModelEntry", "PAPER_SET", "PUBLISHED", "Published", "get_entry",
           "model_cost", "onnx_path_for", "resolve_models"]
