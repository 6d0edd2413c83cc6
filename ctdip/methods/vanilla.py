"""Vanilla DIP (Ulyanov et al. 2018; for CT Baguer et al. 2020; handbook Alg. 1).

    x = f_theta(z),   theta_{t+1} = Adam(theta_t, grad_theta L(theta_t)),
    L(theta) = ||A f_theta(z) - y||^2 / ||y||^2

with z fixed: noise ``z = 0.1 N(0, 1)`` (default) or ``--input fbp`` (the FBP of the data). Without
regularisation the iterates overfit the noise, so the returned ``recon.tif`` is by default
(``output: holdout-ema``) the output EMA at the logged iteration where it best predicted the views
kept out of the fit (every 10th view, ``holdout_fraction``; :class:`ctdip.dip.engine.HoldoutStop`):
a stopping point chosen without a reference. ``output: holdout`` picks among the iterates instead,
``final`` returns the network at its final parameters, ``ema`` the final EMA; the ES-WMV pick is
written as ``recon_es.tif``.
"""

from __future__ import annotations

from ctdip.methods._dip import DIPMethod


class Vanilla(DIPMethod):
    name = "vanilla"
    defaults = {"output": "holdout-ema"}
