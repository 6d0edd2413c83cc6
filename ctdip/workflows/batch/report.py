"""What a batch leaves behind and says: :class:`BatchResult`, ``batch_status.json`` and
``batch_summary.{csv,md,json}`` (:func:`write_batch_files`, evaluate-style rows from
:func:`summary_rows`), and one line per specimen's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdip.errors import UserError
from ctdip.workflows.batch.plan import Specimen


@dataclass
class BatchResult:
    """What :func:`~ctdip.workflows.batch.run_batch` returns: every specimen with its final state."""

    specimens: list[Specimen]
    rows: list[dict] = field(default_factory=list)  # evaluate-style summary rows (finished runs)
    jobs: list[Any] = field(default_factory=list)  # submitit jobs (slurm/debug executors)
    output: Path | None = None
    signal: int | None = None  # SIGINT/SIGTERM that stopped the batch (None: it ran to the end)
    files: list[Path] = field(default_factory=list)  # batch_status.json, batch_summary.*

    @property
    def failures(self) -> list[Specimen]:
        return [s for s in self.specimens if s.state in ("failed", "interrupted")]


def write_batch_files(output: Path, specs: list[Specimen], rows: list[dict]) -> list[Path]:
    """``batch_status.json`` (every specimen's state) and, for finished runs,
    ``batch_summary.{csv,md,json}`` (evaluate-style rows); returns the paths written."""
    import json

    from ctdip.core.io import atomic_write_text
    from ctdip.workflows.evaluate import format_rows

    status = [{"specimen": s.name, "scan": str(s.scan), "run": str(s.run_dir), "state": s.state,
               "error": s.error, "job_id": s.job_id, "elapsed_s": s.elapsed, "iteration": s.iteration}
              for s in specs]
    written = [output / "batch_status.json"]
    atomic_write_text(written[0], json.dumps(status, indent=2) + "\n")
    ok = [r for r in rows if "error" not in r]
    if ok:
        for fmt in ("csv", "md", "json"):
            written.append(output / f"batch_summary.{fmt}")
            atomic_write_text(written[-1], format_rows(ok, fmt))
    return written


def summary_rows(specs: list[Specimen]) -> list[dict]:
    """Evaluate-style rows for every finished run (failures get a row with their error)."""
    from ctdip.workflows.evaluate import evaluate_entry, load_entry, run_reference

    rows = []
    for s in specs:
        if s.state not in ("done", "finished"):
            rows.append({"name": s.name, "method": None, "error": s.error or s.state})
            continue
        try:
            e = load_entry(s.run_dir)
            e.name = s.name
            found = run_reference(e)
            rows.append(evaluate_entry(e, None if found is None else found[0]))
        except UserError as err:
            rows.append({"name": s.name, "method": None, "error": err.one_line()})
    return rows


def specimen_line(s: Specimen) -> str:
    """``"s2: interrupted at iteration 340, checkpoint written"``: one specimen's outcome."""
    if s.state == "finished":
        what = "finished" + (f" in {s.elapsed:.1f} s" if s.elapsed is not None else "")
    elif s.state == "done":
        what = "finished before (skipped)"
    elif s.state == "not_started":
        what = "not started"
    elif s.state == "interrupted":
        what = s.error or "interrupted"
        if s.iteration is not None and "iteration" not in what:
            what += f" (resumes from its checkpoint at iteration {s.iteration})"
        elif s.iteration is None and "checkpoint" not in what:
            what += " (no checkpoint yet: starts again)"
    elif s.state in ("queued", "running") and s.job_id:
        what = f"{s.state} on Slurm (job {s.job_id})"
    else:
        what = s.state + (f": {s.error}" if s.error else "")
    return f"{s.name}: {what}"


def failure_lines(result: BatchResult) -> list[str]:
    """One line per failed or interrupted specimen."""
    return [f"{s.name}: {s.error or s.state}" for s in result.failures]
