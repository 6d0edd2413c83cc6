"""TV-regularised DIP, joint formulation (Liu et al. 2019 "DIP-TV"; Baguer et al. 2020; handbook Alg. 3).

    L(theta) = ||A f_theta(z) - y||^2 / ||y||^2 + lambda TV(f_theta(z)),
    TV(x) = mean_i sqrt(|(grad x)_i|^2 + eps)   (isotropic, forward differences, mean over voxels)
    theta_{t+1} = Adam(theta_t, grad_theta L(theta_t))

``lambda`` is ``tv_weight``. The TV term removes the late-iteration noise that vanilla DIP fits,
so the final iterate stays close to the peak.
"""

from __future__ import annotations

from ctdip.engine import StepOut
from ctdip.methods._dip import DIPMethod


class TVDIP(DIPMethod):
    name = "tv"
    extra_defaults = {"tv_weight": 0.02}

    def objective(self, it, gen):
        x = self.network(self.z)
        fit = self.data_fit(x)
        reg = float(self.p["tv_weight"]) * self.tv(x)
        return StepOut(loss=fit + reg, image=x, data_fit=fit, reg=reg)
