"""TV-DIP by half-quadratic splitting (handbook Alg. 4): TV prox on an auxiliary image u.

Splitting ``min_theta ||A f_theta(z) - y||^2/||y||^2 + lambda TV(x)`` with x = f_theta(z) and an
auxiliary u, penalised by mu_k/2 mean (x - u)^2 with an increasing mu_k::

    theta-step (every iteration):  theta <- Adam(theta, grad_theta [ ||A f_theta(z) - y||^2/||y||^2
                                                                     + mu_k/2 mean (f_theta(z) - u)^2 ])
    u-step (every ``u_every``):     u <- argmin_u lambda TV(u) + mu_k/2 mean (x - u)^2
                                       = prox_{(lambda/mu_k) TV_sum}(x)      (FGP, ctdip.networks.denoisers)
    mu-schedule:                   mu_{k+1} = min(mu_growth * mu_k, mu_max)  (per u-step)

TV is the mean over voxels in the objective (TV_sum = n TV), so the prox weight is lambda/mu on
the summed TV. u starts at the network's initial output.
"""

from __future__ import annotations

import torch

from ctdip.engine import StepOut
from ctdip.methods._dip import DIPMethod
from ctdip.networks.denoisers import tv_prox


class TVHQS(DIPMethod):
    name = "tv-hqs"
    extra_defaults = {"tv_weight": 0.02, "mu": 0.5, "mu_growth": 1.005, "mu_max": 50.0, "u_every": 5,
                      "prox_iterations": 30}

    def setup(self, problem, gen):
        with torch.no_grad():
            self.u = self.network(self.z).detach().clone()
        self.mu = float(self.p["mu"])

    def objective(self, it, gen):
        x = self.network(self.z)
        fit = self.data_fit(x)
        pen = 0.5 * self.mu * ((x - self.u) ** 2).mean()
        return StepOut(loss=fit + pen, image=x, data_fit=fit, reg=pen)

    @torch.no_grad()
    def after_step(self, it, image, gen):
        if it % int(self.p["u_every"]) == 0:
            # both objective terms are means over voxels, so the 1/n cancels: weight lambda/mu on TV_sum
            self.u = tv_prox(image, float(self.p["tv_weight"]) / self.mu, int(self.p["prox_iterations"]))
            self.mu = min(self.mu * float(self.p["mu_growth"]), float(self.p["mu_max"]))

    def method_state(self):
        return {"u": self.u, "mu": self.mu}

    def load_method_state(self, state):
        self.u, self.mu = state["u"].to(self.problem.device), float(state["mu"])

    def extra_summary(self):
        return {"final_mu": self.mu}
