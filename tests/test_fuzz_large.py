"""Structure-aware fuzzing of a REAL-SIZE official checkpoint (VanillaNet-5 training form, 1000 classes, ~69 MB).

The small hypothesis fuzz (test_fuzz.py) mutates a tiny container; this one damages the places where a real file's
structure lives — the pickle (data.pkl), the zip local headers, the central directory, the end-of-central-directory
record, the size fields, the tensor bytes — and truncates it, ≥ 5,000 times. Each case goes through what
``vanilladeploy inspect`` does (load, λ, detect); it must succeed or raise one of the bad-input errors that exit 2
(``CheckpointError``, ``ArchitectureError``, ``InexactMergeError``) — any other exception, or another member of our
error family, is a loader bug. The first case of each outcome is replayed through the real CLI, which must exit 2 with
one line. Mutations are written in place and undone, so the 69 MB file is written once. Seeded: a failure prints the
seed, the case number and the mutation. The count and the time are printed past pytest's capture (they show under
``-q`` in the CI log) and recorded as properties (JUnit XML). ``VANILLADEPLOY_FUZZ_CASES`` lowers the count for a
local try; CI runs the default.
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
from test_cli import run

from vanilladeploy.checkpoint import lambda_of
from vanilladeploy.errors import ArchitectureError, CheckpointError, ExitCode, InexactMergeError
from vanilladeploy.source import detect, resolve_source

DEFAULT_CASES = 5000
CASES = int(os.environ.get("VANILLADEPLOY_FUZZ_CASES", str(DEFAULT_CASES)))
SEED = int(os.environ.get("VANILLADEPLOY_FUZZ_SEED", "20261124"))
EXIT_2 = (CheckpointError, ArchitectureError, InexactMergeError)
"""What a damaged checkpoint may raise: the bad-input errors, each exit 2 at the CLI."""

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


def _outcome(path: Path, seed_case: str) -> str:
    """"loaded", or the name of the exit-2 error it raised; anything else fails the test."""
    try:
        _inspect(path)
        return "loaded"
    except EXIT_2 as e:
        assert e.exit_code == ExitCode.BAD_INPUT, f"{seed_case}: {type(e).__name__} would not exit 2"
        return type(e).__name__
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{seed_case}: {type(e).__name__}: {e} escaped the loader (not a bad-input error, exit 2)")


def _replay_through_the_cli(path: Path, raw: bytes, firsts: dict[str, Mutation]) -> None:
    for outcome, mutation in firsts.items():
        undo = _apply(path, raw, mutation)
        try:
            result = run("inspect", path)
        finally:
            undo()
        assert result.exit_code == 2, f"{outcome} {mutation[0]}: exit {result.exit_code}: {result.output}"
        assert len(result.output.strip().splitlines()) == 1 and "internal error" not in result.output


@pytest.mark.slow
def test_structure_aware_mutations_of_a_real_size_checkpoint(real_checkpoint: Path, capsys: pytest.CaptureFixture,
                                                             record_property: Callable[[str, object], None]) -> None:
    raw = real_checkpoint.read_bytes()
    assert len(raw) > 60e6, "not a real-size container"
    assert DEFAULT_CASES >= 5000
    _inspect(real_checkpoint)  # the pristine file loads
    layout, rng = Layout(real_checkpoint), random.Random(SEED)
    outcomes: dict[str, int] = {}
    firsts: dict[str, Mutation] = {}
    start = time.perf_counter()
    for case in range(CASES):
        mutation = _mutation(rng, layout, raw)
        undo = _apply(real_checkpoint, raw, mutation)
        try:
            outcome = _outcome(real_checkpoint, f"seed {SEED}, case {case}, mutation {mutation[0]} "
                               f"{[(o, d.hex()) for o, d in mutation[1]]} cut {mutation[2]}")
        finally:
            undo()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        firsts.setdefault(outcome, mutation)
    seconds = time.perf_counter() - start
    assert real_checkpoint.read_bytes() == raw, "a mutation was not undone"
    _replay_through_the_cli(real_checkpoint, raw, {k: v for k, v in firsts.items() if k != "loaded"})
    summary = (f"fuzz_large: {CASES} structure-aware mutations of a {len(raw) / 1e6:.0f} MB checkpoint in "
               f"{seconds:.0f} s ({seconds / CASES * 1e3:.1f} ms each), seed {SEED}: {outcomes}"
               + ("" if CASES >= DEFAULT_CASES else f" (reduced from {DEFAULT_CASES} by VANILLADEPLOY_FUZZ_CASES)"))
    with capsys.disabled():
        print(f"\n{summary}", flush=True)
    record_property("fuzz_cases", CASES)
    record_property("fuzz_seconds", round(seconds, 1))
    record_property("fuzz_outcomes", outcomes)
    assert sum(outcomes.values()) == CASES
    assert outcomes.get("CheckpointError", 0) > CASES // 4  # the mutations really damage the structure
