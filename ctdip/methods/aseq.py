"""Autoencoding sequential DIP, aSeqDIP (Alkhouri et al. 2024, "Image reconstruction via
autoencoding sequential deep image prior"; handbook Alg. 8).

The input is updated by the network itself, never by gradient. With z_0 the FBP (default) and
blocks k = 0 .. K-1 of N network steps each (``block_steps``; its old name ``inner`` still works)::

    theta <- Adam(theta, grad_theta [ ||A f_theta(z_k) - y||^2 / ||y||^2 + lambda mean (f_theta(z_k) - z_k)^2 ])
                                                                     (N times, z_k fixed)
    z_{k+1} = f_theta(z_k)                                           (no gradient)

and the reconstruction is z_K. The paper's values: lambda = 1, N = 2, K = 2000 blocks at lr 1e-4
(``iterations`` = N K network updates in total; the block count is ``iterations / N``). ctdip's
preset (chosen on the tuning objects, ``presets/methods/aseq.yaml``): lambda = 0.1, N = 2, a budget
of 4000 steps at lr 2e-3 with cosine decay, and the discrepancy stop below.

``tv_weight`` w adds ``w TV(f_theta(z_k))`` to the network loss (TV as in :mod:`ctdip.methods.tv`;
``auto``: the held-out-view CV weight of PDHG-TV times ``tv_factor``, as ``tv``); 0 is the paper's
aSeqDIP.

``discrepancy`` tau > 0 adds a stopping rule in the spirit of Morozov's discrepancy principle:
the run ends after the first step whose data fit falls below tau times the noise level of the
data,

    ||A f_theta(z_k) - y||^2 / ||y||^2  <  tau eta^2,    eta^2 = min_lambda CV(lambda)

(``eta^2``: the least held-out-view residual of PDHG-TV, :mod:`ctdip.methods.selection`, computed
from the data alone; the same CV gives ``tv_weight: auto``). Fitting below the noise means fitting
the noise: on the tuning walnut (5 % Gaussian noise) aseq's image peaks where the data fit is
0.46-0.97 ``eta^2`` and has lost 2.5-10 dB by step 4000, while on the tuning head-CT slices
(Poisson, 1e4 photons) the data fit stays above 0.74 ``eta^2`` and the image still improves at step
4000 (``benchmarks/results/aseq_discrepancy.md``). The preset's tau is 0.5; 0 (the class default)
is the paper's aSeqDIP, which runs every step.
"""

from __future__ import annotations

import torch

from ctdip.methods._dip import DIPMethod
from ctdip.methods.selection import CV_PARAMS, AutoTVWeight, noise_level2


class ASeq(AutoTVWeight, DIPMethod):
    name = "aseq"
    defaults = {"lam": 1.0, "block_steps": 2, "tv_weight": 0.0, "discrepancy": 0.0, **CV_PARAMS}
    numbers_only = ("lam",)
    param_aliases = {"inner": "block_steps"}

    def setup(self, problem, gen):
        self.z.requires_grad_(False)
        self.z_updates: list[int] = []
        self.resolve_tv_weight(problem)
        self.tau = float(self.params["discrepancy"])
        self.eta2 = noise_level2(self.cross_validate(problem)) if self.tau > 0 else None
        self.threshold = None if self.eta2 is None else self.tau * self.eta2
        self.stop_fit: float | None = None  # the data fit of the step that ended the run

    def param_groups(self, lr):
        return [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr": lr}]

    def objective(self, it, gen):
        step = super().objective(it, gen)
        return step.plus(self.plus_tv(float(self.params["lam"]) * ((step.image - self.z) ** 2).mean(), step.image))

    @torch.no_grad()
    def after_step(self, it, image, gen):
        if it % int(self.params["block_steps"]) == 0:
            self.z.copy_(self.network(self.z))
            self.z_updates.append(it)

    def stop_after(self, it, out):
        """The discrepancy stop (module docstring): the step's data fit below ``tau eta^2``."""
        if self.threshold is None or out["data_fit"] >= self.threshold:
            return False
        self.stop_fit = float(out["data_fit"])
        return True  # the engine records the iteration (model_stopped_at)

    @torch.no_grad()
    def final_image(self, engine):
        if engine.iteration % int(self.params["block_steps"]) == 0:
            return self.z.detach().clone()  # z_K
        return self.network(self.z).detach()

    def method_state(self):
        return {"z_updates": list(self.z_updates)}

    def load_method_state(self, state):
        self.z_updates = list(state["z_updates"])

    def extra_summary(self):
        out = {"blocks": len(self.z_updates), "block_steps": int(self.params["block_steps"]), **self.tv_weight_summary()}
        if self.threshold is not None:
            out["discrepancy_stop"] = {
                "rule": "end the run after the first step whose data fit ||A f(z) - y||^2/||y||^2 is below "
                        "tau x eta^2 (eta^2: least held-out-view CV residual of PDHG-TV)",
                "tau": self.tau, "noise_level2": self.eta2, "threshold": self.threshold,
                "stopped_at": self.engine.model_stopped_at, "data_fit": self.stop_fit, "cv": self.choice.as_dict()}
        return out
