"""``ctdip reconstruct SCAN --method NAME``: one scan folder -> one run folder.

Exit codes: 0 ok, 2 user mistake, 3 time limit reached (checkpoint written), 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ctdip.cli._options import (
    ANGLES,
    BIN,
    INPUT,
    ITERATIONS,
    LR,
    MODE,
    NETWORK,
    ORBIT,
    SETUP,
    SIZE,
    SLICE,
    TV_WEIGHT,
    WEIGHTS,
    given,
    method_help,
    parse_set,
)
from ctdip.errors import UserError

# named options that map to method params of the same name (dashes -> underscores)
METHOD_OPTIONS = ("iterations", "lr", "input", "network", "tv_weight", "weights", "denoiser", "force",
                  "log_every", "checkpoint_every")


def register(app: typer.Typer) -> None:
    @app.command("reconstruct")
    def reconstruct_cmd(
        scan: Optional[Path] = typer.Argument(None, metavar="SCAN", help="Scan folder (ctdip or walnut layout). Not needed with --resume."),
        method: Optional[str] = typer.Option(None, "--method", "-m", metavar="NAME", help=method_help()),
        output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="RUN", help="Run folder (default runs/<time>_<method>_<scan>)."),
        setup: Optional[str] = SETUP,
        angles: Optional[int] = ANGLES,
        bin_: Optional[int] = BIN,
        slice_: Optional[str] = SLICE,
        mode: Optional[str] = MODE,
        size: Optional[int] = SIZE,
        orbit: Optional[int] = ORBIT,
        iterations: Optional[int] = ITERATIONS,
        lr: Optional[float] = LR,
        input_: Optional[str] = INPUT,
        network: Optional[str] = NETWORK,
        tv_weight: Optional[float] = TV_WEIGHT,
        weights: Optional[Path] = WEIGHTS,
        denoiser: Optional[str] = typer.Option(None, "--denoiser", metavar="NAME|FILE", help="Denoiser of admm/hqs/red: learned (shipped DRUNet), tv, bm3d or FILE."),
        force: Optional[bool] = typer.Option(None, "--force", help="Method param 'force' (e.g. accept mismatched weights)."),
        set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Any method param: KEY=VALUE (repeatable, YAML value)."),
        seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Random seed (default 0)."),
        device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE", help="auto, cpu or cuda[:i]."),
        backend: Optional[str] = typer.Option(None, "--backend", metavar="NAME", help="Operator backend: auto, matrix, torch, astra-cuda."),
        holdout: Optional[float] = typer.Option(None, "--holdout", metavar="FRACTION", help="Fraction of views held out (no-reference quality signal)."),
        stop_early: bool = typer.Option(False, "--stop-early", help="End DIP runs at the ES-WMV early-stopping point."),
        resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN", help="Continue the run folder RUN (needs nothing else)."),
        time_limit: Optional[str] = typer.Option(None, "--time-limit", metavar="TIME", help="Seconds or HH:MM:SS; exit 3 after a checkpoint."),
        log_every: Optional[int] = typer.Option(None, "--log-every", metavar="N", help="Metrics row every N iterations."),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", metavar="N", help="Checkpoint every N iterations."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
        json_out: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    ) -> None:
        """Reconstruct a scan folder into a run folder (recon.tif, metrics.csv, summary.json, previews)."""
        from ctdip.core.data.loader import load_setup
        from ctdip.workflows.reconstruct import reconstruct, resume_settings

        named = {"iterations": iterations, "lr": lr, "input": input_, "network": network, "tv_weight": tv_weight,
                 "weights": None if weights is None else str(weights), "denoiser": denoiser, "force": force,
                 "log_every": log_every, "checkpoint_every": checkpoint_every}
        params = given(named)
        params.update(parse_set(set_))
        scan_opts = given({"angles": angles, "bin": bin_, "slice": slice_, "mode": mode, "size": size,
                           "orbit": orbit})
        extra: dict = {}
        if resume is not None:
            cfg = resume_settings(resume)
            if output is not None and Path(output) != Path(resume):
                raise UserError("--resume continues RUN_DIR in place; do not give a different -o")
            method_ = method or cfg["method"]
            if canonical(method_) != cfg["method"]:
                raise UserError(f"--method {method_} does not match the run's method '{cfg['method']}'", path=resume)
            refuse_changes(resume, cfg, params, scan_opts, seed)
            params = {**(cfg.get("overrides") or {}), **params}
            opts = {**((cfg.get("scan") or {}).get("options") or {}), **scan_opts}
            scan_path = scan if scan is not None else Path(cfg["scan"]["folder"])
            seed_ = seed if seed is not None else int(cfg.get("seed", 0))
            backend_ = backend or cfg.get("backend_requested") or "auto"
            holdout_ = holdout if holdout is not None else float(cfg.get("holdout", 0.0))
            stop_early_ = stop_early or bool(cfg.get("stop_early", False))
            extra["setup"] = cfg.get("setup")
            out = resume
        else:
            if scan is None:
                raise UserError("missing SCAN folder (or --resume RUN_DIR)")
            opts = {}
            method_ = method
            if setup is not None:
                st = load_setup(setup)
                opts.update(st["scan"])
                params = {**st["params"], **params}
                method_ = method_ or st.get("method")
                extra["setup"] = st["name"]
            opts.update(scan_opts)
            method_ = method_ or "fbp"
            scan_path, seed_, backend_ = scan, (0 if seed is None else seed), backend or "auto"
            holdout_, stop_early_, out = (holdout or 0.0), stop_early, output
        extra["backend_requested"] = backend_
        extra["command"] = "ctdip reconstruct"
        try:
            reconstruct(scan_path, method_, params, out, seed=seed_, device=device or "auto", backend=backend_,
                        holdout=holdout_, resume=resume is not None, time_limit=time_limit, stop_early=stop_early_,
                        quiet=quiet, json_out=json_out, config_extra=extra, scan_options=opts)
        except KeyboardInterrupt as e:
            interrupted(e, out)


def refuse_changes(run: Path, cfg: dict, params: dict, scan_opts: dict, seed: int | None) -> None:
    """``--resume RUN`` continues RUN with the settings in its config.yaml (that is what makes the
    result equal to an uninterrupted run). An option that would change one of them -- a method
    parameter (``-n``, ``--lr``, ``--set``...), a scan option or ``--seed`` -- is a UserError."""
    from ctdip.methods import get_method
    from ctdip.methods.params import current_name, recorded_params

    # compared under the parameters' current names (the run or the command may use old ones)
    recorded = recorded_params(cfg["method"], {**(cfg.get("overrides") or {}), **(cfg.get("params") or {})})
    rec_scan = (cfg.get("scan") or {}).get("options") or {}
    current = {k: current_name(k, get_method(cfg["method"]).param_aliases) for k in params}
    changes = [(f"--{k.replace('_', '-')}" if k in METHOD_OPTIONS else f"--set {k}", v, k, recorded[current[k]])
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


def interrupted(e: KeyboardInterrupt, out: Optional[Path]) -> None:
    """SIGINT/SIGTERM: one line naming the checkpoint and the command that continues, exit 130."""
    import sys

    it, run = getattr(e, "iteration", None), getattr(e, "run_path", None) or out
    resume = f"continue with ctdip reconstruct --resume {run}" if run is not None else "rerun the command"
    if it is not None:
        sys.stderr.write(f"interrupted at iteration {it}, checkpoint written; {resume}\n")
    else:  # classical methods keep no checkpoint; --resume restarts them
        sys.stderr.write(f"interrupted (this method keeps no checkpoint); {resume} to start it again\n")
    sys.stderr.flush()
    raise typer.Exit(130)


def canonical(name: str) -> str:
    from ctdip.workflows.reconstruct import canonical_method

    return canonical_method(name)
