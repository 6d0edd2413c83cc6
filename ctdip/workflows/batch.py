"""Batch reconstruction of many specimens (``ctdip batch``): local worker processes or Slurm (submitit).

Each scan folder gets one run folder, ``<output>/<scan name>/``, made by the same driver as
``ctdip reconstruct`` (:func:`ctdip.workflows.reconstruct.reconstruct`). Before anything runs, every
specimen is classified:

* ``done``: its run folder is finished (``RunFolder.is_finished``: summary.json + recon.tif);
  skipped, so re-running the same command after a crash only does what is left;
* ``resume``: the run folder was started (config.yaml, usually a checkpoint) but not finished:
  the driver continues it (``resume=True``), to the same result as an uninterrupted run with the
  same seed (classical methods simply run again);
* ``new``: everything else.

A ``done`` or ``resume`` run is only reused when the settings recorded in its ``config.yaml``
(method, resolved parameters, scan options, seed, holdout, early stopping:
:func:`requested_settings`) equal the requested ones; otherwise the batch is refused before any
work with one line naming the specimens and the differences, or, with ``rerun``, those run
folders are removed and done again from scratch.

Executors:

* ``local``: ``--jobs J`` spawned worker processes fed one specimen at a time by the parent
  (:mod:`ctdip.workflows.batch_local`: signals, no orphans), each with its own torch thread pool of
  ``max(1, cores // J)`` threads: CPU-bound reconstructions then share the machine without
  oversubscription. Default ``J = min(specimens, max(1, cores // 4))``.
* ``slurm``: one Slurm array job through submitit's ``AutoExecutor`` (partition, time, GPUs,
  memory, CPUs per task, array parallelism). The jobs run the same worker function on the nodes.
  With ``--no-wait`` ``ctdip batch`` returns after submission; otherwise it follows the jobs.
  When ``--time`` is given, each run is asked to checkpoint and stop a few minutes before the
  Slurm limit, so the next ``ctdip batch`` resumes it instead of starting over. ``scancel``
  sends SIGTERM: a DIP run checkpoints at the end of its iteration (:func:`run_specimen`).

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

from ctdip.dip.runs import RunFolder
from ctdip.errors import CtdipError, UserError

STATES = ("new", "resume", "done", "queued", "running", "finished", "failed", "interrupted", "not_started")


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
    iteration: int | None = None  # checkpoint iteration of an interrupted run
    resume: bool = False  # continue its run folder (state "resume" when planned)

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
# settings of an existing run vs. the requested ones
# --------------------------------------------------------------------------------------------------
def requested_settings(method: str, params: dict | None = None, scan_options: dict | None = None,
                       options: dict | None = None) -> dict:
    """What decides a run's result, as ``config.yaml`` records it: the canonical method, its
    resolved parameters (preset < ``params``, completed by the method class exactly as the driver
    does), the given scan options, seed, holdout fraction and early stopping. Building the method
    object also refuses unknown or invalid parameters before anything starts."""
    from ctdip.workflows.reconstruct import resolve_method

    name, _, _, _, _, resolved = resolve_method(method, params)
    opts = dict(options or {})
    return _yaml_plain({"method": name, "params": resolved, "scan": _given(scan_options),
                        "seed": int(opts.get("seed", 0)), "holdout": float(opts.get("holdout", 0.0)),
                        "stop_early": bool(opts.get("stop_early", False))})


def recorded_settings(config: dict) -> dict:
    """The :func:`requested_settings` keys read from a run's ``config.yaml``."""
    from ctdip.methods.params import recorded_params  # old runs may record old parameter names

    method = config.get("method")
    return _yaml_plain({"method": method, "params": recorded_params(method, config.get("params") or {}),
                        "scan": _given((config.get("scan") or {}).get("options")),
                        "seed": config.get("seed", 0), "holdout": config.get("holdout", 0.0),
                        "stop_early": config.get("stop_early", False)})


def _yaml_plain(d: dict) -> dict:
    """``d`` as it reads back from YAML (tuples -> lists, numpy scalars -> floats, ...)."""
    import yaml

    from ctdip.core.io import plain

    return yaml.safe_load(yaml.safe_dump(plain(d), sort_keys=False))


def settings_diff(recorded: dict, wanted: dict) -> list[str]:
    """``["iterations 60 -> 200", "scan.angles 30 -> 60", ...]``: recorded -> requested."""
    out = []
    for key in ("method", "params", "scan", "seed", "holdout", "stop_early"):
        a, b = recorded.get(key), wanted.get(key)
        if key in ("params", "scan"):
            a, b = a or {}, b or {}
            prefix = "scan." if key == "scan" else ""
            for k in list(dict.fromkeys([*b, *a])):
                if a.get(k) != b.get(k):
                    out.append(f"{prefix}{k} {_show(a.get(k))} -> {_show(b.get(k))}")
        elif a != b:
            out.append(f"{key} {_show(a)} -> {_show(b)}")
    return out


def _show(v: Any) -> str:
    return "(unset)" if v is None else str(v)


def check_settings(specs: list[Specimen], wanted: dict, rerun: bool = False) -> list[Specimen]:
    """Compare every started or finished run (state ``done`` / ``resume``) with ``wanted``.

    A run whose recorded settings differ (or whose config.yaml cannot be read) is refused with
    one :class:`UserError` line naming the specimens and the differences, unless ``rerun``: then
    those specimens are returned (the caller removes their run folders and starts them again)."""
    from ctdip.core.io import read_yaml

    differ: list[tuple[Specimen, list[str]]] = []
    for s in specs:
        if s.state not in ("done", "resume"):
            continue
        cfg_path = s.run_dir / "config.yaml"
        try:
            diff = settings_diff(recorded_settings(read_yaml(cfg_path)), wanted)
        except (OSError, UserError, ValueError, AttributeError):
            diff = ["config.yaml unreadable"]
        if diff:
            differ.append((s, diff))
    if differ and not rerun:
        s0, d0 = differ[0]
        what = "finished" if s0.state == "done" else "started"
        if len(differ) == 1:
            head = f"{s0.run_dir}: {what} with other settings ({', '.join(d0)})"
        else:
            names = ", ".join(s.name for s, _ in differ)
            head = (f"{s0.run_dir.parent}: {len(differ)} specimens ({names}) were run with other settings "
                    f"({s0.name}: {', '.join(d0)})")
        them = "it" if len(differ) == 1 else "them"
        raise UserError(f"{head}; add --rerun to redo {them} from scratch, or choose another -o")
    return [s for s, _ in differ]


def _remove_run(spec: Specimen) -> None:
    """Delete a run folder that ``--rerun`` redoes (only ctdip's run folders)."""
    import shutil

    if (spec.run_dir / "config.yaml").exists() or (spec.run_dir / "checkpoint.pt").exists():
        shutil.rmtree(spec.run_dir)
    spec.state = "new"


# --------------------------------------------------------------------------------------------------
# the worker (runs in a pool process or a Slurm task)
# --------------------------------------------------------------------------------------------------
def run_specimen(scan: str, run_dir: str, method: str, params: dict | None = None,
                 scan_options: dict | None = None, options: dict | None = None, threads: int | None = None,
                 resume: bool = False) -> dict:
    """Reconstruct one specimen with :func:`ctdip.workflows.reconstruct.reconstruct`; never raises.

    Returns ``{"ok": True, "summary": {...}}`` or ``{"ok": False, "error": "<one line>",
    "interrupted": bool}``. ``options`` are the driver's keyword options (seed, device, backend,
    holdout, time_limit, stop_early); ``scan_options`` the scan reader's (angles, size, slice, ...).

    SIGINT/SIGTERM (a forwarded Ctrl-C, Slurm's ``scancel``): a DIP run checkpoints at the end of
    its current iteration; outside the iteration loop the run stops at once. Either way the result
    is ``{"ok": False, "interrupted": True, "signal": signum, "iteration": N}`` with ``N`` the
    checkpoint's iteration (None: no checkpoint yet, the specimen starts again).
    """
    from ctdip.workflows.batch_local import SignalLatch, signal_from_message

    latch = SignalLatch()
    try:
        with latch:
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            from ctdip.workflows.reconstruct import StderrWarnings, reconstruct

            summary = reconstruct(str(scan), method, params=dict(params or {}), output=str(run_dir), resume=resume,
                                  reporter=StderrWarnings(), **_driver_kwargs(scan_options, options))
            return {"ok": True, "summary": _plain_summary(summary)}
    except KeyboardInterrupt as e:
        signum = latch.signum = latch.signum or signal_from_message(str(e))
        it = checkpoint_iteration(run_dir)
        where = f"at iteration {it}, checkpoint written" if it is not None else "before its first checkpoint"
        return {"ok": False, "interrupted": True, "signal": int(signum), "iteration": it,
                "error": f"interrupted {where}"}
    except UserError as e:
        return {"ok": False, "error": e.one_line(), "interrupted": False}
    except CtdipError as e:  # e.g. TimeLimitReached: checkpoint written, resume later
        return {"ok": False, "error": str(e) or type(e).__name__, "interrupted": True,
                "iteration": checkpoint_iteration(run_dir)}
    except Exception as e:  # a crash in one specimen must not stop the others
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        return {"ok": False, "error": f"{type(e).__name__}: {e}{where}".replace("\n", " "), "interrupted": False}


def checkpoint_iteration(run_dir: str | Path) -> int | None:
    """The iteration stored in a run's ``checkpoint.pt`` (None: no readable checkpoint)."""
    p = Path(run_dir) / "checkpoint.pt"
    if not p.is_file():
        return None
    try:
        import torch

        ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        return int(ck["iteration"])
    except Exception:  # noqa: BLE001 - a damaged or foreign file: unknown
        return None


def _driver_kwargs(scan_options: dict | None, options: dict | None) -> dict:
    kw = dict(options or {})
    kw["scan_options"] = _given(scan_options)  # always explicit: config.yaml records exactly these
    return kw


def _given(d: dict | None) -> dict:
    return {k: v for k, v in (d or {}).items() if v is not None}


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


# --------------------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    specimens: list[Specimen]
    rows: list[dict] = field(default_factory=list)  # evaluate-style summary rows (finished runs)
    jobs: list[Any] = field(default_factory=list)  # submitit jobs (slurm/debug executors)
    output: Path | None = None
    signal: int | None = None  # SIGINT/SIGTERM that stopped the batch (None: it ran to the end)
    files: list[Path] = field(default_factory=list)  # batch_status.json, batch_summary.*

    @property
    def failures(self) -> list[Specimen]:
        return [s for s in self.specimens if s.state in ("failed", "interrupted")]


def _apply(spec: Specimen, res: dict) -> None:
    spec.ended = time.time()
    if res.get("ok"):
        spec.state, spec.summary = "finished", res.get("summary", {})
    elif res.get("started") is False:
        spec.state, spec.started, spec.ended = "not_started", None, None
    else:
        spec.state = "interrupted" if res.get("interrupted") else "failed"
        spec.error = res.get("error") or "unknown error"
        spec.iteration = res.get("iteration")


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
    """Reconstruct every scan in ``scans`` into ``output/<scan name>/`` (module docstring).

    executor: ``local`` (spawned worker processes), ``slurm`` (submitit on a Slurm cluster), or
    submitit's in-process ``debug`` / subprocess ``submitit-local`` executors (tests, dry runs).
    A run that exists with other settings (:func:`check_settings`) is refused before anything
    starts, or with ``rerun`` removed and done again. Writes ``output/batch_status.json`` and,
    when runs finished, ``output/batch_summary.{csv,md,json}``. A SIGINT/SIGTERM stops the batch
    (:mod:`ctdip.workflows.batch_local`); the result then has ``signal`` set and the specimens' states.
    """
    from ctdip.workflows.batch_local import StopControl

    if executor not in ("local", "slurm", "debug", "submitit-local"):
        raise UserError(f"unknown executor '{executor}'; choose one of: local, slurm")
    if jobs is not None and int(jobs) < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    wanted = requested_settings(method, params, scan_options, options)  # bad method/params: refused here
    specs = plan(scans, output)
    redo = check_settings(specs, wanted, rerun=rerun)
    for s in redo:
        _remove_run(s)
    Path(output).mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if s.state != "done"]
    options = dict(options or {})
    result = BatchResult(specs, output=Path(output))
    with StopControl() as stop, Progress(specs, live=live, stream=stream) as prog:
        if executor == "local":
            _run_local(todo, method, params, scan_options, options, jobs, prog, poll_s, stop)
        else:
            slurm = slurm or SlurmOptions()
            t = parse_time_minutes(slurm.time)
            if t is not None and "time_limit" not in options:
                # stop and checkpoint before Slurm kills the task: 5 min (or 10 %) margin
                options["time_limit"] = max(60.0, 60.0 * t - max(300.0, 6.0 * t))
            cluster = {"slurm": "slurm", "debug": "debug", "submitit-local": "local"}[executor]
            result.jobs = _run_submitit(todo, method, params, scan_options, options, cluster, slurm,
                                        Path(output) / "slurm", prog, wait, poll_s, stop)
        result.signal = stop.signum
        if summarize and wait and not stop.stopped:
            result.rows = summary_rows(specs)
        result.files = write_batch_files(Path(output), specs, result.rows)
    return result


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


def _run_local(todo: list[Specimen], method, params, scan_options, options, jobs, prog: Progress, poll_s,
               stop) -> None:
    from ctdip.workflows.batch_local import run_pool

    if not todo:
        return
    n_jobs = min(int(jobs) if jobs else default_jobs(len(todo)), len(todo))
    threads = max(1, cpu_count() // n_jobs)
    for s in todo:
        s.resume = s.state == "resume"
        s.state = "queued"
    prog.update()

    def task(s: Specimen) -> dict:
        return {"scan": str(s.scan.resolve()), "run_dir": str(s.run_dir), "method": method, "params": params,
                "scan_options": scan_options, "options": options, "threads": threads, "resume": s.resume}

    def started(s: Specimen) -> None:
        s.state, s.started = "running", time.time()

    def finished(s: Specimen, res: dict) -> None:
        if res.get("killed") and res.get("iteration") is None:  # no time to ask it; read its last checkpoint
            res = {**res, "iteration": checkpoint_iteration(s.run_dir)}
        _apply(s, res)

    left = run_pool(todo, task, on_start=started, on_result=finished, n_jobs=n_jobs, threads=threads, stop=stop,
                    tick=prog.update, poll_s=poll_s)
    for s in left:
        s.state = "not_started"
    prog.update()


def _run_submitit(todo, method, params, scan_options, options, cluster, slurm_opts, folder, prog: Progress,
                  wait: bool, poll_s: float, stop) -> list:
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
                _apply(s, res)
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
