"""Autoencoding sequential DIP, aSeqDIP (Alkhouri et al. 2024, "Image reconstruction via
autoencoding sequential deep image prior"; handbook Alg. 8).

The input is updated by the network itself, never by gradient. With z_0 the FBP (default) and
blocks k = 0 .. K-1 of N network steps each (``block_steps``; its old name ``inner`` still works)::

    theta <- Adam(theta, grad_theta [ ||A f_theta(z_k) - y||^2 / ||y||^2 + lambda mean (f_theta(z_k) - z_k)^2 ])
                                                                     (N times, z_k fixed)
    z_{k+1} = f_theta(z_k)                                           (no gradient)

and the reconstruction is z_K. Defaults (Alkhouri et al.): lambda = 1, N = 2, K = 2000 blocks
(``iterations`` = N K network updates in total; the block count is ``iterations / N``), lr 1e-4.

``tv_weight`` w adds ``w TV(f_theta(z_k))`` to the network loss (TV as in :mod:`ctdip.methods.tv`;
``auto``: the held-out-view CV weight of PDHG-TV times ``tv_factor``, as ``tv``); 0 is the paper's
aSeqDIP.
"""

from __future__ import annotations

import torch

from ctdip.methods._dip import DIPMethod
from ctdip.methods.selection import CV_PARAMS, AutoTVWeight


class ASeq(AutoTVWeight, DIPMethod):
    name = "aseq"
    defaults = {"lam": 1.0, "block_steps": 2, "tv_weight": 0.0, **CV_PARAMS}
    numbers_only = ("lam",)
    param_aliases = {"inner": "block_steps"}

    def setup(self, problem, gen):
        self.z.requires_grad_(False)
        self.z_updates: list[int] = []
        self.resolve_tv_weight(problem)

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
        return {"blocks": len(self.z_updates), "block_steps": int(self.params["block_steps"]), **self.tv_weight_summary()}
