"""Self-guided DIP (Liang et al. 2025, "Analysis of deep image prior and exploiting
self-guidance for image reconstruction"; handbook Alg. 7).

The input z is learnable (initialised with the FBP by default) and the network is asked to
reproduce it under input noise; the output is the mean over M noisy input realisations::

    xbar(theta, z) = 1/M sum_m f_theta(z + s eta_m),   eta_m ~ N(0, I) drawn afresh every step
    L(theta, z) = ||A xbar - y||^2 / ||y||^2 + alpha mean (xbar - z)^2
    theta <- Adam(theta, grad_theta L, lr),   z <- Adam(z, grad_z L, z_lr)     (one joint step)
    x_ema <- beta x_ema + (1 - beta) xbar                                      (returned image)

``M`` = ``realisations`` (evaluated as one batch; GroupNorm is per sample, so batching is exact),
``s`` = ``noise_std``, ``alpha`` = ``alpha``, ``beta`` = ``ema_decay``. The returned
reconstruction is the EMA output.

``tv_weight`` w adds ``w TV(xbar)`` to L (TV as in :mod:`ctdip.methods.tv`; ``auto``: the
held-out-view CV weight of PDHG-TV times ``tv_factor``, as ``tv``); 0 is Liang et al.'s method.
"""

from __future__ import annotations

import torch

from ctdip.dip.engine import StepOut
from ctdip.methods._dip import DIPMethod
from ctdip.methods.selection import CV_PARAMS, AutoTVWeight


class SelfGuided(AutoTVWeight, DIPMethod):
    name = "self-guided"
    defaults = {"alpha": 0.1, "realisations": 2, "noise_std": 0.05, "tv_weight": 0.0, **CV_PARAMS}

    def setup(self, problem, gen):
        self.z.requires_grad_(True)
        self.resolve_tv_weight(problem)

    def mean_output(self, gen: torch.Generator | None) -> torch.Tensor:
        m = int(self.params["realisations"])
        zb = self.z.expand(m, *self.z.shape[1:])
        if gen is not None and float(self.params["noise_std"]) > 0:
            eta = torch.randn(zb.shape, generator=gen, device=zb.device, dtype=zb.dtype)
            zb = zb + float(self.params["noise_std"]) * eta
        return self.network(zb).mean(0, keepdim=True)

    def objective(self, it, gen):
        x = self.mean_output(gen)
        fit = self.data_fit(x)
        reg = self.plus_tv(float(self.params["alpha"]) * ((x - self.z) ** 2).mean(), x)
        return StepOut(loss=fit + reg, image=x, data_fit=fit, reg=reg)

    @torch.no_grad()
    def final_image(self, engine):
        return self.network(self.z).detach()

    def choose_result(self, res):
        return res.picks.get("ema", res.image)

    def extra_summary(self):
        return self.tv_weight_summary()
