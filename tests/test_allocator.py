"""The console script's allocator settings (``vanilladeploy.cli.tune_allocator``): freed large blocks are kept and
reused instead of being unmapped and faulted in again, and torch's tensors get 2 MiB pages. Each case runs in a fresh
interpreter: the settings are the whole process's."""

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, os, resource, sys
if sys.argv[1] == "tuned":
    from vanilladeploy.cli import tune_allocator
    tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 96 << 20  # above glibc's largest mmap threshold (32 MiB); numpy and torch would ask for huge pages themselves
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, os.environ.get("THP_MEM_ALLOC_ENABLE"))
"""


def _probe(mode: str, **env: str) -> tuple[int, str]:
    """(page faults of the second block, THP_MEM_ALLOC_ENABLE as the probe saw it); ``env`` over ours, without any
    THP_MEM_ALLOC_ENABLE of ours."""
    base = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={**base, **env}, check=True)
    faults, thp = done.stdout.split()
    return int(faults), thp


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_large_block_is_reused_without_faulting_it_in_again() -> None:
    plain_faults, plain_thp = _probe("plain")
    tuned_faults, tuned_thp = _probe("tuned")
    pages = (96 << 20) // 4096
    assert plain_faults >= pages // 2, "untuned, glibc should unmap the freed block and fault the new one in"
    assert tuned_faults < pages // 50, f"tuned, the freed block should be reused: {tuned_faults} faults"
    assert (plain_thp, tuned_thp) == ("None", "1")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_an_explicit_thp_setting_is_kept() -> None:
    assert _probe("tuned", THP_MEM_ALLOC_ENABLE="0")[1] == "0"
