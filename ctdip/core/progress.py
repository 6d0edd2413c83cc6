"""One progress bar for every long loop: a rich bar on stderr with elapsed time and ETA.

::

    pdhg-tv  ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━   120/400  0:00:03  0:00:07  loss 1.2e-03  PSNR 27.31 dB

Columns: description, bar, ``done/total`` (``?`` while the total is unknown) and an optional unit,
elapsed time, ETA, then the caller's extra text fields in the order given. The ETA is rich's
``TimeRemainingColumn``: ``(total - done) / speed`` with the speed averaged over the recent steps.

The bar is drawn only when stderr is a terminal and the caller is not ``quiet``; otherwise every
method is a no-op, so a loop needs no branches. While it is drawn, lines other code writes to
stderr/stdout (notes, warnings, :class:`~ctdip.core.estimate.StepEstimate`) appear above it. One
bar at a time: a bar opened while another is drawn stays hidden (two live displays would garble
the terminal). :meth:`ProgressBar.update` redraws at most every ``min_interval_s`` seconds (the
last step always), so a fast loop pays nothing for its bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

_ACTIVE: list["ProgressBar"] = []  # the bar being drawn (at most one)


def stderr_is_tty() -> bool:
    """Whether stderr is an interactive terminal (False for pipes, files and closed streams)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A context manager around a rich progress bar; see the module docstring.

    ``fields`` maps the name of each extra text column to its initial text;
    ``bar.update(done, total, name="text")`` sets them. ``transient`` bars vanish when done.
    """

    def __init__(self, description: str, total: int | None = None, *, unit: str = "",
                 fields: Mapping[str, str] | None = None, quiet: bool = False, transient: bool = False,
                 min_interval_s: float = 0.1):
        self.description, self.total, self.unit = description, total, unit
        self.fields = dict(fields or {})
        self.transient, self.min_interval_s = transient, float(min_interval_s)
        self.enabled = not quiet and stderr_is_tty()
        self._progress: Any = None
        self._task: Any = None
        self._last = -float("inf")

    def __enter__(self) -> "ProgressBar":
        if not self.enabled or _ACTIVE:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        if self.unit:
            columns.append(TextColumn(self.unit))
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
        columns += [TextColumn(f"{{task.fields[{name}]}}") for name in self.fields]
        self._progress = Progress(*columns, console=Console(stderr=True), transient=self.transient)
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=self.total, **self.fields)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop drawing (idempotent); a non-transient bar stays on screen as last drawn."""
        if self._progress is None:
            return
        self._progress.stop()
        self._progress = None
        _ACTIVE.remove(self)

    @property
    def shown(self) -> bool:
        """Whether this bar is being drawn now."""
        return self._progress is not None

    def update(self, completed: int, total: int | None = None, **fields: str) -> None:
        """``completed`` of ``total`` steps done (``total`` None: unchanged), and new field texts."""
        if self._progress is None:
            return
        if total is not None:
            self.total = total
        now = time.perf_counter()
        if (self.total is None or completed < self.total) and now - self._last < self.min_interval_s:
            return
        self._last = now
        self._progress.update(self._task, completed=completed, total=self.total, **fields)

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps done."""
        if self._progress is not None:
            self._progress.advance(self._task, steps)
