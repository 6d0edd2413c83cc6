"""What a run folder's ``config.yaml`` restores: the settings of a new or resumed reconstruction,
and the :class:`~ctdip.core.problem.Problem` a run was computed on.

* :func:`start_settings` -- a new run: a setup preset's scan options and method parameters under
  the command's own options (``--setup NAME`` < ``--angles ...``, ``-n ...``).
* :func:`resume_settings` -- ``--resume RUN``: method, parameter overrides, seed, scan folder and
  options, backend, held-out views and early stopping as recorded; an option that would change one
  of them is refused (that is what makes a resumed run equal to an uninterrupted one).
* :class:`RunScan` / :func:`problem_from_run` -- the scan folder, scan options, backend and
  held-out fraction a run read (``ctdip spectrum`` analyses a run's network on the same operator).

Both settings functions return a :class:`RunSettings`, whose :meth:`RunSettings.kwargs` are the
arguments of :func:`ctdip.workflows.reconstruct.reconstruct`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ctdip.errors import UserError


def read_run_config(run_dir: str | Path) -> dict:
    """The ``config.yaml`` of the run folder ``run_dir`` (which must name its method and scan)."""
    from ctdip.core.io import read_yaml
    from ctdip.dip.runs import RunFolder

    run = RunFolder(run_dir)
    p = run.file("config.yaml")
    if not run.path.is_dir():
        raise UserError("run folder to resume not found", path=run.path)
    if not p.is_file():
        raise UserError("not a run folder (no config.yaml)", path=run.path)
    cfg = read_yaml(p)
    for key in ("method", "scan"):
        if key not in cfg:
            raise UserError(f"config.yaml has no '{key}'", path=p)
    return cfg


@dataclass
class RunScan:
    """How a run read its scan, from its config.yaml.

    ``backend`` is the operator backend the run used (``config.yaml: backend``, e.g. ``matrix``):
    what rebuilds that operator. ``backend_requested`` is what the command asked for (``auto``
    when nothing was given): a resumed run resolves it again, as its first start did.
    """

    folder: Path | None
    options: dict = field(default_factory=dict)
    backend: str | None = None
    backend_requested: str | None = None
    holdout: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict) -> "RunScan":
        sc = cfg.get("scan") if isinstance(cfg.get("scan"), dict) else {}
        return cls(folder=Path(sc["folder"]) if sc.get("folder") else None, options=dict(sc.get("options") or {}),
                   backend=cfg.get("backend"), backend_requested=cfg.get("backend_requested"),
                   holdout=float(cfg.get("holdout") or 0.0))

    def problem(self, device: str = "cpu", backend: str | None = None):
        """Read the scan with the recorded options and build its Problem (``backend`` None: the
        run's own)."""
        from ctdip.core.data.loader import load_scan
        from ctdip.core.problem import Problem

        scan = load_scan(self.folder, **self.options)
        return Problem.from_scan(scan, backend=backend or self.backend or "auto", device=device, holdout=self.holdout)


def run_scan(run_dir: str | Path, scan: str | Path | None = None, scan_options: dict | None = None) -> RunScan:
    """The :class:`RunScan` of the run folder ``run_dir``; ``scan`` replaces its scan folder and
    the non-None ``scan_options`` replace recorded ones. A folder without config.yaml needs ``scan``."""
    from ctdip.dip.runs import RunFolder

    run = RunFolder(run_dir)
    cfg = run.read_config() if run.file("config.yaml").exists() else {}
    rs = RunScan.from_config(cfg)
    if scan is not None:
        rs.folder = Path(scan)
    elif rs.folder is None:
        raise UserError("run config names no scan folder; give --scan", path=run.file("config.yaml"))
    rs.options.update({k: v for k, v in dict(scan_options or {}).items() if v is not None})
    return rs


def problem_from_run(run_dir: str | Path, scan: str | Path | None = None, scan_options: dict | None = None, *,
                     device: str = "cpu", backend: str | None = None):
    """The :class:`~ctdip.core.problem.Problem` of a run: its scan folder read with its scan
    options, on its backend, with its held-out views (arguments as :func:`run_scan`)."""
    return run_scan(run_dir, scan, scan_options).problem(device=device, backend=backend)


@dataclass
class RunSettings:
    """The settings of one reconstruction, as :func:`ctdip.workflows.reconstruct.reconstruct` takes them."""

    scan: Any
    method: str
    params: dict
    output: Path | None
    scan_options: dict
    seed: int = 0
    backend: str = "auto"
    holdout: float = 0.0
    stop_early: bool = False
    resume: bool = False
    config_extra: dict = field(default_factory=dict)  # recorded in config.yaml: setup, backend_requested

    def kwargs(self) -> dict:
        return {"scan": self.scan, "method": self.method, "params": self.params, "output": self.output,
                "scan_options": self.scan_options, "seed": self.seed, "backend": self.backend,
                "holdout": self.holdout, "stop_early": self.stop_early, "resume": self.resume,
                "config_extra": dict(self.config_extra)}


def start_settings(scan: str | Path | None, method: str | None = None, params: dict | None = None, *,
                   setup: str | None = None, scan_options: dict | None = None, output: str | Path | None = None,
                   seed: int | None = None, backend: str | None = None, holdout: float | None = None,
                   stop_early: bool = False) -> RunSettings:
    """A new run: the setup preset ``setup`` (scan options, method parameters, method) under the
    given ``scan_options``/``params``/``method``; the method defaults to ``fbp``."""
    from ctdip.core.data.loader import load_setup

    if scan is None:
        raise UserError("missing SCAN folder (or --resume RUN_DIR)")
    params, opts, extra = dict(params or {}), {}, {}
    if setup is not None:
        st = load_setup(setup)
        opts.update(st["scan"])
        params = {**st["params"], **params}
        method = method or st.get("method")
        extra["setup"] = st["name"]
    opts.update(scan_options or {})
    backend = backend or "auto"
    extra["backend_requested"] = backend
    return RunSettings(scan=scan, method=method or "fbp", params=params, output=None if output is None else Path(output),
                       scan_options=opts, seed=0 if seed is None else int(seed), backend=backend,
                       holdout=holdout or 0.0, stop_early=bool(stop_early), config_extra=extra)


def resume_settings(run_dir: str | Path, method: str | None = None, params: dict | None = None, *,
                    scan: str | Path | None = None, scan_options: dict | None = None,
                    output: str | Path | None = None, seed: int | None = None, backend: str | None = None,
                    holdout: float | None = None, stop_early: bool = False,
                    named_params: Iterable[str] = ()) -> RunSettings:
    """``--resume RUN``: the run's recorded settings; the given ones may only repeat them
    (:func:`refuse_changes`). ``scan`` may point to the scan folder's new place; ``named_params``
    are the parameters with an option of their own (named ``--lr`` rather than ``--set lr`` in errors)."""
    from ctdip.workflows.reconstruct import canonical_method

    cfg = read_run_config(run_dir)
    if output is not None and Path(output) != Path(run_dir):
        raise UserError("--resume continues RUN_DIR in place; do not give a different -o")
    method = method or cfg["method"]
    if canonical_method(method) != cfg["method"]:
        raise UserError(f"--method {method} does not match the run's method '{cfg['method']}'", path=run_dir)
    params, scan_options = dict(params or {}), dict(scan_options or {})
    refuse_changes(run_dir, cfg, params, scan_options, seed, named_params)
    rs = RunScan.from_config(cfg)
    if scan is None and rs.folder is None:
        raise UserError("run config names no scan folder; give SCAN", path=Path(run_dir) / "config.yaml")
    backend = backend or rs.backend_requested or "auto"
    return RunSettings(scan=scan if scan is not None else rs.folder, method=method,
                       params={**(cfg.get("overrides") or {}), **params}, output=Path(run_dir),
                       scan_options={**rs.options, **scan_options},
                       seed=seed if seed is not None else int(cfg.get("seed", 0)), backend=backend,
                       holdout=holdout if holdout is not None else rs.holdout,
                       stop_early=stop_early or bool(cfg.get("stop_early", False)), resume=True,
                       config_extra={"setup": cfg.get("setup"), "backend_requested": backend})


def refuse_changes(run: str | Path, cfg: dict, params: dict, scan_opts: dict, seed: int | None,
                   named_params: Iterable[str] = ()) -> None:
    """``--resume RUN`` continues RUN with the settings in its config.yaml. An option that would
    change one of them -- a method parameter (``-n``, ``--lr``, ``--set``...), a scan option or
    ``--seed`` -- is a UserError naming the first such option."""
    from ctdip.methods import get_method
    from ctdip.methods.params import current_name, recorded_params

    named = set(named_params)
    # compared under the parameters' current names (the run or the command may use old ones)
    recorded = recorded_params(cfg["method"], {**(cfg.get("overrides") or {}), **(cfg.get("params") or {})})
    rec_scan = (cfg.get("scan") or {}).get("options") or {}
    current = {k: current_name(k, get_method(cfg["method"]).param_aliases) for k in params}
    changes = [(f"--{k.replace('_', '-')}" if k in named else f"--set {k}", v, k, recorded[current[k]])
               for k, v in params.items() if current[k] in recorded and not _same(v, recorded[current[k]])]
    changes += [(f"--{k}", v, k, rec_scan.get(k)) for k, v in scan_opts.items() if not _same(v, rec_scan.get(k))]
    if seed is not None and int(seed) != int(cfg.get("seed", 0)):
        changes.append(("--seed", seed, "seed", cfg.get("seed", 0)))
    if changes:
        flag, new, key, old = changes[0]
        raise UserError(f"{flag} {new}: --resume continues the run with its recorded settings ({key} = {old}); "
                        "start a new run with -o to change them", path=run)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return str(a) == str(b)
