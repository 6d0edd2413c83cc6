"""The reconstruction driver shared by ``ctdip reconstruct`` and ``ctdip batch``.

``reconstruct(scan, method, params)``:

1. resolves the method class (``ctdip.methods.get_method``) and its parameters:
   ``presets/methods/<name>.yaml`` (``params:``, with a ``sources:`` note per default) < ``params``
   overrides; the method object is built (and refuses unknown parameters) before anything is
   written;
2. builds the :class:`~ctdip.core.problem.Problem` (operator, scaled data, FBP/FDK, reference);
3. creates the run folder (default ``runs/<timestamp>_<method>_<dataset>``; with ``resume`` the
   existing folder, whose ``config.yaml`` restores method, parameters, seed and scan options via
   :func:`ctdip.workflows.resume.resume_settings`) and writes ``config.yaml``;
4. calls ``method.run(problem, RunContext(...))`` (a DIP method seeds torch/numpy/random); with
   ``ensemble: N`` > 1, N members of seeds ``seed`` ... ``seed + N - 1`` into ``members/seed<S>/``
   and their mean (:mod:`ctdip.workflows.ensemble`);
5. writes ``recon.tif`` (``problem.unscale``; voxel size in the ImageJ metadata; ASTRA's (z, y, x)
   volume orientation), ``recon_<name>.tif`` for each of ``result.extras`` (``best`` only with a
   reference), ``summary.json``, ``preview.png`` and ``psnr.png``.

It prints nothing: what happens is told to a :class:`Reporter` (the scan's warnings, each
iteration, the end) and returned as a :class:`RunSummary`. The default reporter is silent and
keeps the methods' own notes quiet; ``ctdip reconstruct`` passes one that draws the progress bar
and prints the summary (``ctdip.cli.reconstruct``).

:class:`~ctdip.errors.TimeLimitReached` and ``KeyboardInterrupt`` raised by a method propagate
(the method has written its checkpoint; the CLI exits 3 / 130).
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctdip.core.device import resolve_device
from ctdip.core.validate import FRACTION
from ctdip.errors import UserError


@dataclass
class RunSummary:
    """What a finished run returns: its folder, the summary.json content and the config."""

    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    already_finished: bool = False  # ``resume`` of a finished run: nothing was recomputed
    warnings: list[str] = field(default_factory=list)  # the scan's warnings (also in config.yaml)

    @property
    def recon_path(self) -> Path:
        return self.path / "recon.tif"

    @property
    def preview_path(self) -> Path:
        return self.path / "preview.png"


def canonical_method(name: str) -> str:
    from ctdip.methods import ALIASES

    return ALIASES.get(name, name)


#: what a parameter naming a file ends with: a network YAML, a weights file (``network``,
#: ``weights``, ``denoiser``)
FILE_SUFFIXES = (".yaml", ".yml", ".pt", ".pth")


def absolute_file_params(params: dict | None) -> dict | None:
    """``params`` with every value that names an existing network YAML or weights file made
    absolute, so that the run's config.yaml finds it again when ``--resume`` or ``ctdip batch``
    runs from another directory. Other values (preset names like ``light``) are left as given."""
    if not params:
        return params
    out = dict(params)
    for k, v in out.items():
        if isinstance(v, (str, Path)) and str(v).lower().endswith(FILE_SUFFIXES) and Path(v).is_file():
            out[k] = str(Path(v).resolve())
    return out


def resolve_method(method: str, params: dict | None = None):
    """``(name, cls, preset, overrides, method object, resolved params)`` for ``method`` with
    ``params`` over its preset: the method object resolves them (:func:`ctdip.methods.params.resolve`:
    unknown or invalid parameters refused); ``overrides`` are ``params`` under their current names,
    None values dropped. Shared by the driver and ``ctdip batch``'s settings comparison."""
    from ctdip.methods import get_method
    from ctdip.methods.params import canonical, load_preset

    name = canonical_method(method)
    cls = get_method(method)
    params = absolute_file_params(params)
    m = cls(**(params or {}))
    overrides = {k: v for k, v in canonical(params or {}, cls.param_aliases, name)[0].items() if v is not None}
    return name, cls, load_preset(name), overrides, m, dict(m.params)


def parse_time_limit(value: str | float | int | None) -> float | None:
    """Seconds from ``3600``, ``90.5``, ``MM:SS`` or ``HH:MM:SS``."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        s = float(value)
    else:
        parts = str(value).strip().split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise UserError(f"--time-limit must be seconds or HH:MM:SS, got '{value}'") from None
        if len(nums) > 3:
            raise UserError(f"--time-limit must be seconds or HH:MM:SS, got '{value}'")
        s = 0.0
        for n in nums:
            s = s * 60 + n
    if s <= 0:
        raise UserError(f"--time-limit must be positive, got '{value}'")
    return s


def versions() -> dict:
    import torch

    import ctdip

    out = {"ctdip": str(ctdip.__version__), "torch": str(torch.__version__), "numpy": str(np.__version__),
           "python": platform.python_version()}
    try:
        import astra

        out["astra"] = str(astra.__version__)
    except Exception:  # pragma: no cover - astra is a dependency, but keep configs writable
        out["astra"] = None
    return out


def _as_np(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


#: keys of a method's own summary that would name a second "peak"/"final" (the engine's peak over
#: every iteration, the PSNR of its final image); summary.json keeps only :func:`build_summary`'s
_SHADOWED = ("peak_psnr", "peak_iter", "final_psnr", "final_ssim", "returned_psnr", "es_psnr", "ema_psnr")


def build_summary(problem, result, rows: list[dict], wall_s: float, method: str, run_path: Path,
                  extras_np: dict[str, np.ndarray], recon_np: np.ndarray | None = None) -> dict:
    """summary.json, with the numbers of :func:`ctdip.core.metrics.curve_numbers` (one meaning each):

    * ``returned``: PSNR/SSIM of ``recon.tif`` (``recon_np``, as written) against the reference;
    * ``final``: the last logged iterate ``{iter, psnr, ssim}`` (a method that logs no curve has
      one iterate, the returned image);
    * ``peak``: the maximum PSNR over the logged iterates, with its iteration (and SSIM if logged);
    * ``early_stop`` (the ES-WMV pick ``recon_es.tif``), ``fbp`` (the Ram-Lak FBP/FDK input),
      ``steady_psnr``/``rise_time`` (EDIP paper), wall time and files.
    """
    from ctdip.core import metrics

    s: dict[str, Any] = {"method": method, "run": str(run_path), "wall_time_s": round(wall_s, 3)}
    rs = {k: v for k, v in dict(result.summary or {}).items() if k not in _SHADOWED}
    s["iterations"] = rs.get("iterations", rows[-1]["iter"] if rows else None)
    if problem.reference is not None:
        if recon_np is not None:
            ref = _as_np(problem.unscale(problem.reference)).reshape(recon_np.shape)
            rec = recon_np
        else:
            ref, rec = problem.reference, result.recon
        s["returned"] = {"psnr": metrics.psnr(rec, ref), "ssim": metrics.ssim(rec, ref)}
        cn = metrics.curve_numbers(rows)
        s["final"] = cn.get("final") or {"iter": s["iterations"], **s["returned"]}
        if "peak" in cn:
            s["peak"] = cn["peak"]
        for k in ("steady_psnr", "rise_time"):
            if k in cn:
                s[k] = cn[k]
        if "es" in result.extras:
            es = result.extras["es"]
            s["early_stop"] = {"iter": (result.summary or {}).get("es_iter"), "psnr": metrics.psnr(es, problem.reference),
                               "ssim": metrics.ssim(es, problem.reference)}
        fb = problem.x_init
        if fb is not None:
            s["fbp"] = {"psnr": metrics.psnr(fb, problem.reference), "ssim": metrics.ssim(fb, problem.reference)}
    elif "es" in result.extras:
        s["early_stop"] = {"iter": rs.get("es_iter")}
    s["files"] = ["recon.tif"] + [f"recon_{k}.tif" for k in extras_np]
    s["result"] = rs
    return s


def _check_run_folder(run_path: Path, resume: bool) -> None:
    """The run folder can be written (``ctdip.core.validate.check_output_path``): a new or empty folder,
    or with ``resume`` an existing run folder."""
    from ctdip.core.validate import check_output_path

    check_output_path(run_path, "folder")
    if resume:
        if not (run_path / "config.yaml").is_file():
            raise UserError("cannot resume: not a run folder (no config.yaml)", path=run_path)
    elif run_path.exists() and any(run_path.iterdir()):
        raise UserError("run folder exists and is not empty (choose another -o, or --resume it)", path=run_path)


class _FailedStartCleanup:
    """Remove what a failed start wrote: on an error (not an interrupt or the time limit) of a new
    run, the run folder this process created (or filled, when it was empty) is removed unless it
    holds a checkpoint, so the corrected command can use the same ``-o``. Stale temporaries of
    killed atomic writes are removed on entry."""

    path: Path | None = None

    def arm(self, run_path: Path, resume: bool) -> None:
        self.path = Path(run_path)
        self.resume = resume
        top = self.path
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.created_top = None if self.path.exists() else top  # highest folder this call creates
        self.was_empty = self.path.is_dir() and not any(self.path.iterdir())
        from ctdip.dip.runs import RunFolder

        RunFolder(self.path).clean_stale_temporaries()

    def __enter__(self) -> "_FailedStartCleanup":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        import shutil

        from ctdip.errors import TimeLimitReached

        if exc_type is None or self.path is None or self.resume or (self.path / "checkpoint.pt").exists():
            return False
        if issubclass(exc_type, (KeyboardInterrupt, TimeLimitReached, SystemExit)):
            return False
        if self.created_top is not None and self.created_top.exists():
            shutil.rmtree(self.created_top, ignore_errors=True)
        elif self.was_empty and self.path.is_dir():
            for p in self.path.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        return False


class Reporter(Protocol):
    """What :func:`reconstruct` tells its caller while it runs (``ctdip reconstruct`` prints
    through one; :class:`SilentReporter` is the default). Every hook defaults to doing nothing.

    Order: ``on_warning`` for each of the scan's warnings (after the checks, before the run folder
    is written), ``on_start`` before the first iteration, ``on_progress`` after iterations,
    ``on_stop`` when the method returns or raises (always, after ``on_start``), ``on_finish`` with
    the result once the files are written (also for ``resume`` of a finished run, without the others).
    """

    #: let the methods write their own notes and warnings to stderr (``RunContext.quiet = not verbose``)
    verbose: bool = False

    def on_warning(self, message: str) -> None:
        """A problem with the input that does not stop the run (one line, no ``warning:`` prefix)."""

    def on_start(self, method: str, run_path: Path) -> None:
        """The method ``method`` starts iterating into ``run_path``."""

    def on_progress(self, iteration: int, total: int, metrics: dict) -> None:
        """Iteration ``iteration`` of ``total`` done; ``metrics`` is its metrics row (may be empty)."""

    def on_stop(self) -> None:
        """The method returned or raised."""

    def on_finish(self, result: RunSummary) -> None:
        """The run is complete: ``result`` is what :func:`reconstruct` returns."""


class SilentReporter(Reporter):
    """Tells nothing to anyone, and keeps the methods' own notes quiet."""


class StderrWarnings(SilentReporter):
    """Silent but for the scan's warnings, one ``warning: ...`` line each on stderr (what a
    ``ctdip batch`` worker shows)."""

    def on_warning(self, message: str) -> None:
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()


def reconstruct(*args, **kwargs) -> RunSummary:
    """Run ``method`` on ``scan`` (a :class:`~ctdip.core.data.Scan` or a scan folder, read with
    ``scan_options``) into a run folder; returns its :class:`RunSummary` (module docstring).
    Arguments: those of :func:`_reconstruct`. A start that fails leaves no run folder behind."""
    guard = _FailedStartCleanup()
    with guard:
        return _reconstruct(*args, _guard=guard, **kwargs)


def _reconstruct(scan, method: str, params: dict | None = None, output: str | Path | None = None, *,
                seed: int = 0, device: str = "auto", backend: str = "auto", holdout: float = 0.0,
                resume: bool = False, time_limit: float | str | None = None, stop_early: bool = False,
                reporter: Reporter | None = None, config_extra: dict | None = None,
                scan_options: dict | None = None, runs_root: str | Path = "runs",
                _guard: "_FailedStartCleanup | None" = None) -> RunSummary:
    """Run ``method`` on ``scan`` (a :class:`~ctdip.core.data.Scan` or a scan folder, read with
    ``scan_options``) into a run folder; returns its :class:`RunSummary` (module docstring).
    ``reporter`` (default: :class:`SilentReporter`) is told what happens."""

    from ctdip.core.data import Scan
    from ctdip.core.problem import Problem
    from ctdip.dip.context import RunContext
    from ctdip.dip.runs import RunFolder, default_run_dir

    t_start = time.perf_counter()
    reporter = reporter or SilentReporter()
    name, cls, preset, overrides, m, resolved = resolve_method(method, params)
    sources = {**preset["sources"], **dict(getattr(m, "sources", {}) or {})}
    holdout = FRACTION(holdout, "--holdout")
    limit_s = parse_time_limit(time_limit)
    dev = resolve_device(device)

    if output is None and resume:
        raise UserError("--resume needs the run folder")
    if resume and RunFolder(output).is_finished():
        RunFolder(output).clean_stale_temporaries()  # e.g. a checkpoint write killed after the end
        out = finished_run(Path(output))
        reporter.on_finish(out)
        return out
    if output is not None:
        _check_run_folder(Path(output), resume)
    if not isinstance(scan, Scan):
        from ctdip.core.data.loader import load_scan

        scan = load_scan(scan, **(scan_options or {}), print_warnings=False)
    dataset = scan.source.resolve().name if scan.source is not None else "scan"
    if not holdout and str(m.params.get("output")).startswith("holdout"):
        # the stopping point needs held-out views: holdout_fraction of them, and at least 3
        holdout = max(float(m.params["holdout_fraction"]), min(3.0 / scan.geometry.n_views, 0.5))

    run_path = Path(output) if output is not None else default_run_dir(name, dataset, runs_root)
    run = RunFolder(run_path)
    _check_run_folder(run_path, resume)

    problem = Problem.from_scan(scan, backend=backend, device=dev, holdout=float(holdout))
    geom = problem.A.geometry
    m.preflight(problem)  # network, weights, denoiser: fail before the run folder exists
    warnings = list((scan.info or {}).get("warnings", []))
    for w in warnings:  # after the checks: a failed start prints one line
        reporter.on_warning(w)

    if _guard is not None:
        _guard.arm(run_path, resume)  # from here on, a failed start removes what it wrote
    run.create(exist_ok=True)
    config: dict[str, Any] = {
        "method": name, "method_kind": getattr(cls, "kind", "dip"),
        "preset": {"path": preset["path"], "params": preset["params"], "sources": sources},
        "overrides": overrides, "params": dict(m.params),  # after preflight's 3D defaults
        "seed": int(seed), "device": dev, "backend": problem.info.get("backend", backend),
        "holdout": float(holdout), "stop_early": bool(stop_early), "time_limit_s": limit_s,
        "scan": {"folder": str(Path(scan.source).resolve()) if scan.source is not None else None, "layout": scan.layout,
                 "options": dict((scan.info or {}).get("options", {}) if scan_options is None else scan_options),
                 "info": {k: v for k, v in (scan.info or {}).items() if k not in ("views",)}},
        "geometry": {"hash": geom.hash(), "kind": geom.kind, "views": geom.n_views,
                     "detector": list(geom.det_shape)},
        "volume": {"hash": problem.volume.hash(), "shape": list(problem.volume.shape),
                   "voxel_mm": list(problem.volume.voxel_mm), "center_mm": list(problem.volume.center_mm)},
        "scalings": problem.scalings(), "versions": versions(),
        **(config_extra or {}),
    }
    if resume:
        old = run.read_config()
        config["resumed"] = int(old.get("resumed", 0)) + 1
        if getattr(cls, "kind", "dip") == "classical":
            run.write_metrics([])  # classical methods rerun from scratch
    run.write_config(config)

    reporter.on_start(name, run_path)
    try:
        ctx = RunContext(run=run, seed=int(seed), resume=bool(resume), quiet=not reporter.verbose,
                         progress=reporter.on_progress, time_limit_s=limit_s, stop_early=bool(stop_early))
        members = int(m.params.get("ensemble", 1))
        if members > 1:  # N seeds into RUN/members/seed<S>, their mean (ctdip.workflows.ensemble)
            from functools import partial

            from ctdip.workflows.ensemble import run_ensemble

            result = run_ensemble(lambda: cls(**{**(params or {}), "ensemble": 1}), members, problem, ctx, config,
                                  write_member=partial(write_outputs, name=name, dataset=dataset))
        else:
            result = m.run(problem, ctx)  # a DIP method seeds the generators (dip.context.seed_everything)
    finally:
        reporter.on_stop()

    summary = write_outputs(problem, result, run, time.perf_counter() - t_start, name, dataset)
    out = RunSummary(path=run_path, summary=summary, config=config, warnings=warnings)
    reporter.on_finish(out)
    return out


def write_outputs(problem, result, run, wall_s: float, name: str, dataset: str) -> dict:
    """recon.tif, recon_<extra>.tif, summary.json, preview.png and psnr.png of a finished run
    (module docstring, step 5); returns the summary."""
    run_path = run.path
    geom = problem.A.geometry
    vox = problem.volume.voxel_mm
    recon_np = _as_np(problem.unscale(result.recon)).reshape(problem.volume.shape)
    run.write_volume("recon.tif", recon_np, vox)
    extras_np: dict[str, np.ndarray] = {}
    for k, t in (result.extras or {}).items():
        if k == "best" and problem.reference is None:
            continue
        if not hasattr(t, "shape") or int(np.prod(t.shape)) != int(np.prod(problem.volume.shape)):
            continue
        extras_np[k] = _as_np(problem.unscale(t)).reshape(problem.volume.shape)
        run.write_volume(f"recon_{k}.tif", extras_np[k], vox)
    rows = run.read_metrics() or list(result.history or [])
    summary = build_summary(problem, result, rows, wall_s, name, run_path, extras_np, recon_np)
    summary["dataset"] = dataset
    run.write_summary(summary)

    from ctdip.workflows import plots

    ref_np = None if problem.reference is None else _as_np(problem.unscale(problem.reference))
    init_np = None if problem.x_init is None else _as_np(problem.unscale(problem.x_init))
    fin = summary.get("returned", {})
    ens = (result.summary or {}).get("ensemble")
    label = f"{name} (mean of {ens['n']} seeds)" if ens else name
    plots.preview(run.file("preview.png"), recon_np, ref_np, init_np,
                  title=f"{label} on {dataset} ({problem.A.geometry.kind}, {geom.n_views} views)",
                  voxel_mm=float(vox[2]), psnr=fin.get("psnr"), ssim=fin.get("ssim"), spread=extras_np.get("std"))
    marks = {}
    if "peak" in summary:
        marks["peak"] = (summary["peak"]["iter"], summary["peak"]["psnr"])
    if "early_stop" in summary and summary["early_stop"].get("psnr") is not None:
        marks["early stop"] = (summary["early_stop"]["iter"], summary["early_stop"]["psnr"])
    plots.psnr_curve(run.file("psnr.png"), rows, title=f"{name} on {dataset}", marks=marks)
    return summary


def finished_run(path: Path) -> RunSummary:
    """``--resume`` of a run that already finished: nothing is recomputed."""
    from ctdip.dip.runs import RunFolder

    run = RunFolder(path)
    return RunSummary(path=path, summary=run.read_summary(), config=run.read_config(), already_finished=True)
