"""Steps of long work, and the ONE progress protocol that export, eval, bench and serve-bench report through.

A long-running library function takes ``progress: Progress`` and calls it with :class:`Step` events; the CLI shows
them (``vanilladeploy.cli.console.ProgressDisplay``), the Python API passes :func:`silent` by default. A step either
counts (``done`` of ``total``), or is timed: reported once when it starts (``seconds`` None) and once when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    """One progress event."""

    message: str
    done: int | None = None
    """Units finished so far (images, rounds, models), with ``total``; None for a timed step."""
    total: int | None = None
    seconds: float | None = None
    """Set when a timed step has ended: how long it took."""

    @property
    def ended(self) -> bool:
        return self.seconds is not None or (self.total is not None and self.done == self.total)


Progress = Callable[[Step], None]


def silent(step: Step) -> None:
    """The default progress: report nothing."""


@dataclass
class StepTimer:
    """Times named steps, reports each through ``progress`` and keeps ``timings`` (seconds) for the report."""

    progress: Progress = silent
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str, message: str) -> Iterator[None]:
        self.progress(Step(message))
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.progress(Step(message, seconds=self.timings[name]))


__all__ = ["Progress", "Step", "StepTimer", "silent"]
