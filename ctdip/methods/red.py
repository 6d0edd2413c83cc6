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

``momentum`` (``--set momentum=...``): ``nesterov`` (the APG above, Alg. 5, the class default);
``lr``, the shipped preset's: the extrapolation factor times the learning-rate factor s_t of the
network's schedule (:meth:`DIPMethod.lr_scale`), ``v = u_new + s_t (t - 1)/t_new (u_new - u)``,
so the momentum fades with the network's steps, as ``admm``'s dual step does with
``dual_schedule: lr``; ``none`` (``t`` stays 1, ``v = u``: the plain fixed-point iteration); or
``restart`` (adaptive restart, O'Donoghue & Candes 2015: ``t <- 1`` whenever the extrapolation
opposes the step, ``<v - u_new, u_new - u> > 0``). Why not plain APG: where A has a large null
space (sparse views) x follows u there through the mu coupling, so the joint map of (x, u) is close
to the identity in those directions, and a factor (t - 1)/t_new -> 1 turns any persistent pull of D
into a drift that the data cannot see. Measured on the tuning CT slice z=50, 30 views, 2000
iterations (``benchmarks/results/quality_tuning_runs.md``): ``nesterov`` peaked at 26.69 dB near
iteration 1300 and returned 25.26 (the iterate fell to 24.55 by 2000 while the learning rate
decayed, the EMA's data residual within 1.05 x its least value, so ``guard`` does not see it),
``restart`` 26.00, ``none`` 27.19, ``lr`` 27.04 (oracle PDHG-TV 27.53). The number of restarts (every
update with ``none``) is in ``summary.json`` as ``momentum_restarts``. ``guard`` F > 0 (default 0)
is ``admm``'s divergence guard (:class:`ctdip.methods._splitting.GuardedOutput`).

**Budget.** The momentum is not the only instability: the preset run for 3000 iterations instead of
2000 peaked at 27.18 dB near iteration 1050 on that slice and collapsed to 12.60 (the EMA's data
residual grew 2.5 x, so ``guard: 3`` did not fire). Keep ``iterations`` at the preset's 2000, whose
cosine decay has shrunk the steps before that point.

``D`` as in ``admm`` (``learned`` by default, ``tv``, ``bm3d`` or a CNN weight file) with fixed
strength ``sigma``: a number, or ``auto`` (the shipped preset's), ``sigma = sigma_factor * eta`` with ``eta``
the noise level of the held-out-view CV of PDHG-TV (:func:`ctdip.methods.selection.denoiser_sigma`,
as ``admm``'s ``sigma: auto``; evidence in ``summary.json`` as ``sigma_choice``).
"""

from __future__ import annotations

import math

import torch

from ctdip.core.validate import choice
from ctdip.methods._dip import DIPMethod
from ctdip.methods._splitting import GUARD_PARAMS, SPLIT_ALIASES, GuardedOutput, make_denoiser
from ctdip.methods.selection import CV_PARAMS, CrossValidated

#: ``momentum`` of the u-iteration (module docstring)
MOMENTA = ("nesterov", "none", "restart", "lr")


class RED(GuardedOutput, CrossValidated, DIPMethod):
    name = "red"
    defaults = {"denoiser": "learned", "sigma": 0.05, "sigma_factor": 0.4, "lam": 0.5, "mu": 0.5, "u_every": 5,
                "momentum": "nesterov", **GUARD_PARAMS, **CV_PARAMS}
    numbers_only = ("lam",)
    param_aliases = SPLIT_ALIASES

    def check(self, params):
        super().check(params)
        choice(str(params["momentum"]), "--set momentum", MOMENTA)

    def setup(self, problem, gen):
        self.denoiser = make_denoiser(self)
        sigma = self.params["sigma"]
        self.sigma = self.auto_sigma(problem) if sigma == "auto" else float(sigma)
        with torch.no_grad():
            self.u = self.network(self.z).detach().clone()
        self.v = self.u.clone()
        self.t = 1.0
        self.restarts = 0
        self.start_guard()

    def objective(self, it, gen):
        step = super().objective(it, gen)
        return step.plus(0.5 * float(self.params["mu"]) * ((step.image - self.u) ** 2).mean())

    @torch.no_grad()
    def after_step(self, it, image, gen):
        self.watch(it, image)
        if it % int(self.params["u_every"]) == 0:
            lam, mu = float(self.params["lam"]), float(self.params["mu"])
            u_new = (lam * self.denoiser(self.v, self.sigma) + mu * image) / (lam + mu)
            mode = self.params["momentum"]
            if mode == "none" or (mode == "restart" and float(((self.v - u_new) * (u_new - self.u)).sum()) > 0):
                self.t = 1.0
                self.restarts += 1
            t_new = (1 + math.sqrt(1 + 4 * self.t * self.t)) / 2
            beta = (self.t - 1) / t_new
            if mode == "lr":
                beta *= self.lr_scale(it)
            self.v = u_new + beta * (u_new - self.u)
            self.u, self.t = u_new, t_new

    def method_state(self):
        return {"u": self.u, "v": self.v, "t": self.t, "restarts": self.restarts, **self.guard_state()}

    def load_method_state(self, state):
        dev = self.problem.device
        self.u, self.v, self.t = state["u"].to(dev), state["v"].to(dev), float(state["t"])
        self.restarts = int(state.get("restarts", 0))
        self.load_guard_state(state)

    def extra_summary(self):
        out = {"denoiser": getattr(self.denoiser, "name", str(self.params["denoiser"])), "sigma": self.sigma,
               "momentum": self.params["momentum"], "momentum_restarts": self.restarts}
        if self.choice is not None:
            out["sigma_choice"] = self.choice.as_dict()
        return {**out, **self.guard_summary()}
