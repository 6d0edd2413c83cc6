"""The Slurm executor of ``ctdip batch`` (submitit): resources -> ``sbatch`` parameters, one array
job per batch, following the jobs through the run folders, and adopting the still queued or running
jobs of an earlier ``--no-wait`` submission (``batch_status.json`` + ``sacct``) instead of
submitting them twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdip.errors import UserError
from ctdip.workflows.batch.plan import Specimen, apply_result
from ctdip.workflows.batch.signals import StopControl
from ctdip.workflows.batch.table import Progress
from ctdip.workflows.batch.worker import run_specimen


@dataclass
class SlurmOptions:
    """Slurm resources of each array task (None = the cluster's default)."""

    partition: str | None = None
    time: str | None = None  # minutes, or [D-]HH:MM[:SS]
    gpus: int | None = None  # GPUs per node (= per task here)
    mem: str | None = None  # e.g. 16G, 4000M
    cpus: int | None = None  # CPUs per task
    array_parallelism: int | None = None  # max array tasks running at once
    account: str | None = None
    qos: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run before the job, e.g. module load


def parse_time_minutes(spec: str | int | None) -> int | None:
    """Slurm time ``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]`` or ``MM:SS`` -> whole minutes (rounded up)."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, int):
        return spec
    s = str(spec).strip()
    try:
        days = 0
        if "-" in s:
            d, s = s.split("-", 1)
            days = int(d)
            parts = [int(p) for p in s.split(":")]
            parts += [0] * (3 - len(parts))
            h, m, sec = parts
        else:
            parts = [int(p) for p in s.split(":")]
            if len(parts) == 1:
                h, m, sec = 0, parts[0], 0
            elif len(parts) == 2:
                h, m, sec = 0, parts[0], parts[1]
            elif len(parts) == 3:
                h, m, sec = parts
            else:
                raise ValueError
        if min(days, h, m, sec) < 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--time '{spec}' is not a Slurm time (minutes, HH:MM:SS or D-HH:MM)") from None
    total = days * 1440 + h * 60 + m + (1 if sec > 0 else 0)
    if total <= 0:
        raise UserError(f"--time '{spec}' must be positive")
    return total


def parse_mem_gb(spec: str | int | float | None) -> float | None:
    """Memory ``16G``, ``16GB``, ``4000M``, ``1T`` or a number of GB -> GB."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, (int, float)):
        return float(spec)
    s = str(spec).strip().upper().removesuffix("B")
    mult = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    try:
        if s and s[-1] in mult:
            return float(s[:-1]) * mult[s[-1]]
        return float(s)
    except ValueError:
        raise UserError(f"--mem '{spec}' is not a memory size (e.g. 16G, 4000M)") from None


def _at_least(value: int, least: int, option: str) -> int:
    if value < least:
        raise UserError(f"{option} must be >= {least}, got {value}")
    return int(value)


def slurm_parameters(opts: SlurmOptions, job_name: str) -> dict:
    """submitit ``AutoExecutor.update_parameters`` keywords for ``opts``."""
    p: dict[str, Any] = {"name": job_name, "nodes": 1, "tasks_per_node": 1}
    t = parse_time_minutes(opts.time)
    if t is not None:
        p["timeout_min"] = t
    if opts.gpus is not None:
        p["gpus_per_node"] = _at_least(opts.gpus, 0, "--gpus")
    m = parse_mem_gb(opts.mem)
    if m is not None:
        if m <= 0:
            raise UserError(f"--mem must be positive, got {opts.mem}")
        if float(m).is_integer():
            p["mem_gb"] = int(m)
        else:  # submitit's mem_gb is whole GB; give Slurm megabytes instead
            p["slurm_mem"] = f"{int(round(m * 1024))}M"
    if opts.cpus is not None:
        p["cpus_per_task"] = _at_least(opts.cpus, 1, "--cpus")
    if opts.partition:
        p["slurm_partition"] = opts.partition
    if opts.array_parallelism is not None:
        p["slurm_array_parallelism"] = _at_least(opts.array_parallelism, 1, "--array-parallelism")
    if opts.account:
        p["slurm_account"] = opts.account
    if opts.qos:
        p["slurm_qos"] = opts.qos
    if opts.setup:
        p["slurm_setup"] = list(opts.setup)
    return p


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("the Slurm executor needs submitit: pip install 'ctdip[slurm]'") from None
    return submitit


def make_executor(folder: str | Path, cluster: str, opts: SlurmOptions, job_name: str):
    """A submitit ``AutoExecutor`` (``cluster``: slurm, or local/debug for testing) with ``opts``."""
    submitit = _submitit()
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as e:  # no srun on this machine
        raise UserError(f"cannot use the Slurm executor here: {e}") from None
    ex.update_parameters(**slurm_parameters(opts, job_name))
    return ex


def run_submitit(todo: list[Specimen], method: str, params: dict | None, scan_options: dict | None, options: dict,
                 cluster: str, slurm_opts: SlurmOptions, folder: Path, prog: Progress, wait: bool, poll_s: float,
                 stop: StopControl) -> list:
    """Submit ``todo`` as one array and follow it. A SIGINT/SIGTERM stops following (the Slurm
    jobs keep running; the same command later follows them again); a debug job interrupted by
    the signal stops the ones after it."""
    if not todo:
        return []
    ex = make_executor(folder, cluster, slurm_opts, job_name=f"ctdip-{method}")
    adopted = _active_slurm_jobs(Path(folder).parent, todo) if cluster == "slurm" else {}
    for s in todo:  # still queued or running from an earlier `--no-wait` call: follow, don't resubmit
        if s.name in adopted:
            s.state, s.job_id = "queued", str(adopted[s.name].job_id)
    todo_adopted = [s for s in todo if s.name in adopted]
    todo = [s for s in todo if s.name not in adopted]
    threads = slurm_opts.cpus
    n = len(todo)
    # absolute paths: Slurm tasks may start in another working directory
    jobs = []
    if todo:
        jobs = ex.map_array(run_specimen, [str(s.scan.resolve()) for s in todo],
                            [str(s.run_dir.resolve()) for s in todo], [method] * n,
                            [params] * n, [scan_options] * n, [options] * n, [threads] * n,
                            [s.state == "resume" for s in todo])
    for s, j in zip(todo, jobs):
        s.state, s.job_id = "queued", str(j.job_id)
    jobs = jobs + [adopted[s.name] for s in todo_adopted]
    todo = todo + todo_adopted
    prog.update()
    if not wait:
        return jobs
    pending = dict(zip(jobs, todo))
    t_start = time.time() - 1.0
    while pending and not stop.stopped:
        for j, s in list(pending.items()):
            if stop.stopped:
                break
            if cluster == "debug" and s.state == "queued":  # debug jobs run in-process on result()
                s.state, s.started = "running", time.time()
                prog.update()
            if cluster == "debug" or j.done():
                try:
                    res = j.result()
                except Exception as e:  # job-level failure: timeout, node failure, cancelled
                    res = {"ok": False, "error": f"job {j.job_id} failed: {str(e).strip().splitlines()[-1][:200]}"}
                if s.started is None:
                    s.started = time.time()
                apply_result(s, res)
                if res.get("signal"):
                    stop.request(res["signal"])
                del pending[j]
            elif s.state == "queued" and _touched_since(s.run_dir, t_start):
                s.state, s.started = "running", time.time()
        prog.update()
        if pending and not stop.stopped:
            time.sleep(poll_s)
    if cluster == "debug":
        for s in pending.values():
            s.state = "not_started"
    return jobs


def _touched_since(run_dir: Path, t: float) -> bool:
    """Whether the run folder's config or metrics were written after time ``t``."""
    for name in ("metrics.csv", "config.yaml", "checkpoint.pt"):
        try:
            if (Path(run_dir) / name).stat().st_mtime >= t:
                return True
        except OSError:
            pass
    return False


ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}


def _active_slurm_jobs(output: Path, specs: list[Specimen]) -> dict:
    """Jobs of an earlier submission (``batch_status.json``) that Slurm still lists as pending or
    running, by specimen name: following them avoids submitting a specimen twice."""
    import json

    p = Path(output) / "batch_status.json"
    if not p.exists():
        return {}
    try:
        status = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    names = {s.name for s in specs}
    submitit = _submitit()
    out = {}
    for e in status if isinstance(status, list) else []:
        if not isinstance(e, dict) or e.get("specimen") not in names or not e.get("job_id"):
            continue
        if e.get("state") not in ("queued", "running"):
            continue
        job = submitit.SlurmJob(folder=Path(output) / "slurm", job_id=str(e["job_id"]))
        try:
            state = str(job.state).upper()
        except Exception:  # sacct unavailable: cannot tell, submit again
            continue
        if state in ACTIVE_SLURM_STATES:
            out[e["specimen"]] = job
    return out
