"""The console script's allocator setting (``vanilladeploy.cli.tune_allocator``): freed large blocks are kept and
reused instead of being unmapped and faulted in again. Each case runs in a fresh interpreter: the setting is the whole
process's."""

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import ctypes, resource, sys
if sys.argv[1] == "tuned":
    from vanilladeploy.cli import tune_allocator
    tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 96 << 20  # above glibc's largest mmap threshold (32 MiB); malloc itself: numpy asks for huge pages
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str) -> int:
    """Page faults of the second block."""
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout)


def _page_size() -> int:
    """The size the untuned second block is faulted in by: 2 MiB where the kernel backs every anonymous mapping with
    transparent huge pages ("[always]"), else 4 KiB."""
    try:
        enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        enabled = ""
    return 2 << 20 if "[always]" in enabled else 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_large_block_is_reused_without_faulting_it_in_again() -> None:
    plain_faults, tuned_faults = _probe("plain"), _probe("tuned")
    pages = (96 << 20) // _page_size()
    assert plain_faults >= pages // 2, "untuned, glibc should unmap the freed block and fault the new one in"
    assert tuned_faults * 10 <= plain_faults, f"tuned, the freed block should be reused: {tuned_faults} faults"
