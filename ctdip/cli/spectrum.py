"""`ctdip spectrum RUN_OR_WEIGHTS [--scan SCAN] [--rank k]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("spectrum")
    def spectrum_cmd(
        source: Path = typer.Argument(..., help="A DIP run folder (its checkpoint.pt) or a weights file of `ctdip pretrain`."),
        scan: Optional[Path] = typer.Option(None, "--scan", help="Scan folder for the operator A (default for a run: its own scan)."),
        rank: int = typer.Option(100, "--rank", "-k", help="Singular triplets of J = d(A f)/d theta to compute."),
        ntk_rank: int = typer.Option(16, "--ntk-rank", help="NTK eigenimages to compute (0: none)."),
        oversample: int = typer.Option(10, "--oversample", help="Extra random probes of the range finder."),
        power_iters: int = typer.Option(1, "--power-iters", help="Subspace iterations (0 = EDIP Alg. 1 as published)."),
        chunk: int = typer.Option(16, "--chunk", help="JVPs/VJPs per vectorised batch (memory vs speed)."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder [default: RUN/spectrum or <weights>_spectrum]."),
        angles: Optional[int] = typer.Option(None, "--angles", help="Scan option (weights files; runs use their own)."),
        size: Optional[int] = typer.Option(None, "--size", help="Scan option: reconstruction grid N x N."),
        slice_: Optional[str] = typer.Option(None, "--slice", help="Scan option: slice for 2D."),
        setup: Optional[str] = typer.Option(None, "--setup", help="Acquisition preset."),
        input_: str = typer.Option("fbp", "--input", help="Weights files: network input fbp (EDIP) or noise."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random probes (and a noise input)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:i]."),
    ) -> None:
        """Randomised SVD of the Jacobian of A f_theta(z) in theta (EDIP Alg. 1) and the NTK
        eigenimages: singular-value plot, eigenimage montage, Hoyer sparsity, encoder/decoder
        shares and an .npz with everything."""
        import torch

        from ctdip.core.device import resolve_device
        from ctdip.core.validate import NONNEG_INT, POSITIVE_INT, check_output_path
        from ctdip.workflows.spectrum import load_subject, run_spectrum, summary_lines

        for opt, value, rule in (("--rank", rank, POSITIVE_INT), ("--chunk", chunk, POSITIVE_INT),
                                 ("--ntk-rank", ntk_rank, NONNEG_INT), ("--oversample", oversample, NONNEG_INT),
                                 ("--power-iters", power_iters, NONNEG_INT)):
            rule(value, opt)
        if output is not None:
            check_output_path(output, "folder")
        torch.set_grad_enabled(True)
        subject = load_subject(source, scan, {"angles": angles, "size": size, "slice": slice_, "setup": setup},
                               device=resolve_device(device), input_kind=input_, seed=seed)
        out = output or (source / "spectrum" if source.is_dir() else source.with_name(source.stem + "_spectrum"))
        res, files = run_spectrum(subject, out, rank=rank, ntk_rank=ntk_rank, oversample=oversample,
                                  power_iters=power_iters, seed=seed, chunk=chunk)
        for line in summary_lines(res):
            typer.echo(line)
        typer.echo("wrote " + ", ".join(str(p) for p in files.values()), err=True)
