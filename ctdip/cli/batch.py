"""`ctdip batch SCAN... --method M [--executor local|slurm] [--jobs N] [Slurm options]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

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
    number_or_word,
    parse_set,
)
from ctdip.core.validate import check_output_path


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch_cmd(
        scans: List[Path] = typer.Argument(..., help="Scan folders, one specimen each."),
        method: str = typer.Option(..., "--method", "-m", help="Reconstruction method (as for `ctdip reconstruct`)."),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o", help="Parent folder of the run folders <output>/<scan name>/ [default: runs/batch_<method>]."),
        set_: Optional[List[str]] = typer.Option(None, "--set", "--param", "-p", help="Any method param: KEY=VALUE (repeatable, YAML value)."),
        iterations: Optional[int] = ITERATIONS,
        lr: Optional[float] = LR,
        input_: Optional[str] = INPUT,
        network: Optional[str] = NETWORK,
        tv_weight: Optional[str] = TV_WEIGHT,
        weights: Optional[Path] = WEIGHTS,
        setup: Optional[str] = SETUP,
        angles: Optional[int] = ANGLES,
        size: Optional[int] = SIZE,
        slice_: Optional[str] = SLICE,
        mode: Optional[str] = MODE,
        bin_: Optional[int] = BIN,
        orbit: Optional[int] = ORBIT,
        seed: int = typer.Option(0, "--seed", help="Seed for every specimen."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:i]."),
        backend: str = typer.Option("auto", "--backend", metavar="NAME", help=BACKEND_HELP),
        holdout: float = typer.Option(0.0, "--holdout", help="Fraction of views held out for the residual."),
        stop_early: bool = typer.Option(False, "--stop-early", help="Stop each run at its early-stopping point."),
        time_limit: Optional[str] = typer.Option(None, "--time-limit", help="Per specimen: seconds or HH:MM:SS, then checkpoint (resumed next call)."),
        executor: str = typer.Option("local", "--executor", "-e", help="local (process pool) | slurm (submitit)."),
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Local: parallel specimens [default: cores // 4]."),
        partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition."),
        time_: Optional[str] = typer.Option(None, "--time", help="Slurm time limit per specimen (minutes or HH:MM:SS)."),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="Slurm GPUs per specimen."),
        mem: Optional[str] = typer.Option(None, "--mem", help="Slurm memory per specimen, e.g. 16G."),
        cpus: Optional[int] = typer.Option(None, "--cpus", help="Slurm CPUs per specimen (also its torch threads)."),
        array_parallelism: Optional[int] = typer.Option(None, "--array-parallelism", help="Slurm: max specimens at once."),
        account: Optional[str] = typer.Option(None, "--account", help="Slurm account."),
        qos: Optional[str] = typer.Option(None, "--qos", help="Slurm quality of service."),
        slurm_setup: Optional[List[str]] = typer.Option(None, "--slurm-setup", help="Shell line run before each job (repeatable), e.g. 'module load cuda'."),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Slurm: follow the jobs until they end (default) or return after submitting."),
        rerun: bool = typer.Option(False, "--rerun", help="Redo from scratch the specimens whose run folder has other settings (refused otherwise)."),
    ) -> None:
        """Reconstruct many specimens: one run folder each; finished ones with the same settings are
        skipped, interrupted ones resumed; a live progress table; exit code 1 listing the failures,
        130/143 after Ctrl-C/SIGTERM (running specimens checkpoint; the same command continues)."""
        from ctdip.errors import UserError
        from ctdip.workflows.batch import SlurmOptions, failure_lines, run_batch, signal_name, specimen_line
        from ctdip.workflows.evaluate import format_rows, rich_table

        if executor not in ("local", "slurm"):
            raise UserError(f"unknown executor '{executor}'; choose one of: local, slurm")
        out = check_output_path(output or Path("runs") / f"batch_{method}", "folder")
        scan_options = {"setup": setup, "angles": angles, "size": size, "slice": slice_, "mode": mode, "bin": bin_,
                        "orbit": orbit}
        options = {"seed": seed, "device": device, "backend": backend, "holdout": holdout, "stop_early": stop_early}
        if time_limit is not None:
            from ctdip.workflows.reconstruct import parse_time_limit

            options["time_limit"] = parse_time_limit(time_limit)
        params = {"iterations": iterations, "lr": lr, "input": input_, "network": network, "tv_weight": number_or_word(tv_weight),
                  "weights": None if weights is None else str(weights.resolve())}
        params = given(params)
        params.update(parse_set(set_))
        slurm = SlurmOptions(partition=partition, time=time_, gpus=gpus, mem=mem, cpus=cpus,
                             array_parallelism=array_parallelism, account=account, qos=qos,
                             setup=list(slurm_setup or []))
        res = run_batch(scans, method, out, params=params, scan_options=scan_options, options=options,
                        executor=executor, jobs=jobs, slurm=slurm, wait=wait, rerun=rerun)
        if res.signal is not None:
            lines = [f"{signal_name(res.signal)}: batch stopped; status in {out / 'batch_status.json'}"]
            lines += [f"  {specimen_line(s)}" for s in res.specimens]
            lines.append("run the same command again to continue (finished specimens are skipped, "
                         "interrupted ones resume from their checkpoint)")
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
            raise typer.Exit(128 + int(res.signal))
        if not wait:
            typer.echo(f"submitted {sum(1 for s in res.specimens if s.job_id)} specimen(s) to Slurm; "
                       f"logs in {out / 'slurm'}; run the same command again to collect and resume", err=True)
            return
        rows = [r for r in res.rows if "error" not in r]
        if rows:
            if sys.stdout.isatty():
                from rich.console import Console

                Console().print(rich_table(rows, title=f"{len(rows)} finished run(s) in {out}"))
            else:
                sys.stdout.write(format_rows(rows, "table"))
            typer.echo(f"wrote {out / 'batch_summary.csv'}, .md, .json", err=True)
        fails = failure_lines(res)
        if fails:
            sys.stderr.write(f"error: {len(fails)} of {len(res.specimens)} specimen(s) failed:\n")
            for line in fails:
                sys.stderr.write(f"  {line}\n")
            sys.stderr.flush()
            raise typer.Exit(1)
