"""A one-line duration estimate for long loops, measured from their first steps.

Before anything expected to take over a minute (DIP runs, warm starts, pretrainings), the user
reads one line such as::

    note: estimated 14 min for 2000 iterations (0.42 s/it)

:class:`StepEstimate` is called like a progress callback, ``est(done, total)``, after every step.
The clock starts at the ``WARMUP``-th call (so one-off costs of the first steps -- operator
matrices, oneDNN kernel selection, a 2-3x slower second step on CPU -- are left out); once
``AFTER_STEPS`` more steps or ``AFTER_S`` seconds have passed, the rate
``r = (t - t_w) / (done - done_w)`` gives the estimate ``r * (total - done_0)`` for the whole loop
(``done_0``: where it started, > 0 when resumed). The line is written once, to stderr (a rich
progress bar shows it above itself), only when the estimate is at least ``CTDIP_ESTIMATE_MIN_S``
seconds (environment; default 60).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

WARMUP = 2
AFTER_STEPS = 5
AFTER_S = 3.0
DEFAULT_MIN_S = 60.0


def min_seconds() -> float:
    """The estimate below which nothing is printed (``$CTDIP_ESTIMATE_MIN_S``, default 60 s)."""
    try:
        return float(os.environ.get("CTDIP_ESTIMATE_MIN_S", DEFAULT_MIN_S))
    except ValueError:
        return DEFAULT_MIN_S


def format_duration(seconds: float) -> str:
    """``45 s``, ``1.7 min``, ``14 min``, ``2.3 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StepEstimate:
    """Prints the estimated duration of a loop once, from the pace of its first steps."""

    def __init__(self, what: str = "iterations", unit: str = "it", enabled: bool = True,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self.what, self.unit, self.enabled = what, unit, bool(enabled)
        self.write = write or _stderr
        self.clock = clock
        self.start: tuple[float, int] | None = None  # (time, done) at the WARMUP-th call
        self.done0: int | None = None
        self.calls = 0
        self.message: str | None = None

    def __call__(self, done: int, total: int, row: dict | None = None) -> None:
        if not self.enabled or self.message is not None:
            return
        self.calls += 1
        if self.calls == 1:
            self.done0 = max(0, int(done) - 1)
        if self.calls < WARMUP:
            return
        now = self.clock()
        if self.start is None:
            self.start = (now, int(done))
            return
        t1, d1 = self.start
        steps, dt = int(done) - d1, now - t1
        if steps < 1 or (steps < AFTER_STEPS and dt < AFTER_S):
            return
        rate = dt / steps
        n = int(total) - int(self.done0)
        est = rate * n
        if est < min_seconds():
            self.enabled = False
            return
        part = f"the remaining {n} of {int(total)}" if self.done0 else f"{n}"
        self.message = (f"note: estimated {format_duration(est)} for {part} {self.what} "
                        f"({rate:.3g} s/{self.unit})")
        self.write(self.message)


def _stderr(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
