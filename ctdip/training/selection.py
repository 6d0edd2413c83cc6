"""Rise-time selection of a pretraining checkpoint (the EDIP protocol), fine-tuned by the DIP engine.

Every candidate checkpoint ``theta_c`` is fine-tuned as a DIP on simulated Shepp–Logan data
``(x_fbp, y)`` of the target geometry, through :class:`ctdip.dip.engine.Engine` (Adam at
``select_lr``, no gradient clipping, constant rate)::

    min_theta  mean (A f_theta(x_fbp) - y)^2,   theta_0 = theta_c,   t = 1 .. select_iters

recording ``PSNR_t = PSNR(f_theta_t(x_fbp), x_SL)`` before each update. The common target is the
lowest steady PSNR among the candidates (median of the last 10 % of each curve,
``ctdip.core.metrics.steady_psnr``); a candidate's rise time is the first ``t`` with
``PSNR_t >= target - 0.1 dB``. The shortest rise time wins; ties go to the higher steady PSNR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ctdip.dip.context import RunContext
from ctdip.dip.engine import Callback, DIPModel, Engine, EngineConfig, StepOut
from ctdip.training.simulator import EllipseSimulator, from_net, net_input
from ctdip.training.trainer import step_generator


class _FineTune(DIPModel):
    """The DIP of the module docstring for the engine: ``mean (A f(x_fbp) - y)^2`` from ``network``."""

    name = "rise-time"

    def __init__(self, network: torch.nn.Module, arch: dict, problem):
        self.network, self.arch, self.A = network, arch, problem.A
        self.dim = problem.dim
        self.z = net_input(problem.x_init[None], self.dim)
        self.y = problem.y[None]
        self.last: torch.Tensor | None = None

    def objective(self, it: int, gen: torch.Generator) -> StepOut:
        out = from_net(self.network(self.z), self.dim)
        return StepOut(loss=torch.mean((self.A(out) - self.y) ** 2), image=out)

    def after_step(self, it: int, image: torch.Tensor, gen: torch.Generator) -> None:
        self.last = image

    def final_image(self, engine: Engine) -> torch.Tensor:  # the last iterate: no extra forward pass
        return self.last


class _PSNRCurve(Callback):
    """``PSNR(x_t, reference)`` of every iterate (``ctdip.core.metrics.psnr``)."""

    name = "psnr_curve"

    def __init__(self, reference: torch.Tensor):
        self.reference, self.values = reference, []

    def on_iteration(self, eng, it, x, out):
        from ctdip.core.metrics import psnr

        self.values.append(psnr(x[0], self.reference))
        return False


def finetune_curve(network: torch.nn.Module, arch: dict, problem, reference: torch.Tensor, iters: int,
                   lr: float = 1e-4) -> list[float]:
    """PSNR curve (to ``reference``, ``(z, y, x)``) of the DIP fine-tuning of ``network`` on ``problem``."""
    cfg = EngineConfig(iterations=int(iters), lr=float(lr), grad_clip=None, log_every=int(iters), checkpoint_every=0,
                       es_window=2, ssim_every_log=False)
    curve = _PSNRCurve(reference)
    network.train()
    Engine(problem, RunContext(quiet=True), cfg, method_name="rise-time", extra_callbacks=[curve]).run(
        _FineTune(network, arch, problem))
    return curve.values


def select_by_rise_time(candidates: list[Path], A, sim: EllipseSimulator, seed: int, iters: int, lr: float,
                        device: torch.device, log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """The candidate of shortest rise time (module docstring) and the reason in words."""
    from ctdip.core.metrics import rise_time, steady_psnr
    from ctdip.core.problem import Problem
    from ctdip.networks import weights as W

    x_in, x_sl, y = sim.shepp_logan(step_generator(seed, -3, device), with_data=True)
    problem = Problem(A=A, y=y[0], volume=sim.volume, x_init=x_in[0])
    curves = {}
    for c in candidates:
        obj = W.load_weights(c, kind="unet")
        net = W.build_from_weights(obj, c).to(device)
        curves[c] = finetune_curve(net, obj["arch"], problem, x_sl[0], iters, lr)
    steadies = {c: steady_psnr(v) for c, v in curves.items()}
    target = min(steadies.values())
    rts = {c: rise_time(range(1, len(v) + 1), v, target) or len(v) + 1 for c, v in curves.items()}
    best = min(candidates, key=lambda c: (rts[c], -steadies[c]))
    if log:
        for c in candidates:
            log(f"  {c.name}: rise time {rts[c]} it, steady PSNR {steadies[c]:.2f} dB")
    return best, f"rise time {rts[best]} it to {target - 0.1:.2f} dB"
