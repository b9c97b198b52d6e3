"""Which VanillaNet a state dict is: variant, act_num and class count, read from tensor shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from vanilladeploy.checkpoint import Form
from vanilladeploy.errors import ArchitectureError
from vanilladeploy.models.vanillanet import VARIANTS, VanillaNet, VariantSpec, create_vanillanet, get_variant

_STAGE_KEY = re.compile(r"^stages\.(\d+)\.")


@dataclass(frozen=True)
class Architecture:
    """A variant with the hyper-parameters a state dict fixes."""

    spec: VariantSpec
    act_num: int
    num_classes: int
    detected_from: str

    @property
    def name(self) -> str:
        return self.spec.name

    def build(self, *, deploy: bool) -> VanillaNet:
        return create_vanillanet(self.name, deploy=deploy, num_classes=self.num_classes, act_num=self.act_num)


def _shape(state_dict: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    """The shape of a conv weight, which must be 4-d (out, in, kh, kw)."""
    if key not in state_dict:
        raise ArchitectureError(f"missing key {key!r}: the state dict is incomplete or not a VanillaNet.")
    shape = tuple(state_dict[key].shape)
    if len(shape) != 4:
        raise ArchitectureError(f"tensor {key!r} has shape {list(shape)}; a conv weight is 4-d.")
    return shape


def read_dims(state_dict: Mapping[str, Tensor], form: Form) -> tuple[tuple[int, ...], int, int]:
    """``(dims, act_num, num_classes)`` from the stem, every stage's output conv and the classifier."""
    n_stages = 1 + max((int(m.group(1)) for k in state_dict if (m := _STAGE_KEY.match(k))), default=-1)
    if form == "train":
        stem, act, stage_conv, cls = "stem1.0.weight", "stem2.2.weight", "conv2.0.weight", "cls2.0.weight"
    else:
        stem, act, stage_conv, cls = "stem.0.weight", "stem.1.weight", "conv.weight", "cls.2.weight"
    dims = (_shape(state_dict, stem)[0],) + tuple(
        _shape(state_dict, f"stages.{i}.{stage_conv}")[0] for i in range(n_stages)
    )
    kernel = _shape(state_dict, act)[-1]
    if kernel % 2 == 0:
        raise ArchitectureError(f"tensor {act!r} has an even kernel size {kernel}; the activation's depthwise conv "
                                "is (2n+1)x(2n+1).")
    return dims, (kernel - 1) // 2, _shape(state_dict, cls)[0]


def detect_architecture(
    state_dict: Mapping[str, Tensor], form: Form, *, arch: str | None = None, args_model: str | None = None
) -> Architecture:
    """Match the widths against the variant table; ``arch`` (``--arch``) or ``args_model`` (``args.model``)
    decide between variants with identical tensors (``vanillanet_13_x1_5`` and its ``ada_pool`` twin)."""
    dims, act_num, num_classes = read_dims(state_dict, form)
    matches = [name for name, spec in VARIANTS.items() if spec.dims == dims]
    if arch is not None:
        try:
            spec = get_variant(arch)
        except ValueError as e:
            raise ArchitectureError(f"--arch: {e}") from None
        if spec.dims != dims:
            raise ArchitectureError(
                f"--arch {arch} has widths {list(spec.dims)} but the checkpoint has {list(dims)}"
                + (f", which is {matches[0]}." if len(matches) == 1 else ".")
            )
        return Architecture(spec, act_num, num_classes, "--arch")
    if not matches:
        raise ArchitectureError(
            f"the widths {list(dims)} ({len(dims) - 1} stages) match no VanillaNet variant; "
            f"known: {', '.join(VARIANTS)}."
        )
    if args_model in matches:
        return Architecture(VARIANTS[args_model], act_num, num_classes, "args.model + tensor shapes")
    if len(matches) > 1:
        raise ArchitectureError(
            f"the tensors fit {' and '.join(matches)} equally (they differ only in pooling, which has no "
            f"weights) and the file records no args.model; pass --arch {matches[0]} or --arch {matches[-1]}."
        )
    return Architecture(VARIANTS[matches[0]], act_num, num_classes, "tensor shapes")


def check_keys_and_shapes(state_dict: Mapping[str, Tensor], arch: Architecture, form: Form) -> None:
    """Every key the model expects is present with its shape, and no other key is; else name the first."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in arch.build(deploy=form == "deploy").state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing:
        raise ArchitectureError(f"missing key {missing[0]!r} ({len(missing)} missing) for {form}-form {arch.name}.")
    if unexpected:
        raise ArchitectureError(
            f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected) for {form}-form {arch.name}."
        )
    if wrong:
        k = wrong[0]
        raise ArchitectureError(
            f"tensor {k!r} has shape {list(state_dict[k].shape)}, {arch.name} expects {list(expected[k])}."
        )


def load_model(state_dict: Mapping[str, Tensor], arch: Architecture, *, deploy: bool) -> VanillaNet:
    """The model of ``arch`` holding ``state_dict`` (as float32, strict), in eval mode; no weight is initialized
    or copied first: the module is built on the meta device and the tensors are assigned."""
    with torch.device("meta"):
        model = arch.build(deploy=deploy)
    tensors = {k: v if k.endswith("num_batches_tracked") else v.float() for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()
