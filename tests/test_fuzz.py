"""Fuzzing the loader (hypothesis, derandomized): mutated bytes and odd structures of a small valid checkpoint.

Whatever the input, reading it (load, detect, λ) either succeeds or raises one of the bad-input errors that exit 2
at the CLI (``CheckpointError``, ``ArchitectureError``, ``InexactMergeError``) — never another exception, nor another
member of our error family — and every example finishes within the deadline.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vanilladeploy.checkpoint import lambda_of, load_checkpoint
from vanilladeploy.errors import ArchitectureError, CheckpointError, ExitCode, InexactMergeError
from vanilladeploy.source import detect

FUZZ = settings(derandomize=True, max_examples=150, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _tiny_checkpoint() -> bytes:
    """An official-style container of VanillaNet-like keys with tiny tensors (cheap to mutate and load)."""
    sd = {"stem1.0.weight": torch.randn(8, 3, 4, 4), "stem1.1.running_var": torch.rand(8) + 0.5,
          "stem2.2.weight": torch.randn(8, 1, 7, 7), "cls2.0.weight": torch.randn(10, 10, 1, 1)}
    buffer = io.BytesIO()
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(model="vanillanet_5", decay_epochs=100)},
               buffer)
    return buffer.getvalue()


BASE = _tiny_checkpoint()


def _read(path: Path) -> None:
    try:
        ckpt = load_checkpoint(path)
        lambda_of(ckpt)
        detect(ckpt)
    except (CheckpointError, ArchitectureError, InexactMergeError) as e:
        assert e.exit_code == ExitCode.BAD_INPUT


mutation = st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255))


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=8), cut=st.one_of(st.none(), st.integers(0, len(BASE))))
def test_mutated_bytes(tmp_path_factory, mutations: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(BASE)
    for offset, value in mutations:
        data[offset] = value
    path = tmp_path_factory.mktemp("fuzz") / "m.pth"
    path.write_bytes(bytes(data[:cut]))
    _read(path)


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(), st.text(max_size=8),
              st.builds(torch.zeros, st.lists(st.integers(0, 3), max_size=4).map(tuple)),
              st.sampled_from([torch.tensor(float("nan")), torch.zeros(2, dtype=torch.int8),
                               torch.zeros(2, 2).to_sparse(), torch.zeros(3, dtype=torch.complex64),
                               torch.zeros(2, dtype=torch.float16)])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=8,
)
targets = st.sampled_from(["epoch", "args.model", "args.decay_epochs", "args.decay_linear", "model.stem1.0.weight",
                           "model.stem2.2.weight", "model.cls2.0.weight", "model.stem1.1.running_var",
                           "model.stages.0.conv2.0.weight", "model.extra", "model_ema", "args"])


def _tiny_structure() -> dict:
    return torch.load(io.BytesIO(BASE), weights_only=False)  # our own bytes, built above


@FUZZ
@given(changes=st.lists(st.tuples(targets, values), min_size=1, max_size=4))
def test_odd_structures(tmp_path_factory, changes: list[tuple[str, object]]) -> None:
    """The valid container with some fields replaced by odd values (wrong types, shapes, dtypes, layouts)."""
    obj = _tiny_structure()
    for target, value in changes:
        head, _, rest = target.partition(".")
        if not rest:
            obj[head] = value
        elif isinstance(obj.get(head), argparse.Namespace):
            setattr(obj[head], rest, value)
        elif isinstance(obj.get(head), dict):
            obj[head][rest] = value
    path = tmp_path_factory.mktemp("fuzz") / "s.pth"
    torch.save(obj, path)
    _read(path)
