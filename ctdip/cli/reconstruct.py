"""``ctdip reconstruct SCAN --method NAME``: one scan folder -> one run folder.

Exit codes: 0 ok, 2 user mistake, 3 time limit reached (checkpoint written), 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from ctdip.cli._options import (
    ANGLES,
    BACKEND_HELP,
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
    number_or_word,
    parse_set,
)
from ctdip.core.progress import ProgressBar

if TYPE_CHECKING:
    from ctdip.workflows.reconstruct import RunSummary


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
        tv_weight: Optional[str] = TV_WEIGHT,
        weights: Optional[Path] = WEIGHTS,
        denoiser: Optional[str] = typer.Option(None, "--denoiser", metavar="NAME|FILE", help="Denoiser of admm/hqs/red: learned (shipped DRUNet), tv, bm3d or FILE."),
        force: Optional[bool] = typer.Option(None, "--force", help="Method param 'force' (e.g. accept mismatched weights)."),
        set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Any method param: KEY=VALUE (repeatable, YAML value)."),
        seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Random seed (default 0)."),
        device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE", help="auto, cpu or cuda[:i]."),
        backend: Optional[str] = typer.Option(None, "--backend", metavar="NAME", help=BACKEND_HELP),
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
        from ctdip.workflows.reconstruct import reconstruct
        from ctdip.workflows.resume import resume_settings, start_settings

        named = {"iterations": iterations, "lr": lr, "input": input_, "network": network, "tv_weight": number_or_word(tv_weight),
                 "weights": None if weights is None else str(weights), "denoiser": denoiser, "force": force,
                 "log_every": log_every, "checkpoint_every": checkpoint_every}
        params = given(named)
        params.update(parse_set(set_))
        scan_opts = given({"angles": angles, "bin": bin_, "slice": slice_, "mode": mode, "size": size,
                           "orbit": orbit})
        choice = dict(method=method, params=params, scan_options=scan_opts, output=output, seed=seed,
                      backend=backend, holdout=holdout, stop_early=stop_early)
        if resume is not None:
            settings = resume_settings(resume, scan=scan, named_params=named, **choice)
        else:
            settings = start_settings(scan, setup=setup, **choice)
        kw = settings.kwargs()
        kw["config_extra"]["command"] = "ctdip reconstruct"
        try:
            reconstruct(**kw, device=device or "auto", time_limit=time_limit,
                        reporter=ConsoleReporter(quiet=quiet, json_out=json_out))
        except KeyboardInterrupt as e:
            interrupted(e, settings.output)


class ConsoleReporter:
    """What ``ctdip reconstruct`` shows (a :class:`ctdip.workflows.reconstruct.Reporter`): the
    scan's warnings (always), a progress bar on a terminal (iterations, ETA, loss, PSNR; not with
    ``--quiet``/``--json``), then the summary on stdout, or summary.json with ``--json``, or
    nothing with ``--quiet``; the methods' own notes unless ``--quiet``."""

    def __init__(self, quiet: bool = False, json_out: bool = False):
        self.quiet, self.json_out = quiet, json_out
        self.verbose = not quiet
        self.bar: ProgressBar | None = None

    def on_warning(self, message: str) -> None:
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()

    def on_start(self, method: str, run_path: Path) -> None:
        self.bar = ProgressBar(method, quiet=self.quiet or self.json_out, fields={"info": ""})
        self.bar.__enter__()

    def on_progress(self, iteration: int, total: int, metrics: dict) -> None:
        if self.bar is None or not self.bar.shown:
            return
        info = [f"member {metrics['member']}"] if metrics.get("member") else []  # an ensemble's member k/N
        if isinstance(metrics.get("loss"), (int, float)):
            info.append(f"loss {metrics['loss']:.3e}")
        if isinstance(metrics.get("psnr"), (int, float)):
            info.append(f"PSNR {metrics['psnr']:.2f} dB")
        self.bar.update(iteration, total, info="  ".join(info))

    def on_stop(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_finish(self, result: RunSummary) -> None:
        from ctdip.dip.runs import RunFolder

        run = RunFolder(result.path)
        if self.json_out:
            sys.stdout.write(json.dumps(run.read_summary(), indent=2) + "\n")
            sys.stdout.flush()
        elif self.quiet:
            return
        elif result.already_finished:
            sys.stderr.write(f"note: {result.path} is finished ({result.summary.get('iterations')} iteration(s)); "
                             f"nothing to resume. Its numbers: {run.file('summary.json')}\n")
            sys.stderr.flush()
        else:
            print_summary(result)


def print_summary(rs: RunSummary) -> None:
    """A short rich summary on stdout (plain text when stdout is not a terminal)."""
    from rich.console import Console

    s = rs.summary
    con = Console(highlight=False)
    ens = (s.get("result") or {}).get("ensemble")
    its = f"{ens['n']} x {s.get('iterations')}" if ens else s.get("iterations")
    line = f"[bold]{s['method']}[/bold] on {s.get('dataset', '')}: {its} iteration(s) in {s['wall_time_s']:.1f} s"
    con.print(line)
    for line in number_lines(s):
        con.print("  " + line)
    result = s.get("result") or {}
    if result.get("tv_weight_choice") or result.get("sigma_choice"):
        from ctdip.methods.selection import choice_text, sigma_text

        if result.get("tv_weight_choice") and result.get("tv_weight_choice") != result.get("sigma_choice"):
            con.print(f"  choice: {choice_text(result['tv_weight_choice'])}")
        if result.get("sigma_choice"):
            con.print(f"  choice: {sigma_text(result['sigma_choice'])}")
    guard = result.get("divergence_guard")
    if guard and guard.get("used"):
        con.print(f"  choice: the data residual grew from {guard['min_residual']:.3g} (iteration {guard['min_iter']}) "
                  f"to {guard['final_residual']:.3g} (> {guard['factor']:g}x): returned the candidate of "
                  f"iteration {guard['min_iter']} (divergence guard)")
    disc = result.get("discrepancy_stop")
    if disc:
        level = f"{disc['tau']:g} x {disc['noise_level2']:.3g} (squared noise level of the held-out-view CV)"
        con.print(f"  choice: stopped at iteration {disc['stopped_at']}: data fit {disc['data_fit']:.3g} < {level}"
                  if disc["stopped_at"] is not None else
                  f"  choice: ran every iteration: the data fit stayed above {level} (discrepancy stop)")
    post = result.get("post_denoise")
    if post:
        con.print(f"  choice: returned image denoised once more at sigma {post['sigma']:.3g} "
                  f"= {post['factor']:g} x the noise level (post_denoise)")
    stop = result.get("holdout_stop")
    output = (result.get("params") or {}).get("output")
    if stop and output in ("holdout", "holdout-ema"):
        ema = output == "holdout-ema"
        it, r = (stop["ema_iter"], stop["ema_holdout_residual"]) if ema else (stop["iter"], stop["holdout_residual"])
        if it is not None:
            con.print(f"  choice: returned the {'output EMA' if ema else 'iterate'} at iteration {it} of "
                      f"{s.get('iterations')} (least held-out residual {r:.3g} on {stop['held_out_views']} "
                      f"held-out views; {stop['fitted_views']} fitted)")
    con.print(f"  recon:   {rs.recon_path}")
    con.print(f"  preview: {rs.preview_path}")


def number_lines(s: dict) -> list[str]:
    """The summary's numbers as printed (same names as summary.json and ``ctdip evaluate``)."""
    out: list[str] = []
    if "returned" not in s:
        return out
    r = s["returned"]
    out.append(f"returned  PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  (recon.tif)")
    ens = (s.get("result") or {}).get("ensemble")
    if ens:  # the mean of N seeds' runs: their own returned images, no single curve
        psnrs = ", ".join(f"{m['returned']['psnr']:.2f}" for m in ens["members"] if "returned" in m)
        seeds = ", ".join(str(m["seed"]) for m in ens["members"])
        out.append(f"members   PSNR {psnrs} dB  (seeds {seeds}; mean = recon.tif, spread = recon_std.tif)")
    elif (s.get("iterations") or 1) > 1:
        f = s["final"]
        ssim = f"  SSIM {f['ssim']:.4f}" if f.get("ssim") is not None else ""
        out.append(f"final     PSNR {f['psnr']:.2f} dB{ssim}  (last logged iterate, iteration {f['iter']})")
        if "peak" in s:
            out.append(f"peak      PSNR {s['peak']['psnr']:.2f} dB at iteration {s['peak']['iter']}  (best logged iterate)")
    if s.get("early_stop", {}).get("psnr") is not None:
        es = s["early_stop"]
        out.append(f"early stop PSNR {es['psnr']:.2f} dB at iteration {es['iter']}  (recon_es.tif)")
    if "fbp" in s:
        out.append(f"(initial Ram-Lak FBP/FDK: PSNR {s['fbp']['psnr']:.2f} dB)")
    return out


def interrupted(e: KeyboardInterrupt, out: Optional[Path]) -> None:
    """SIGINT/SIGTERM: one line naming the checkpoint and the command that continues, exit 130."""
    it, run = getattr(e, "iteration", None), getattr(e, "run_path", None) or out
    resume = f"continue with ctdip reconstruct --resume {run}" if run is not None else "rerun the command"
    if it is not None:
        sys.stderr.write(f"interrupted at iteration {it}, checkpoint written; {resume}\n")
    else:  # classical methods keep no checkpoint; --resume restarts them
        sys.stderr.write(f"interrupted (this method keeps no checkpoint); {resume} to start it again\n")
    sys.stderr.flush()
    raise typer.Exit(130)

