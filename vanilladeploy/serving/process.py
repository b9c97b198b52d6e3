"""The server's processes as one group: they die with us (``PR_SET_PDEATHSIG``), are signalled together, and are
waited for without being reaped twice. Linux only (``/proc``, ``prctl``)."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when we die (Linux ``PR_SET_PDEATHSIG``). libc and
    ``prctl`` are resolved here, in the parent: the child, between fork and exec, only calls it."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, int(sig))

    return set_signal


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_exited(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until ``process`` has exited, without reaping it (``WNOWAIT``); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def exit_description(process: subprocess.Popen[bytes]) -> str:
    """How ``process`` ended ("killed by SIGKILL", "exit status 1"), read without reaping it; "running" while it
    runs, "ended" once reaped."""
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        code = process.returncode
        return "ended" if code is None else (f"killed by {signal.Signals(-code).name}" if code < 0
                                             else f"exit status {code}")
    if info is None:
        return "running"
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return f"killed by {signal.Signals(info.si_status).name}"
    return f"exit status {info.si_status}"


LEFTOVER = re.compile(r"vanilladeploy-(?:repo-|triton-)?(\d+)-")
"""What a server run leaves when its owner is SIGKILLed (nobody is left to remove it): the scratch repository and
the server's directory (``$TMPDIR/vanilladeploy-repo-<pid>-…``, ``vanilladeploy-triton-<pid>-…``) and shared
memory the server did not get to remove (``/dev/shm/vanilladeploy-<pid>-…``); ``<pid>`` is the owner's."""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_leftovers(*directories: Path) -> list[Path]:
    """Remove the :data:`LEFTOVER` entries in ``directories`` whose owner process is gone; returns them. An entry
    of a live process (ours, another ``serve``, or a process that reuses a dead owner's pid) is kept."""
    removed = []
    for directory in directories:
        try:
            entries = list(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            found = LEFTOVER.match(entry.name)
            if found is None or alive(int(found.group(1))):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


__all__ = ["LEFTOVER", "alive", "exit_description", "group_members", "parent_death_signal", "signal_group",
           "sweep_leftovers", "wait_exited", "wait_group_gone"]
