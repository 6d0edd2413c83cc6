"""DIP regularised by denoising (RED; Romano et al. 2017, DeepRED of Mataev et al. 2019; handbook
Alg. 5) with the u-subproblem solved by accelerated proximal gradient (Reehorst & Schniter 2019).

Objective ``||A f_theta(z) - y||^2/||y||^2 + lambda/2 mean u^T (u - D(u))`` with the splitting
x = f_theta(z) ~ u, penalised by mu/2 mean (x - u)^2. RED's gradient is ``lambda (u - D(u))``
(for a locally homogeneous D with symmetric Jacobian), so the fixed point of the u-subproblem is
``u = (lambda D(u) + mu x) / (lambda + mu)``; APG iterates it with Nesterov momentum::

    theta-step (every iteration):  theta <- Adam(theta, grad_theta [ ||A f_theta(z) - y||^2/||y||^2
                                                                     + mu/2 mean (f_theta(z) - u)^2 ])
    every ``u_every`` iterations:  u_new = (lambda D(v, sigma) + mu x) / (lambda + mu)
                                   t_new = (1 + sqrt(1 + 4 t^2)) / 2
                                   v = u_new + (t - 1)/t_new (u_new - u);  u = u_new;  t = t_new

``D`` as in ``admm`` (``learned`` by default, ``tv``, ``bm3d`` or a CNN weight file) with fixed
strength ``sigma``: a number, or ``auto`` (the shipped preset's), ``sigma = sigma_factor * eta`` with ``eta``
the noise level of the held-out-view CV of PDHG-TV (:func:`ctdip.methods.selection.denoiser_sigma`,
as ``admm``'s ``sigma: auto``; evidence in ``summary.json`` as ``sigma_choice``).
"""

from __future__ import annotations

import math

import torch

from ctdip.methods._dip import DIPMethod
from ctdip.methods._splitting import SPLIT_ALIASES, make_denoiser
from ctdip.methods.selection import CV_PARAMS, CrossValidated


class RED(CrossValidated, DIPMethod):
    name = "red"
    defaults = {"denoiser": "learned", "sigma": 0.05, "sigma_factor": 0.4, "lam": 0.5, "mu": 0.5, "u_every": 5,
                **CV_PARAMS}
    numbers_only = ("lam",)
    param_aliases = SPLIT_ALIASES

    def setup(self, problem, gen):
        self.denoiser = make_denoiser(self)
        sigma = self.params["sigma"]
        self.sigma = self.auto_sigma(problem) if sigma == "auto" else float(sigma)
        with torch.no_grad():
            self.u = self.network(self.z).detach().clone()
        self.v = self.u.clone()
        self.t = 1.0

    def objective(self, it, gen):
        step = super().objective(it, gen)
        return step.plus(0.5 * float(self.params["mu"]) * ((step.image - self.u) ** 2).mean())

    @torch.no_grad()
    def after_step(self, it, image, gen):
        if it % int(self.params["u_every"]) == 0:
            lam, mu = float(self.params["lam"]), float(self.params["mu"])
            u_new = (lam * self.denoiser(self.v, self.sigma) + mu * image) / (lam + mu)
            t_new = (1 + math.sqrt(1 + 4 * self.t * self.t)) / 2
            self.v = u_new + ((self.t - 1) / t_new) * (u_new - self.u)
            self.u, self.t = u_new, t_new

    def method_state(self):
        return {"u": self.u, "v": self.v, "t": self.t}

    def load_method_state(self, state):
        dev = self.problem.device
        self.u, self.v, self.t = state["u"].to(dev), state["v"].to(dev), float(state["t"])

    def extra_summary(self):
        out = {"denoiser": getattr(self.denoiser, "name", str(self.params["denoiser"])), "sigma": self.sigma}
        if self.choice is not None:
            out["sigma_choice"] = self.choice.as_dict()
        return out
