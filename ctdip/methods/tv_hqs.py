"""TV-DIP by half-quadratic splitting (handbook Alg. 4): TV prox on an auxiliary image u.

Splitting ``min_theta ||A f_theta(z) - y||^2/||y||^2 + lambda TV(x)`` with x = f_theta(z) and an
auxiliary u, penalised by mu_k/2 mean (x - u)^2 with an increasing mu_k::

    theta-step (every iteration):  theta <- Adam(theta, grad_theta [ ||A f_theta(z) - y||^2/||y||^2
                                                                     + mu_k/2 mean (f_theta(z) - u)^2 ])
    every ``u_every`` iterations:  u <- argmin_u lambda TV(u) + mu_k/2 mean (x - u)^2
                                       = prox_{(lambda/mu_k) TV_sum}(x)      (FGP, ctdip.priors.denoisers)
    mu-schedule:                   mu_{k+1} = min(mu_growth * mu_k, mu_max)  (per u-step)

TV is the mean over voxels in the objective (TV_sum = n TV), so the prox weight is lambda/mu on
the summed TV. u starts at the network's initial output. ``tv_weight: auto`` chooses lambda as
``tv`` does (held-out-view CV of PDHG-TV, carried over times ``tv_factor``;
:class:`ctdip.methods.selection.AutoTVWeight`).
"""

from __future__ import annotations

import torch

from ctdip.methods.hqs import HQSDenoiser
from ctdip.methods.selection import CV_PARAMS, AutoTVWeight
from ctdip.priors.tv import tv_prox


class TVHQS(AutoTVWeight, HQSDenoiser):
    """:class:`ctdip.methods.hqs.HQSDenoiser` with the u-step ``prox_{(lambda/mu_k) TV_sum}``."""

    name = "tv-hqs"
    defaults = {"tv_weight": 0.02, **CV_PARAMS, "mu": 0.5, "mu_growth": 1.005, "mu_max": 50.0, "u_every": 5,
                "prox_iterations": 30}

    def setup(self, problem, gen) -> None:
        self.resolve_tv_weight(problem)
        super().setup(problem, gen)

    def resolve_lam(self, problem) -> float:
        return self.weight  # lambda is the TV weight (no denoiser strength to choose)

    def setup_denoiser(self) -> None:
        pass  # the u-step is the TV prox, not a denoiser

    def u_step(self, image: torch.Tensor) -> torch.Tensor:
        # both objective terms are means over voxels, so the 1/n cancels: weight lambda/mu on TV_sum
        return tv_prox(image, self.weight / self.mu, int(self.params["prox_iterations"]))

    def extra_summary(self):
        return {**self.tv_weight_summary(), "final_mu": self.mu}
