"""`ctdip evaluate RUN... [--reference REF] [--mask circle] [--format table|csv|md|json]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        runs: List[Path] = typer.Argument(..., help="Run folders and/or volumes (.tif, .tiff, .npy) to compare."),
        reference: Optional[Path] = typer.Option(
            None, "--reference", "-r",
            help="Ground truth: a volume file or a scan folder with reference.tif. "
                 "Default: each run's own scan reference, when there is one."),
        mask: str = typer.Option("none", "--mask", help="Region for PSNR/SSIM: none | circle (inscribed disc)."),
        fmt: str = typer.Option("table", "--format", "-f", help="Printed table: table | csv | md | json."),
        output: Optional[Path] = typer.Option(
            Path("evaluation"), "--output", "-o",
            help="Folder for evaluation.{csv,md,json}, psnr_curves.png and montage.png."),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PSNR-curve and montage PNGs."),
    ) -> None:
        """One row per run: PSNR/SSIM, peak / early-stop / final PSNR, rise time, steady PSNR,
        held-out residual and wall time; plus PSNR curves and a reconstruction/error montage."""
        from ctdip.errors import UserError
        from ctdip.workflows.evaluate import (
            evaluate,
            format_rows,
            plot_montage,
            plot_psnr_curves,
            rich_table,
            write_tables,
        )

        if fmt not in ("table", "csv", "md", "json"):
            raise UserError(f"unknown format '{fmt}'; choose one of: table, csv, md, json")
        if output is not None:
            from ctdip.core.validate import check_output_path

            check_output_path(output, "folder")
        def skip(p: Path) -> None:
            typer.echo(f"note: skipping unfinished run {p} (no recon.tif yet)", err=True)

        rows, entries, refs = evaluate(runs, reference=reference, mask=mask, on_unfinished=skip if len(runs) > 1 else None)
        if fmt == "table" and sys.stdout.isatty():
            from rich.console import Console

            Console().print(rich_table(rows))
        else:
            sys.stdout.write(format_rows(rows, fmt))
        if not refs:
            typer.echo("note: no reference found; PSNR/SSIM come from the runs' own logs where recorded", err=True)
        if output is not None:
            written = write_tables(rows, output)
            if plots:
                if plot_psnr_curves(entries, rows, output / "psnr_curves.png"):
                    written.append(output / "psnr_curves.png")
                plot_montage(entries, rows, refs, output / "montage.png")
                written.append(output / "montage.png")
            typer.echo("wrote " + ", ".join(str(p) for p in written), err=True)
