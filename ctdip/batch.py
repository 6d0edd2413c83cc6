"""Batch reconstruction of many specimens (``ctdip batch``): a local process pool or Slurm (submitit).

Each scan folder gets one run folder, ``<output>/<scan name>/``, made by the same driver as
``ctdip reconstruct`` (:func:`ctdip.reconstruct.reconstruct`). Before anything runs, every
specimen is classified:

* ``done``: its run folder is finished (``RunFolder.is_finished``: summary.json + recon.tif);
  skipped, so re-running the same command after a crash only does what is left;
* ``resume``: the run folder was started (config.yaml, usually a checkpoint) but not finished:
  the driver continues it (``resume=True``), to the same result as an uninterrupted run with the
  same seed (classical methods simply run again);
* ``new``: everything else.

Executors:

* ``local``: ``--jobs J`` worker processes (spawned, so each has a fresh torch), each with its
  own torch thread pool of ``max(1, cores // J)`` threads: CPU-bound reconstructions then share
  the machine without oversubscription. Default ``J = min(specimens, max(1, cores // 4))``.
* ``slurm``: one Slurm array job through submitit's ``AutoExecutor`` (partition, time, GPUs,
  memory, CPUs per task, array parallelism). The jobs run the same worker function on the nodes.
  With ``--no-wait`` ``ctdip batch`` returns after submission; otherwise it follows the jobs.
  When ``--time`` is given, each run is asked to checkpoint and stop a few minutes before the
  Slurm limit, so the next ``ctdip batch`` resumes it instead of starting over.

Progress is read from the run folders themselves (the last row of each ``metrics.csv``), the
same way for both executors. A failing specimen (unreadable data, a crash) is reported with its
one-line reason and never stops the others; the command exits with code 1 listing failures.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ctdip.errors import CtdipError, UserError
from ctdip.runs import RunFolder

STATES = ("new", "resume", "done", "queued", "running", "finished", "failed", "interrupted")


@dataclass
class Specimen:
    """One scan folder and its run folder, with its batch state."""

    name: str
    scan: Path
    run_dir: Path
    state: str = "new"  # see STATES
    error: str | None = None
    summary: dict = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    job_id: str | None = None

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started


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


# --------------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------------
def plan(scans: Sequence[str | Path], output: str | Path) -> list[Specimen]:
    """One :class:`Specimen` per scan folder, classified new / resume / done (module docstring)."""
    if not scans:
        raise UserError("no scan folders given")
    out = Path(output)
    specs: list[Specimen] = []
    seen: dict[str, int] = {}
    for s in scans:
        p = Path(s)
        if not p.exists():
            raise UserError("no such scan folder", path=p)
        name = p.resolve().name or "scan"
        if name in seen:  # two folders with the same name: disambiguate with the parent's name
            seen[name] += 1
            name = f"{p.resolve().parent.name}_{name}"
        seen.setdefault(name, 1)
        run_dir = out / name
        specs.append(Specimen(name=name, scan=p, run_dir=run_dir, state=_classify(run_dir)))
    return specs


def _classify(run_dir: Path) -> str:
    run = RunFolder(run_dir)
    if run.is_finished():
        return "done"
    if run.file("checkpoint.pt").exists() or run.file("config.yaml").exists():
        return "resume"  # the driver continues from the checkpoint (or restarts a classical method)
    return "new"


# --------------------------------------------------------------------------------------------------
# the worker (runs in a pool process or a Slurm task)
# --------------------------------------------------------------------------------------------------
def run_specimen(scan: str, run_dir: str, method: str, params: dict | None = None,
                 scan_options: dict | None = None, options: dict | None = None, threads: int | None = None,
                 resume: bool = False) -> dict:
    """Reconstruct one specimen with :func:`ctdip.reconstruct.reconstruct`; never raises.

    Returns ``{"ok": True, "summary": {...}}`` or ``{"ok": False, "error": "<one line>",
    "interrupted": bool}``. ``options`` are the driver's keyword options (seed, device, backend,
    holdout, time_limit, stop_early); ``scan_options`` the scan reader's (angles, size, slice, ...).
    """
    try:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        from ctdip.reconstruct import reconstruct

        summary = reconstruct(str(scan), method, params=dict(params or {}), output=str(run_dir), resume=resume,
                              quiet=True, **_driver_kwargs(scan_options, options))
        return {"ok": True, "summary": _plain_summary(summary)}
    except UserError as e:
        return {"ok": False, "error": e.one_line(), "interrupted": False}
    except CtdipError as e:  # e.g. TimeLimitReached: checkpoint written, resume later
        return {"ok": False, "error": str(e) or type(e).__name__, "interrupted": True}
    except Exception as e:  # a crash in one specimen must not stop the others
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        return {"ok": False, "error": f"{type(e).__name__}: {e}{where}".replace("\n", " "), "interrupted": False}


def _driver_kwargs(scan_options: dict | None, options: dict | None) -> dict:
    kw = dict(options or {})
    if scan_options:
        kw["scan_options"] = {k: v for k, v in scan_options.items() if v is not None}
    return kw


def _plain_summary(summary: Any) -> dict:
    """The scalar entries of a run's summary (``RunSummary.summary`` or a dict), picklable."""
    summary = getattr(summary, "summary", summary)
    if not isinstance(summary, dict):
        return {}
    out = {}
    for k, v in summary.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
    return out


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


# --------------------------------------------------------------------------------------------------
# executors
# --------------------------------------------------------------------------------------------------
def cpu_count() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def default_jobs(n_specimens: int, cores: int | None = None) -> int:
    """``min(specimens, max(1, cores // 4))``: a few threads per job, all cores busy."""
    cores = cores or cpu_count()
    return max(1, min(n_specimens, max(1, cores // 4)))


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


def slurm_parameters(opts: SlurmOptions, job_name: str) -> dict:
    """submitit ``AutoExecutor.update_parameters`` keywords for ``opts``."""
    p: dict[str, Any] = {"name": job_name, "nodes": 1, "tasks_per_node": 1}
    t = parse_time_minutes(opts.time)
    if t is not None:
        p["timeout_min"] = t
    if opts.gpus is not None:
        if opts.gpus < 0:
            raise UserError(f"--gpus must be >= 0, got {opts.gpus}")
        p["gpus_per_node"] = int(opts.gpus)
    m = parse_mem_gb(opts.mem)
    if m is not None:
        if m <= 0:
            raise UserError(f"--mem must be positive, got {opts.mem}")
        if float(m).is_integer():
            p["mem_gb"] = int(m)
        else:  # submitit's mem_gb is whole GB; give Slurm megabytes instead
            p["slurm_mem"] = f"{int(round(m * 1024))}M"
    if opts.cpus is not None:
        if opts.cpus < 1:
            raise UserError(f"--cpus must be >= 1, got {opts.cpus}")
        p["cpus_per_task"] = int(opts.cpus)
    if opts.partition:
        p["slurm_partition"] = opts.partition
    if opts.array_parallelism is not None:
        if opts.array_parallelism < 1:
            raise UserError(f"--array-parallelism must be >= 1, got {opts.array_parallelism}")
        p["slurm_array_parallelism"] = int(opts.array_parallelism)
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


# --------------------------------------------------------------------------------------------------
# progress display
# --------------------------------------------------------------------------------------------------
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
            state = f"[{colors.get(s.state, 'white')}]{s.state}[/]"
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
            msg = f"[{i}/{n}] {s.name}: {s.state}"
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


# --------------------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    specimens: list[Specimen]
    rows: list[dict] = field(default_factory=list)  # evaluate-style summary rows (finished runs)
    jobs: list[Any] = field(default_factory=list)  # submitit jobs (slurm/debug executors)

    @property
    def failures(self) -> list[Specimen]:
        return [s for s in self.specimens if s.state in ("failed", "interrupted")]


def _apply(spec: Specimen, res: dict) -> None:
    spec.ended = time.time()
    if res.get("ok"):
        spec.state, spec.summary = "finished", res.get("summary", {})
    else:
        spec.state = "interrupted" if res.get("interrupted") else "failed"
        spec.error = res.get("error") or "unknown error"


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
    live: bool | None = None,
    stream=None,
    poll_s: float = 0.5,
    summarize: bool = True,
) -> BatchResult:
    """Reconstruct every scan in ``scans`` into ``output/<scan name>/`` (module docstring).

    executor: ``local`` (process pool), ``slurm`` (submitit on a Slurm cluster), or submitit's
    in-process ``debug`` / subprocess ``submitit-local`` executors (tests, dry runs).
    """
    from ctdip.methods import get_method

    get_method(method)  # unknown method: a UserError before anything starts
    if executor not in ("local", "slurm", "debug", "submitit-local"):
        raise UserError(f"unknown executor '{executor}'; choose one of: local, slurm")
    specs = plan(scans, output)
    Path(output).mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if s.state != "done"]
    options = dict(options or {})
    result = BatchResult(specs)
    with Progress(specs, live=live, stream=stream) as prog:
        if executor == "local":
            _run_local(todo, method, params, scan_options, options, jobs, prog, poll_s)
        else:
            slurm = slurm or SlurmOptions()
            t = parse_time_minutes(slurm.time)
            if t is not None and "time_limit" not in options:
                # stop and checkpoint before Slurm kills the task: 5 min (or 10 %) margin
                options["time_limit"] = max(60.0, 60.0 * t - max(300.0, 6.0 * t))
            cluster = {"slurm": "slurm", "debug": "debug", "submitit-local": "local"}[executor]
            result.jobs = _run_submitit(todo, method, params, scan_options, options, cluster, slurm,
                                        Path(output) / "slurm", prog, wait, poll_s)
    if summarize and wait:
        result.rows = summary_rows(specs)
    return result


def _run_local(todo: list[Specimen], method, params, scan_options, options, jobs, prog: Progress, poll_s) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if not todo:
        return
    n_jobs = int(jobs) if jobs else default_jobs(len(todo))
    if n_jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    n_jobs = min(n_jobs, len(todo))
    threads = max(1, cpu_count() // n_jobs)
    t_start = time.time() - 1.0
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch/OpenMP state
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        futs = {}
        for s in todo:
            resume = s.state == "resume"
            f = pool.submit(run_specimen, str(s.scan.resolve()), str(s.run_dir), method, params, scan_options,
                            options, threads, resume)
            futs[f] = s
            s.state = "queued"
        pending = set(futs)
        while pending:
            done, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
            for f in done:
                s = futs[f]
                try:
                    res = f.result()
                except Exception as e:  # the worker process died (killed, out of memory)
                    res = {"ok": False, "error": f"worker died: {type(e).__name__}: {e}".replace("\n", " ")}
                if s.started is None:
                    s.started = time.time()
                _apply(s, res)
            for f in pending:  # a queued job has started once it writes into its run folder
                s = futs[f]
                if s.state == "queued" and _touched_since(s.run_dir, t_start):
                    s.state, s.started = "running", time.time()
            prog.update()


def _run_submitit(todo, method, params, scan_options, options, cluster, slurm_opts, folder, prog: Progress,
                  wait: bool, poll_s: float) -> list:
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
    while pending:
        for j, s in list(pending.items()):
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
                _apply(s, res)
                del pending[j]
            elif s.state == "queued" and _touched_since(s.run_dir, t_start):
                s.state, s.started = "running", time.time()
        prog.update()
        if pending:
            time.sleep(poll_s)
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


def summary_rows(specs: list[Specimen]) -> list[dict]:
    """Evaluate-style rows for every finished run (failures get a row with their error)."""
    from ctdip.evaluate import evaluate_entry, load_entry, run_reference

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


def failure_lines(result: BatchResult) -> list[str]:
    """One line per failed or interrupted specimen."""
    return [f"{s.name}: {s.error or s.state}" for s in result.failures]
