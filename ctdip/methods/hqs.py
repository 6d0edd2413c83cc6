"""DIP with a plug-and-play denoiser by half-quadratic splitting (HQS; Zhang et al. 2017/2021
plug-and-play HQS, applied to the DIP parametrisation as in the handbook's denoiser variants).

With an increasing coupling mu_k and the denoiser strength tied to it, sigma_k = sqrt(lambda/mu_k)
(the MAP denoiser of the u-subproblem ``lambda R(u) + mu_k/2 ||x - u||^2``)::

    theta-step (every iteration):  theta <- Adam(theta, grad_theta [ ||A f_theta(z) - y||^2/||y||^2
                                                                     + mu_k/2 mean (f_theta(z) - u)^2 ])
    every ``u_every`` iterations:  u <- D(x, sigma_k),  sigma_k = sqrt(lambda / mu_k)
                                   mu_{k+1} = min(mu_growth mu_k, mu_max)

``lam: auto`` (the default) chooses the strength without a reference, as ``admm``'s ``sigma: auto``:
the first denoiser strength is ``sigma_0 = sigma_factor * eta`` (``eta`` the noise level of the
held-out-view CV of PDHG-TV, :func:`ctdip.methods.selection.denoiser_sigma`), so
``lambda = mu_0 sigma_0^2``; the evidence goes to ``summary.json`` as ``sigma_choice``.
``sigma_factor`` 0.8 was chosen on the tuning objects: the best fixed ``sigma_0`` on the tuning
walnut was 0.1 at ``eta`` 0.12, and 0.8 eta on the tuning CT slice z = 70 (20 views) returned
27.57 dB against 25.59 dB with the fixed ``lam`` 0.005 (``benchmarks/results/quality_tuning_runs.md``).

``D`` as in ``admm`` (``learned`` by default, ``tv``, ``bm3d`` or a CNN weight file). With ``denoiser: tv`` this is tv-hqs
with D = prox_{sigma^2 TV}; ``tv-hqs`` (ctdip.methods.tv_hqs) is this class with the TV prox
as its u-step.
"""

from __future__ import annotations

import math

import torch

from ctdip.methods._dip import DIPMethod
from ctdip.methods._splitting import SPLIT_ALIASES, make_denoiser
from ctdip.methods.selection import CV_PARAMS, CrossValidated


class HQSDenoiser(CrossValidated, DIPMethod):
    name = "hqs-denoiser"
    defaults = {"denoiser": "learned", "lam": "auto", "sigma_factor": 0.8, "mu": 0.5, "mu_growth": 1.005,
                "mu_max": 50.0, "u_every": 5, **CV_PARAMS}
    param_aliases = SPLIT_ALIASES

    def setup(self, problem, gen):
        self.setup_denoiser()
        with torch.no_grad():
            self.u = self.network(self.z).detach().clone()
        self.mu = float(self.params["mu"])
        self.lam = self.resolve_lam(problem)

    def resolve_lam(self, problem) -> float:
        """``lam``, or for ``auto`` ``mu_0 (sigma_factor eta)^2`` from the held-out-view CV (module docstring)."""
        lam = self.params["lam"]
        if lam == "auto":
            lam = self.mu * self.auto_sigma(problem) ** 2
            self.choice.extra.update(lam=lam)
        return float(lam)

    def setup_denoiser(self) -> None:
        self.denoiser = make_denoiser(self)

    def sigma(self) -> float:
        return math.sqrt(self.lam / self.mu)

    def u_step(self, image: torch.Tensor) -> torch.Tensor:
        """The auxiliary update ``u <- D(x, sigma_k)`` (module docstring)."""
        return self.denoiser(image, self.sigma())

    def objective(self, it, gen):
        step = super().objective(it, gen)
        return step.plus(0.5 * self.mu * ((step.image - self.u) ** 2).mean())

    @torch.no_grad()
    def after_step(self, it, image, gen):
        if it % int(self.params["u_every"]) == 0:
            self.u = self.u_step(image)
            self.mu = min(self.mu * float(self.params["mu_growth"]), float(self.params["mu_max"]))

    def method_state(self):
        return {"u": self.u, "mu": self.mu}

    def load_method_state(self, state):
        self.u, self.mu = state["u"].to(self.problem.device), float(state["mu"])

    def extra_summary(self):
        out = {"denoiser": getattr(self.denoiser, "name", str(self.params["denoiser"])), "lam": self.lam,
               "final_mu": self.mu, "final_sigma": self.sigma()}
        if self.choice is not None:
            out.update(sigma=self.choice.extra["sigma"], sigma_choice=self.choice.as_dict())
        return out
