"""Educated warm starts for DIP (EDIP): supervised pretraining of the U-Net on synthetic ellipses.

Protocol (Barbano et al. 2022, "An educated warm start for deep image prior-based micro CT
reconstruction", IEEE TCI), as implemented here for *the target geometry* ``(A, FBP)``:

1. **Phantoms.** Random ellipses (2D) / ellipsoids (3D) drawn on the fly with
   ``ctdip.core.data.phantoms.random_ellipses``: random centre, semi-axes, orientation and intensity,
   intensities ``~ U(-0.4, 1)`` summed where ellipses overlap and the image normalised to [0, 1];
   about 40 ellipses per image.
2. **Data.** ``y = A x + eta`` with white Gaussian noise ``eta ~ N(0, (0.05 * mean|A x|)^2)``
   (5 % relative noise), computed in batches with the project's own ``RayTransform`` on the
   training device: ``A`` is applied to a batch ``(N, z, y, x)`` in one call.
3. **Input / target.** The network input is the FBP/FDK of the noisy data,
   ``x_fbp = FBP(y)`` (the same filter ``Problem.from_scan`` uses, so that in ``reconstruct`` the
   EDIP method feeds ``problem.x_init`` to a network trained on exactly that kind of input). The
   loss is the MSE to the phantom: ``L(theta) = mean || f_theta(x_fbp) - x ||^2``.
4. **Intensity convention.** ``Problem`` scales real data by ``s = 1 / q99.9(FBP)`` so its images
   are O(1). Each simulated pair ``(x_fbp, x)`` is multiplied by its own ``s_i = 1/q99.9(x_fbp,i)``
   (``scale="auto"``), so the network sees inputs with exactly the statistics of
   ``problem.x_init`` and outputs images in the problem's scaled units.
5. **Optimiser.** Adam with a one-cycle learning-rate schedule (cosine warm-up over the first
   30 % of the steps from ``lr/25`` to ``lr``, then cosine annealing to ``lr/25e4``), mini-batches,
   a number of epochs of ``samples`` fresh draws (or an explicit number of steps).
6. **Validation and selection.** Every ``val_every`` steps: the MSE on a fixed set of validation
   ellipses and the PSNR on a Shepp–Logan phantom simulated with the same geometry and noise.
   ``best.pt`` keeps the best Shepp–Logan PSNR, ``step_NNNNNN.pt`` are periodic checkpoints.
   With ``select="rise-time"`` (the paper's protocol), every periodic checkpoint is fine-tuned as
   a DIP on the Shepp–Logan data through the DIP engine, ``min_theta ||A f_theta(x_fbp) - y||^2``
   with Adam (lr 1e-4) for ``select_iters`` iterations, and the checkpoint that first reaches the
   common target PSNR (the lowest of the candidates' steady PSNRs, minus 0.1 dB) is written as the
   result.

The data are made by :mod:`ctdip.training.simulator`, the loop is :func:`ctdip.training.trainer.train`
(deterministic per step: the generator of step ``k`` is seeded with ``(seed, k)``, so ``--resume``
continues exactly where an interrupted run stopped), the rise-time selection is
:mod:`ctdip.training.selection` and the warm-start cache :mod:`ctdip.training.warmstart`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ctdip.core.io import atomic_write_bytes
from ctdip.errors import UserError
from ctdip.training.simulator import EllipseSimulator, from_net, net_input
from ctdip.training.trainer import (
    CheckpointPolicy,
    Progress,
    TrainingResult,
    TrainingState,
    TrainingTask,
    checkpoint_dir,
    step_generator,
    train,
)


@dataclass
class PretrainConfig:
    """Hyperparameters of a pretraining run (all recorded in the weights file's ``data_spec``)."""

    samples: int = 2000  # fresh phantoms per epoch
    epochs: int = 1
    steps: int | None = None  # overrides samples * epochs / batch_size
    batch_size: int = 8
    lr: float = 1e-3  # peak learning rate of the one-cycle schedule
    noise: float = 0.05  # white noise std relative to mean |A x|
    n_ellipses: int = 40
    fbp_filter: str = "ram-lak"
    scale: str = "auto"  # "auto": s_i = 1/q99.9(FBP_i) as Problem does; "none"
    val_samples: int = 16
    val_every: int = 50
    checkpoint_every: int = 200  # periodic checkpoints (0: none)
    select: str = "psnr"  # psnr | rise-time | last
    select_iters: int = 300
    select_lr: float = 1e-4
    seed: int = 0

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(self.samples * self.epochs / self.batch_size))

    def validate(self) -> None:
        from ctdip.core.validate import LEARNING_RATE, NONNEG, NONNEG_INT, POSITIVE_INT, Rule

        for opt, name, rule in (("--samples", "samples", POSITIVE_INT), ("--epochs", "epochs", POSITIVE_INT),
                                ("--steps", "steps", Rule(integer=True, minimum=1, optional=True)),
                                ("--batch-size", "batch_size", POSITIVE_INT), ("--lr", "lr", LEARNING_RATE),
                                ("--noise", "noise", NONNEG), ("--ellipses", "n_ellipses", POSITIVE_INT),
                                ("--val-every", "val_every", POSITIVE_INT),
                                ("--checkpoint-every", "checkpoint_every", NONNEG_INT),
                                ("--select-iters", "select_iters", POSITIVE_INT),
                                ("--set select_lr", "select_lr", LEARNING_RATE)):
            setattr(self, name, rule(getattr(self, name), opt))
        if self.select not in ("psnr", "rise-time", "last"):
            raise UserError(f"unknown --select '{self.select}'; choose psnr, rise-time or last")
        if self.scale not in ("auto", "none"):
            raise UserError(f"unknown --scale '{self.scale}'; choose auto or none")


def pretrain(
    A,
    geometry,
    volume,
    arch: dict,
    out: str | Path,
    config: PretrainConfig | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainingResult:
    """Pretrain ``build_network(arch)`` on ellipses for ``(geometry, volume)``; write ``out``.

    ``A`` is a ``RayTransform`` for ``(geometry, volume)`` (its device is the training device
    unless ``device`` is given). Returns the history (one row per validation) and the selection.
    """
    from ctdip.core.metrics import psnr
    from ctdip.networks import build_network
    from ctdip.networks import weights as W

    cfg = config or PretrainConfig()
    cfg.validate()
    out = Path(out)
    dev = torch.device(device) if device is not None else torch.device(getattr(A, "device", None) or "cpu")
    ckdir = checkpoint_dir(out)
    sim = EllipseSimulator(A, geometry, volume, cfg.noise, cfg.n_ellipses, cfg.fbp_filter, cfg.scale, dev)
    dim, total = sim.dim, cfg.total_steps
    torch.manual_seed(cfg.seed)
    net = build_network(arch).to(dev)
    spec = {"phantoms": "random_ellipses", "n_ellipses": cfg.n_ellipses, "noise_rel": cfg.noise,
            "input": f"fbp:{cfg.fbp_filter}", "scale": cfg.scale, "batch_size": cfg.batch_size,
            "steps": total, "lr": cfg.lr, "schedule": "one-cycle", "seed": cfg.seed,
            "volume_shape": list(sim.shape)}
    val_in, val_x = sim.sample(cfg.val_samples, step_generator(cfg.seed, -1, dev))  # fixed validation data
    sl_in, sl_x = sim.shepp_logan(step_generator(cfg.seed, -2, dev))
    gkey = W.geometry_key(geometry, volume)

    def loss(net: torch.nn.Module, batch) -> torch.Tensor:  # L(theta) = mean ||f(x_fbp) - x||^2
        xin, xt = batch
        return torch.mean((from_net(net(net_input(xin, dim)), dim) - xt) ** 2)

    def validate(net: torch.nn.Module) -> dict:
        vl = 0.0
        for i in range(0, cfg.val_samples, cfg.batch_size):
            p = from_net(net(net_input(val_in[i:i + cfg.batch_size], dim)), dim)
            vl += float(((p - val_x[i:i + cfg.batch_size]) ** 2).sum())
        sl = from_net(net(net_input(sl_in, dim)), dim)
        return {"val_loss": vl / val_x.numel(), "val_psnr": psnr(sl[0], sl_x[0])}

    def save_weights(path: Path, tag: str, st: TrainingState) -> None:
        W.save_weights(path, net.state_dict(), arch, kind="unet", geometry_key=gkey, data_spec=spec,
                       extra={"step": st.step, "tag": tag, "best_step": st.best["step"],
                              "val_psnr_shepp_logan": st.best["psnr"]})

    task = TrainingTask("pretraining", net, arch, spec, total, cfg.batch_size, cfg.lr, cfg.seed,
                        sample=lambda g: sim.sample(cfg.batch_size, g), loss=loss, validate=validate,
                        save_weights=save_weights, first_row={"train_loss": None, "samples_per_s": 0.0, "time_s": 0.0})
    policy = CheckpointPolicy(cfg.val_every, cfg.checkpoint_every, best_key="val_psnr", maximize=True,
                              best_name="psnr", periodic_at_end=True)  # the last step is a rise-time candidate
    state = train(task, policy, ckdir, dev, resume=resume, progress=progress, log=log)

    selected, src = "last", ckdir / "last.pt"
    if cfg.select == "psnr" and (ckdir / "best.pt").exists():
        selected, src = f"best Shepp-Logan PSNR (step {state.best['step']})", ckdir / "best.pt"
    elif cfg.select == "rise-time":
        from ctdip.training.selection import select_by_rise_time

        cands = sorted(ckdir.glob("step_*.pt")) or [ckdir / "last.pt"]
        if (ckdir / "best.pt").exists():
            cands.append(ckdir / "best.pt")
        src, rt = select_by_rise_time(cands, A, sim, cfg.seed, cfg.select_iters, cfg.select_lr, dev, log=log)
        selected = f"shortest rise time on Shepp-Logan ({src.name}, {rt})"
    atomic_write_bytes(out, src.read_bytes())
    return TrainingResult.from_state(out, state, policy, selected)


def problem_geometry(problem) -> tuple[Any, Any]:
    """(geometry, volume) of ``problem``'s operator."""
    A = problem.A
    geometry = getattr(A, "geometry", None)
    if geometry is None:
        raise ValueError("problem.A has no .geometry; cannot pretrain a warm start for it")
    volume = getattr(A, "volume", None) or problem.volume
    return geometry, volume


def pretrain_for_problem(problem, arch: dict, out: str | Path, config: PretrainConfig | None = None,
                         **kw) -> TrainingResult:
    """:func:`pretrain` on the geometry of ``problem`` (reuses its operator and device)."""
    geometry, volume = problem_geometry(problem)
    return pretrain(problem.A, geometry, volume, arch, out, config, device=problem.device, **kw)
