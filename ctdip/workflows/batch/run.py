"""``run_batch``: plan, check settings, run the specimens on an executor, write the batch files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ctdip.errors import UserError
from ctdip.workflows.batch.local import run_local
from ctdip.workflows.batch.plan import check_settings, plan, remove_run, requested_settings
from ctdip.workflows.batch.report import BatchResult, summary_rows, write_batch_files
from ctdip.workflows.batch.signals import StopControl
from ctdip.workflows.batch.slurm import SlurmOptions, parse_time_minutes, run_submitit
from ctdip.workflows.batch.table import Progress


def run_batch(
    scans: Sequence[str | Path],
    method: str,
    output: str | Path = "runs",
    *,
    params: dict | None = None,
    scan_options: dict | None = None,
    options: dict | None = None,
    executor: str = "local",
    jobs: int | None = None,
    slurm: SlurmOptions | None = None,
    wait: bool = True,
    rerun: bool = False,
    live: bool | None = None,
    stream=None,
    poll_s: float = 0.5,
    summarize: bool = True,
) -> BatchResult:
    """Reconstruct every scan in ``scans`` into ``output/<scan name>/`` (:mod:`ctdip.workflows.batch`).

    executor: ``local`` (spawned worker processes), ``slurm`` (submitit on a Slurm cluster), or
    submitit's in-process ``debug`` / subprocess ``submitit-local`` executors (tests, dry runs).
    A run that exists with other settings (:func:`check_settings`) is refused before anything
    starts, or with ``rerun`` removed and done again. Writes ``output/batch_status.json`` and,
    when runs finished, ``output/batch_summary.{csv,md,json}``. A SIGINT/SIGTERM stops the batch
    (:mod:`ctdip.workflows.batch.local`); the result then has ``signal`` set and the specimens' states.
    """
    if executor not in ("local", "slurm", "debug", "submitit-local"):
        raise UserError(f"unknown executor '{executor}'; choose one of: local, slurm")
    if jobs is not None and int(jobs) < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    wanted = requested_settings(method, params, scan_options, options)  # bad method/params: refused here
    specs = plan(scans, output)
    redo = check_settings(specs, wanted, rerun=rerun)
    for s in redo:
        remove_run(s)
    Path(output).mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if s.state != "done"]
    options = dict(options or {})
    result = BatchResult(specs, output=Path(output))
    with StopControl() as stop, Progress(specs, live=live, stream=stream) as prog:
        if executor == "local":
            run_local(todo, method, params, scan_options, options, jobs, prog, poll_s, stop)
        else:
            slurm = slurm or SlurmOptions()
            t = parse_time_minutes(slurm.time)
            if t is not None and "time_limit" not in options:
                # stop and checkpoint before Slurm kills the task: 5 min (or 10 %) margin
                options["time_limit"] = max(60.0, 60.0 * t - max(300.0, 6.0 * t))
            cluster = {"slurm": "slurm", "debug": "debug", "submitit-local": "local"}[executor]
            result.jobs = run_submitit(todo, method, params, scan_options, options, cluster, slurm,
                                       Path(output) / "slurm", prog, wait, poll_s, stop)
        result.signal = stop.signum
        if summarize and wait and not stop.stopped:
            result.rows = summary_rows(specs)
        result.files = write_batch_files(Path(output), specs, result.rows)
    return result
