"""DIP with a plug-and-play denoiser by ADMM (handbook Alg. 6; Cascarano et al. 2021,
Fermanian et al. 2021 "Regularizing the deep image prior with a learned denoiser").

Splitting x = f_theta(z) = u with a scaled dual w (objective terms are means over voxels)::

    theta-step (every iteration):  theta <- Adam(theta, grad_theta [ ||A f_theta(z) - y||^2/||y||^2
                                                                     + rho/2 mean (f_theta(z) - u + w)^2 ])
    every ``u_every`` iterations:  u <- D(x + w, sigma)          (x = f_theta(z), the current iterate)
                                   w <- w + x - u

``D(x, sigma)`` is the denoiser (``denoiser``: ``learned`` = the DRUNet shipped with ctdip, the
default; ``tv`` = prox_{sigma^2 TV}; ``bm3d``; or a trained CNN weight file), ``sigma`` its strength
in the image's scaled units (images O(1); for a CNN the Gaussian noise level it removes).
u starts at the network's initial output, w at 0.
"""

from __future__ import annotations

import torch

from ctdip.methods._dip import DIPMethod
from ctdip.methods._splitting import SPLIT_ALIASES, make_denoiser


class ADMM(DIPMethod):
    name = "admm"
    defaults = {"denoiser": "learned", "sigma": 0.1, "rho": 0.5, "u_every": 5}
    param_aliases = SPLIT_ALIASES

    def setup(self, problem, gen):
        self.denoiser = make_denoiser(self)
        with torch.no_grad():
            self.u = self.network(self.z).detach().clone()
        self.w = torch.zeros_like(self.u)

    def objective(self, it, gen):
        step = super().objective(it, gen)
        return step.plus(0.5 * float(self.params["rho"]) * ((step.image - self.u + self.w) ** 2).mean())

    @torch.no_grad()
    def after_step(self, it, image, gen):
        if it % int(self.params["u_every"]) == 0:
            self.u = self.denoiser(image + self.w, float(self.params["sigma"]))
            self.w = self.w + image - self.u

    def method_state(self):
        return {"u": self.u, "w": self.w}

    def load_method_state(self, state):
        self.u, self.w = state["u"].to(self.problem.device), state["w"].to(self.problem.device)

    def extra_summary(self):
        return {"denoiser": getattr(self.denoiser, "name", str(self.params["denoiser"]))}
