"""``ctdip pretrain``: EDIP warm starts on synthetic ellipses, and ``ctdip pretrain denoiser``.

Numerics live in :mod:`ctdip.training.pretrain` and :mod:`ctdip.training.denoiser`; this module parses
options, resolves the geometry (the same ``--scan/--geometry/--setup`` options as ``reconstruct``,
through ``ctdip.core.data.loader``) and shows a rich progress bar with samples/s.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ctdip.cli._options import BACKEND_HELP, ORBIT
from ctdip.core.validate import check_output_path
from ctdip.errors import UserError

HELP = ("Pretrain the DIP U-Net on synthetic ellipses for a geometry (EDIP warm start); "
        "'ctdip pretrain denoiser' trains a DRUNet denoiser for admm/hqs/red.")


def _device(name: str):
    import torch

    from ctdip.core.device import resolve_device

    return torch.device(resolve_device(name))


def resolve_geometry(scan: Optional[Path], geometry: Optional[Path], setup: Optional[str],
                     angles: Optional[int], bin_: Optional[int], slice_: Optional[str],
                     size: Optional[int], mode: Optional[str] = None, orbit: Optional[int] = None):
    """(ProjectionGeometry, VolumeGeometry) of ``--scan`` or ``--geometry``, with ``--setup`` defaults
    and --angles/--bin/--slice/--mode/--size applied exactly as ``reconstruct`` applies them."""
    if (scan is None) == (geometry is None):
        raise UserError("give one of --scan SCAN or --geometry geometry.yaml (--setup NAME adds its scan "
                        "options to either)")
    if scan is not None:
        from ctdip.core.data.loader import load_scan

        sc = load_scan(scan, angles=angles, bin=bin_, slice=slice_, mode=mode, size=size, orbit=orbit,
                       setup=setup, read_reference=False)
        return sc.geometry, sc.volume
    from ctdip.core.data.loader import load_geometry

    return load_geometry(geometry, angles=angles, bin=bin_, slice=slice_, mode=mode, size=size, setup=setup)


class _Bar:
    """Progress on stderr (:class:`ctdip.core.progress.ProgressBar`): step, ETA, samples/s, loss,
    validation figure; and the one-line duration estimate."""

    def __init__(self, total: int, label: str, key: str, fmt: str, quiet: bool):
        from ctdip.core.estimate import StepEstimate
        from ctdip.core.progress import ProgressBar

        self.key, self.fmt = key, fmt
        self.last_val: str = "-"
        self.estimate = StepEstimate(f"{label} steps", "step", enabled=not quiet)
        self.bar = ProgressBar(label, total, quiet=quiet, fields={"rate": "- samples/s", "loss": "loss -", "val": ""})

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *a):
        self.bar.__exit__(*a)

    def __call__(self, step: int, total: int, row: dict) -> None:
        if row.get(self.key) is not None:
            self.last_val = self.fmt.format(row[self.key])
        loss = row.get("train_loss")
        self.bar.update(step, rate=f"{row.get('samples_per_s', 0):.0f} samples/s",
                        loss="loss " + ("-" if loss is None else f"{loss:.3g}"), val=self.last_val)
        self.estimate(step, total)


def _echo(msg: str, quiet: bool = False) -> None:
    if not quiet:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def pretrain_command(
    ctx: typer.Context,
    scan: Optional[Path] = typer.Option(None, "--scan", help="Scan folder whose geometry to pretrain for."),
    geometry: Optional[Path] = typer.Option(None, "--geometry", help="A geometry.yaml instead of a scan."),
    setup: Optional[str] = typer.Option(None, "--setup", help="Acquisition preset (scan options), e.g. walnut-2d-sparse-60."),
    angles: Optional[int] = typer.Option(None, "--angles", help="K equispaced views of the available ones."),
    bin_: Optional[int] = typer.Option(None, "--bin", help="Detector binning."),
    slice_: Optional[str] = typer.Option(None, "--slice", help="Volume slice for 2D: index, 'mid' or offset like +3."),
    size: Optional[int] = typer.Option(None, "--size", help="Reconstruction grid N (N x N in-plane)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="2d (one slice, default) or 3d (volume)."),
    orbit: Optional[int] = ORBIT,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Weights file to write (.pt)."),
    network: str = typer.Option("light", "--network", help="U-Net preset (paper, light, tiny, 3d) or YAML file."),
    samples: int = typer.Option(2000, "--samples", help="Fresh ellipse phantoms per epoch."),
    epochs: int = typer.Option(1, "--epochs", help="Epochs of --samples phantoms."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (overrides samples x epochs)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Phantoms per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate of the one-cycle schedule."),
    noise: float = typer.Option(0.05, "--noise", help="White noise std relative to mean |Ax|."),
    n_ellipses: int = typer.Option(40, "--ellipses", help="Ellipses per phantom."),
    val_every: int = typer.Option(50, "--val-every", help="Validate every N steps."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Periodic checkpoint every N steps (0: off)."),
    select: str = typer.Option("psnr", "--select", help="Which checkpoint to write: psnr (best Shepp-Logan "
                               "PSNR), rise-time (shortest DIP rise time on Shepp-Logan, the paper's protocol), last."),
    select_iters: int = typer.Option(300, "--select-iters", help="DIP iterations per candidate for --select rise-time."),
    seed: int = typer.Option(0, "--seed", help="Seed of network init and data."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    backend: str = typer.Option("auto", "--backend", metavar="NAME", help=BACKEND_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from <output>.ckpt/state.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Pretrain the U-Net on ellipse phantoms simulated for one geometry (EDIP warm start)."""
    if ctx.invoked_subcommand is not None:
        return
    if output is None:
        raise UserError("missing -o/--output weights file (e.g. -o weights/walnut20.pt)")
    check_output_path(output, "file")
    from ctdip.core.operators import RayTransform
    from ctdip.networks import network_preset
    from ctdip.training.pretrain import PretrainConfig, pretrain
    from ctdip.training.trainer import checkpoint_dir

    cfg = PretrainConfig(samples=samples, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, noise=noise,
                         n_ellipses=n_ellipses, val_every=val_every, checkpoint_every=checkpoint_every,
                         select=select, select_iters=select_iters, seed=seed)
    cfg.validate()
    dev = _device(device)
    geom, vol = resolve_geometry(scan, geometry, setup, angles, bin_, slice_, size, mode, orbit)
    dim = 2 if vol.shape[0] == 1 else 3
    arch = network_preset(network, dim=dim)
    A = RayTransform(geom, vol, backend=backend, device=dev)
    _echo(f"pretraining '{network}' U-Net for {geom.kind} geometry, {geom.n_views} views, volume "
          f"{tuple(vol.shape)} on {dev} ({A.backend} backend): {cfg.total_steps} steps x {cfg.batch_size}", quiet)
    with _Bar(cfg.total_steps, "pretrain", "val_psnr", "val SL {:.2f} dB", quiet) as bar:
        res = pretrain(A, geom, vol, arch, output, cfg, device=dev, resume=resume, progress=bar,
                       log=lambda m: _echo(m, quiet))
    _echo(f"wrote {res.path} ({res.selected}); best Shepp-Logan PSNR "
          f"{res.best_value:.2f} dB at step {res.best_step}; {res.samples_per_s:.1f} samples/s "
          f"(data generation alone {res.data_samples_per_s:.0f} samples/s), {res.wall_s:.1f} s; "
          f"checkpoints and log.csv in {checkpoint_dir(output)}", quiet)


def _command_line(argv: list[str] | None = None) -> str:
    """This invocation as a shell-quoted ``ctdip pretrain denoiser ...`` line, less ``--resume``,
    with the files after ``-o`` / ``--output`` / ``--volume`` by name only (no local paths)."""
    import shlex

    out, prev = [], None
    for a in (sys.argv[1:] if argv is None else argv):
        if a != "--resume":
            out.append(Path(a).name if prev in ("-o", "--output", "--volume") else a)
        prev = a
    return shlex.join(["ctdip", *out])


def denoiser_command(
    output: Path = typer.Option(..., "-o", "--output", help="Denoiser weights file to write (.pt)."),
    size: str = typer.Option("small", "--size", help="DRUNet size: tiny, small or base."),
    patch: int = typer.Option(64, "--patch", help="Training patch size (pixels)."),
    steps: int = typer.Option(2000, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Patches per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate of the one-cycle schedule."),
    sigma_min: float = typer.Option(0.0, "--sigma-min", help="Smallest training noise level (O(1) images)."),
    sigma_max: float = typer.Option(0.2, "--sigma-max", help="Largest training noise level."),
    noise: str = typer.Option("gaussian", "--noise",
                              help="Training noise: gaussian (white) or mixed (half white, half spatially correlated)."),
    source: list[str] = typer.Option(["ellipses", "walnut"], "--source", help="Image source(s): ellipses, walnut, volumes."),
    volume: list[Path] = typer.Option([], "--volume", help="User volume(s) to train on, TIFF or .npy (repeatable)."),
    note: str = typer.Option("", "--note", help="Provenance text stored in the weights' metadata."),
    val_every: int = typer.Option(100, "--val-every", help="Validate every N steps."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Periodic checkpoint every N steps (0: off)."),
    seed: int = typer.Option(0, "--seed", help="Seed of network init and data."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from <output>.ckpt/state.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a DRUNet-style Gaussian denoiser D(x, sigma) for admm / hqs / red (--denoiser FILE)."""
    from ctdip.training.denoiser import DenoiserConfig, train_denoiser
    from ctdip.training.trainer import checkpoint_dir

    check_output_path(output, "file")

    cfg = DenoiserConfig(size=size, patch=patch, batch_size=batch_size, steps=steps, lr=lr, sigma_min=sigma_min,
                         sigma_max=sigma_max, noise=noise, sources=tuple(source), volumes=[str(v) for v in volume],
                         val_every=val_every, checkpoint_every=checkpoint_every, seed=seed,
                         command=_command_line(), note=note)
    cfg.validate()
    from ctdip.networks.drunet import drunet_arch

    drunet_arch(size)  # unknown size -> one-line error before any work
    dev = _device(device)
    _echo(f"training DRUNet-{size} denoiser on {', '.join(cfg.sources)} ({patch}x{patch}, sigma in "
          f"[{sigma_min:g}, {sigma_max:g}]) on {dev}: {steps} steps x {batch_size}", quiet)
    with _Bar(steps, "denoiser", "val_loss", "val MSE {:.2e}", quiet) as bar:
        res = train_denoiser(output, cfg, device=dev, resume=resume, progress=bar, log=lambda m: _echo(m, quiet))
    parts = [f"sigma {s:g}: MSE {mn:.2e} -> {md:.2e} ({10 * math.log10(mn / md):+.2f} dB)"
             for s, (mn, md) in res.val.items()]
    _echo(f"wrote {res.path} (best step {res.best_step}); validation " + "; ".join(parts)
          + f"; {res.samples_per_s:.0f} samples/s; checkpoints in {checkpoint_dir(output)}", quiet)


def register(app: Any) -> None:
    sub = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)
    sub.callback(invoke_without_command=True)(pretrain_command)
    sub.command("denoiser")(denoiser_command)
    app.add_typer(sub, name="pretrain")
