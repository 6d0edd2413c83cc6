"""DIP with a plug-and-play denoiser by ADMM (handbook Alg. 6; Cascarano et al. 2021,
Fermanian et al. 2021 "Regularizing the deep image prior with a learned denoiser").

Splitting x = f_theta(z) = u with a scaled dual w (objective terms are means over voxels)::

    theta-step (every iteration):  theta <- Adam(theta, grad_theta [ ||A f_theta(z) - y||^2/||y||^2
                                                                     + rho/2 mean (f_theta(z) - u + w)^2 ])
    every ``inner`` iterations:    u <- D(x + w, sigma)          (x = f_theta(z), the current iterate)
                                   w <- w + x - u

``D(x, sigma)`` is the denoiser (``denoiser``: ``learned`` = the DRUNet shipped with ctdip, the
default; ``tv`` = prox_{sigma^2 TV}; ``bm3d``; or a trained CNN weight file), ``sigma`` its strength
in the image's scaled units (images O(1); for a CNN the Gaussian noise level it removes).
u starts at the network's initial output, w at 0.
"""

from __future__ import annotations

import torch

from ctdip.dip.engine import StepOut
from ctdip.methods._dip import DIPMethod
from ctdip.methods._splitting import make_denoiser


class ADMM(DIPMethod):
    name = "admm"
    extra_defaults = {"denoiser": "learned", "sigma": 0.1, "rho": 0.5, "inner": 5}

    def setup(self, problem, gen):
        self.denoiser = make_denoiser(self)
        with torch.no_grad():
            self.u = self.network(self.z).detach().clone()
        self.w = torch.zeros_like(self.u)

    def objective(self, it, gen):
        x = self.network(self.z)
        fit = self.data_fit(x)
        pen = 0.5 * float(self.p["rho"]) * ((x - self.u + self.w) ** 2).mean()
        return StepOut(loss=fit + pen, image=x, data_fit=fit, reg=pen)

    @torch.no_grad()
    def after_step(self, it, image, gen):
        if it % int(self.p["inner"]) == 0:
            self.u = self.denoiser(image + self.w, float(self.p["sigma"]))
            self.w = self.w + image - self.u

    def method_state(self):
        return {"u": self.u, "w": self.w}

    def load_method_state(self, state):
        self.u, self.w = state["u"].to(self.problem.device), state["w"].to(self.problem.device)

    def extra_summary(self):
        return {"denoiser": getattr(self.denoiser, "name", str(self.p["denoiser"]))}
