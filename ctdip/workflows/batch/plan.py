"""What a batch does before anything runs: one :class:`Specimen` per scan folder, classified
``new`` / ``resume`` / ``done`` (:func:`plan`), and the settings check (:func:`check_settings`): a
started or finished run is only reused when the settings its ``config.yaml`` records
(:func:`recorded_settings`) equal the requested ones (:func:`requested_settings`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ctdip.dip.runs import RunFolder
from ctdip.errors import UserError

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


def plan(scans: Sequence[str | Path], output: str | Path) -> list[Specimen]:
    """One :class:`Specimen` per scan folder, classified new / resume / done
    (:mod:`ctdip.workflows.batch`)."""
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
    return _yaml_plain({"method": name, "params": resolved, "scan": given_options(scan_options),
                        "seed": int(opts.get("seed", 0)), "holdout": float(opts.get("holdout", 0.0)),
                        "stop_early": bool(opts.get("stop_early", False))})


def recorded_settings(config: dict) -> dict:
    """The :func:`requested_settings` keys read from a run's ``config.yaml``."""
    from ctdip.methods.params import recorded_params  # old runs may record old parameter names

    method = config.get("method")
    return _yaml_plain({"method": method, "params": recorded_params(method, config.get("params") or {}),
                        "scan": given_options((config.get("scan") or {}).get("options")),
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


def remove_run(spec: Specimen) -> None:
    """Delete a run folder that ``--rerun`` redoes (only ctdip's run folders)."""
    import shutil

    if (spec.run_dir / "config.yaml").exists() or (spec.run_dir / "checkpoint.pt").exists():
        shutil.rmtree(spec.run_dir)
    spec.state = "new"


def given_options(d: dict | None) -> dict:
    """``d`` without its unset (None) entries."""
    return {k: v for k, v in (d or {}).items() if v is not None}


def apply_result(spec: Specimen, res: dict) -> None:
    spec.ended = time.time()
    if res.get("ok"):
        spec.state, spec.summary = "finished", res.get("summary", {})
    elif res.get("started") is False:
        spec.state, spec.started, spec.ended = "not_started", None, None
    else:
        spec.state = "interrupted" if res.get("interrupted") else "failed"
        spec.error = res.get("error") or "unknown error"
        spec.iteration = res.get("iteration")
