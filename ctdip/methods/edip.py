"""Educated DIP, EDIP (Barbano et al. 2022, "An educated warm start for deep image prior-based
micro CT reconstruction"): a U-Net pretrained on synthetic ellipses (FBP -> phantom) is fine-tuned
on the data with the TV-regularised DIP loss, input the FBP::

    theta_0 = pretrained weights,  z = FBP(y)
    L(theta) = ||A f_theta(z) - y||^2 / ||y||^2 + lambda TV(f_theta(z))
    theta_{t+1} = Adam(theta_t, grad_theta L(theta_t))

(``tv_weight: auto``: lambda by held-out-view CV of PDHG-TV, as in ``tv``) and the returned image
is the minimum-loss iterate, ``argmin_t L(theta_t)`` (Barbano et al. 2022).

``edip-fe`` freezes the encoder: the parameters of ``inc`` (first conv + GroupNorm) and of every
``down.*`` block (strided conv, conv, their GroupNorms) keep their pretrained values; the skip
1x1 convolutions, the up blocks (``up_norm.*``, ``up.*``) and ``outc`` are optimised.

Weights: ``--weights FILE`` (a ``kind: unet`` file of ``ctdip pretrain``); its geometry key must
match the problem's unless ``force``. Without ``--weights`` the pretraining module's cached or
freshly pretrained warm start is used (``ctdip.training.warmstart.ensure_warm_start``).
"""

from __future__ import annotations

import sys

from ctdip.errors import UserError
from ctdip.methods._dip import DIPMethod
from ctdip.methods.selection import CV_PARAMS, AutoTVWeight
from ctdip.networks.weights import build_from_weights, load_weights, problem_geometry_key


class EDIP(AutoTVWeight, DIPMethod):
    name = "edip"
    defaults = {"weights": None, "force": False, "tv_weight": 0.02, **CV_PARAMS}
    freeze_encoder = False

    def setup(self, problem, gen) -> None:
        self.resolve_tv_weight(problem)

    def weights_path(self, problem, arch: dict):
        if self.params["weights"]:
            return self.params["weights"]
        from ctdip.training.warmstart import ensure_warm_start

        return ensure_warm_start(problem, arch, quiet=bool(getattr(self.ctx, "quiet", False)))

    def check_network(self, problem) -> None:
        """With ``--weights``: read the file and check its kind, geometry and dimension now."""
        if self.params["weights"]:
            build_from_weights(self._checked_weights(problem, self.params["weights"], warn=False), self.params["weights"])

    def _checked_weights(self, problem, path, warn: bool = True) -> dict:
        obj = load_weights(path, kind="unet")
        want, have = problem_geometry_key(problem), obj.get("geometry_key")
        if want is not None and have is not None and want != have:
            if not self.params["force"]:
                raise UserError(
                    f"weights were pretrained for another geometry (key {have}, this scan {want}); "
                    "pretrain for this scan or pass --force", path=path)
            if warn and not getattr(self.ctx, "quiet", False):
                sys.stderr.write(f"warning: {path}: geometry key {have} != {want}, used anyway (--force)\n")
        arch = dict(obj["arch"])
        if int(arch.get("dim", problem.dim)) != problem.dim:
            raise UserError(f"weights hold a {arch.get('dim')}D network, the problem is {problem.dim}D", path=path)
        return obj

    def build_network(self, problem):
        path = self.weights_path(problem, self.arch)
        obj = self._checked_weights(problem, path)
        self.arch = dict(obj["arch"])
        self.weights_file = str(path)
        self.weights_geometry_key = obj.get("geometry_key")
        net = build_from_weights(obj, path).to(problem.device)
        if self.freeze_encoder:
            if not hasattr(net, "encoder_parameters"):
                raise UserError(f"method '{self.name}': network '{self.arch.get('name')}' has no encoder to freeze")
            for p in net.encoder_parameters():
                p.requires_grad_(False)
        return net

    def objective(self, it, gen):
        step = super().objective(it, gen)
        return step.plus(self.weight * self.tv(step.image))

    def choose_result(self, res):
        return res.picks.get("min_loss", res.image)

    def extra_summary(self):
        n_frozen = sum(p.numel() for p in self.network.parameters() if not p.requires_grad)
        return {"weights": self.weights_file, "weights_geometry_key": self.weights_geometry_key,
                "frozen_parameters": n_frozen, "returned": "min_loss", **self.tv_weight_summary()}


class EDIPFrozenEncoder(EDIP):
    name = "edip-fe"
    freeze_encoder = True
