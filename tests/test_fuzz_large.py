"""Structure-aware fuzzing of a REAL-SIZE official checkpoint (VanillaNet-5 training form, 1000 classes, ~69 MB).

The small hypothesis fuzz (test_fuzz.py) mutates a tiny container; this one damages the places where a real file's
structure lives — the pickle (data.pkl), the zip local headers, the central directory, the end-of-central-directory
record, the size fields, the tensor bytes — and truncates it, ≥ 5,000 times. Each case goes through what
``vanilladeploy inspect`` does (load, λ, detect); it must succeed or raise a ``VanillaDeployError`` — any other
exception is a loader bug ("internal error" at the CLI). Mutations are written in place and undone, so the 69 MB file
is written once. Seeded: a failure prints the seed, the case number and the mutation.
"""

from __future__ import annotations

import os
import random
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import official_checkpoint, random_model
from vanilladeploy.checkpoint import lambda_of
from vanilladeploy.errors import VanillaDeployError
from vanilladeploy.export import detect, resolve_source

CASES = int(os.environ.get("VANILLADEPLOY_FUZZ_CASES", "5000"))
SEED = int(os.environ.get("VANILLADEPLOY_FUZZ_SEED", "20261124"))

Mutation = tuple[str, list[tuple[int, bytes]], int | None]
"""(kind, [(offset, new bytes)], truncate-to length or None)."""


class Layout:
    """Where the structure of a torch.save zip lives, from the file's own directory."""

    def __init__(self, path: Path) -> None:
        self.size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            self.infos = archive.infolist()
            self.cd_start = archive.start_dir
        self.eocd = self.size - 22
        self.pickle = next(i for i in self.infos if i.filename.endswith("data.pkl"))
        self.tensors = [i for i in self.infos if "/data/" in i.filename]

    def data_range(self, info: zipfile.ZipInfo, raw: bytes) -> tuple[int, int]:
        name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        return start, start + info.compress_size


def _bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def _mutation(rng: random.Random, layout: Layout, raw: bytes) -> Mutation:
    """One structure-aware mutation (a few bytes, or a size field, or a cut)."""
    kind = rng.choices(["pickle", "local", "central", "eocd", "sizes", "truncate", "tensor"],
                       weights=[30, 15, 20, 10, 15, 5, 5])[0]
    if kind == "truncate":
        return kind, [], rng.randrange(0, layout.size)
    if kind == "pickle":
        lo, hi = layout.data_range(layout.pickle, raw)
    elif kind == "local":
        info = rng.choice(layout.infos)
        lo, hi = info.header_offset, info.header_offset + 30 + len(info.filename)
    elif kind == "central":
        lo, hi = layout.cd_start, layout.eocd
    elif kind == "eocd":
        lo, hi = layout.eocd, layout.size
    elif kind == "tensor":
        lo, hi = layout.data_range(rng.choice(layout.tensors), raw)
    else:  # a record size field: compressed (+18/+20) or uncompressed (+22/+24) size, local or central header
        info = rng.choice(layout.infos)
        central = _central_entry_offset(raw, layout, info)
        base = rng.choice([info.header_offset + 18, info.header_offset + 22, central + 20, central + 24])
        value = rng.choice([0, 1, 0xFFFFFFFF, rng.randrange(1 << 32), info.file_size * 2, layout.size])
        return kind, [(base, struct.pack("<I", value))], None
    count = rng.choice([1, 1, 2, 4, 8])
    edits = []
    for _ in range(count):
        offset = rng.randrange(lo, max(lo + 1, hi))
        edits.append((offset, _bytes(rng, rng.choice([1, 1, 2, 4]))))
    return kind, edits, None


def _central_entry_offset(raw: bytes, layout: Layout, info: zipfile.ZipInfo) -> int:
    offset = layout.cd_start
    for entry in layout.infos:
        if entry is info:
            return offset
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, offset + 28)
        offset += 46 + name_len + extra_len + comment_len
    raise AssertionError("entry not in the central directory")


def _apply(path: Path, raw: bytes, mutation: Mutation) -> Callable[[], None]:
    """Write the mutation into ``path`` in place; return what undoes it."""
    _, edits, cut = mutation
    with path.open("r+b") as f:
        for offset, data in edits:
            f.seek(offset)
            f.write(data[: len(raw) - offset])
        if cut is not None:
            f.truncate(cut)

    def undo() -> None:
        with path.open("r+b") as f:
            if cut is not None:
                f.seek(cut)
                f.write(raw[cut:])
            for offset, data in edits:
                f.seek(offset)
                f.write(raw[offset:offset + len(data)])

    return undo


def _inspect(path: Path) -> None:
    ckpt = resolve_source(str(path))
    lambda_of(ckpt)
    detect(ckpt)


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = random_model("vanillanet_5", num_classes=1000, seed=3)
    path = tmp_path_factory.mktemp("fuzz-large") / "checkpoint-299.pth"
    torch.save(official_checkpoint(model.state_dict(), variant="vanillanet_5"), path)
    return path


@pytest.mark.slow
def test_structure_aware_mutations_of_a_real_size_checkpoint(real_checkpoint: Path) -> None:
    raw = real_checkpoint.read_bytes()
    assert len(raw) > 60e6, "not a real-size container"
    _inspect(real_checkpoint)  # the pristine file loads
    layout, rng = Layout(real_checkpoint), random.Random(SEED)
    outcomes: dict[str, int] = {}
    start = time.perf_counter()
    for case in range(CASES):
        mutation = _mutation(rng, layout, raw)
        undo = _apply(real_checkpoint, raw, mutation)
        try:
            _inspect(real_checkpoint)
            outcome = "loaded"
        except VanillaDeployError as e:
            outcome = type(e).__name__
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"seed {SEED}, case {case}, mutation {mutation[0]} {[(o, d.hex()) for o, d in mutation[1]]} "
                        f"cut {mutation[2]}: {type(e).__name__}: {e} escaped the loader (would be exit 4)")
        finally:
            undo()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert real_checkpoint.read_bytes() == raw, "a mutation was not undone"
    print(f"\n{CASES} mutations of a {len(raw) / 1e6:.0f} MB checkpoint in {time.perf_counter() - start:.0f} s: "
          f"{outcomes}")
    assert sum(outcomes.values()) == CASES
    assert outcomes.get("CheckpointError", 0) > CASES // 4  # the mutations really damage the structure
