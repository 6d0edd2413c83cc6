"""The progress display of ``ctdip batch``, read from the run folders themselves (the last row of
each ``metrics.csv``): a rich Live table on a terminal, one plain line per state change otherwise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ctdip.workflows.batch.plan import Specimen


def _last_metrics(run_dir: Path) -> dict:
    """The last logged row of a run's metrics.csv (cheap tail read), or {}."""
    p = Path(run_dir) / "metrics.csv"
    try:
        with open(p, "rb") as f:
            head = f.readline().decode().strip().split(",")
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return {}
    if not lines or len(lines[-1].split(",")) != len(head) or lines[-1].split(",") == head:
        return {}
    out = {}
    for k, v in zip(head, lines[-1].split(",")):
        try:
            out[k] = float(v) if v != "" else None
        except ValueError:
            out[k] = v
    return out


class Progress:
    """A rich Live table on a terminal (specimen, state, iteration, PSNR, elapsed); plain lines
    (one per state change) otherwise."""

    def __init__(self, specs: list[Specimen], live: bool | None = None, stream=None):
        self.specs = specs
        self.stream = stream or sys.stderr
        self.live_mode = self.stream.isatty() if live is None else live
        self._last_state: dict[str, str] = {}
        self._live = None

    def _table(self):
        from rich.table import Table

        t = Table(title="ctdip batch", title_justify="left")
        for col, j in (("specimen", "left"), ("state", "left"), ("iteration", "right"), ("PSNR", "right"),
                       ("elapsed", "right"), ("note", "left")):
            t.add_column(col, justify=j)
        colors = {"finished": "green", "done": "green", "failed": "red", "running": "cyan", "interrupted": "yellow"}
        for s in self.specs:
            m = _last_metrics(s.run_dir) if s.state in ("running", "finished", "interrupted") else {}
            it = m.get("iter")
            ps = m.get("psnr")
            el = s.elapsed
            state = f"[{colors.get(s.state, 'white')}]{s.state.replace('_', ' ')}[/]"
            t.add_row(s.name, state, "" if it is None else str(int(it)), "" if ps is None else f"{ps:.2f}",
                      "" if el is None else f"{el:.0f} s", (s.error or s.job_id or "")[:60])
        return t

    def __enter__(self) -> "Progress":
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(file=self.stream), refresh_per_second=2)
            self._live.__enter__()
        else:
            self.update()
        return self

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            return
        n = len(self.specs)
        for i, s in enumerate(self.specs, 1):
            if self._last_state.get(s.name) == s.state:
                continue
            self._last_state[s.name] = s.state
            msg = f"[{i}/{n}] {s.name}: {s.state.replace('_', ' ')}"
            if s.state == "done":
                msg += " (finished before, skipped)"
            elif s.state == "resume":
                msg += " (unfinished run found, will resume)"
            elif s.state in ("finished", "interrupted") and s.elapsed is not None:
                m = _last_metrics(s.run_dir)
                msg += f" in {s.elapsed:.1f} s" + (f", PSNR {m['psnr']:.2f} dB" if m.get("psnr") is not None else "")
            if s.error:
                msg += f": {s.error}"
            if s.job_id and s.state == "queued":
                msg += f" (job {s.job_id})"
            self.stream.write(msg + "\n")
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
