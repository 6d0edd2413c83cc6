"""Subspace DIP (Barbano et al. 2024, "Image reconstruction via deep image prior subspaces", TMLR;
handbook §5.2): the DIP fine-tuning of a pretrained network restricted to a low-dimensional,
sparse subspace of its parameters, learned from the pretraining trajectory.

Subspace. With ``theta_1 .. theta_T`` the periodic checkpoints that ``ctdip pretrain`` writes along
its trajectory (``<weights stem>.ckpt/step_NNNNNN.pt``, in step order), flattened to vectors of
the P trainable parameters, and their mean ``theta_bar``::

    Theta_c = [theta_1 - theta_bar, ..., theta_T - theta_bar]   (P x T, centred)
    Theta_c = U S V^T  (thin SVD),   U_k = the first k left singular vectors
                                     (k = min(subspace_dim, T - 1), the rank of Theta_c)

(each column's sign fixed so its largest-magnitude entry is positive, so the basis is a function of
the checkpoints alone). Sparsification by leverage scores: ``l_i = ||(U_k)_{i,:}||^2`` (sum_i l_i
= k) measures how much parameter i takes part in the subspace; the mask ``M = diag(m)`` keeps the
``ceil(keep P)`` parameters of largest leverage (``keep``, the fraction kept) and freezes the rest.

Reconstruction. With ``theta_0`` the weights file (the selected pretrained network), the FBP as
input and ``B = M U_k``::

    theta(c) = theta_0 + B c,      c in R^k,  c_0 = 0
    L(c) = ||A f_{theta(c)}(z) - y||^2 / ||y||^2 + lambda TV(f_{theta(c)}(z))

optimised over the k coefficients only: ``optimizer: adam`` (first order; grad_c L = B^T
grad_theta L, one backward through the network) or ``optimizer: lbfgs`` (second order: a
quasi-Newton model of the k x k Hessian of L from the last 10 gradient differences, strong-Wolfe
line search; cheap because k is small). theta - theta_0 always lies in span(B): the parameters
outside the mask never move. The returned image is the final iterate (the small subspace is the
regulariser, Barbano et al. 2024).

``--weights TRAJECTORY``: the weights file ``ctdip pretrain --out FILE --checkpoint-every N``
wrote; its trajectory folder ``FILE.ckpt`` (the stem plus ``.ckpt``, beside it) must hold at least
two ``step_*.pt`` checkpoints of the same architecture. Resume: the basis ``B`` (and ``c``) travel
in the run's checkpoint, so ``--resume`` continues with exactly that basis; the basis rebuilt from
the trajectory must agree with it (max difference 1e-4) or the resume is refused.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from ctdip.errors import UserError
from ctdip.methods.edip import EDIP
from ctdip.networks.weights import load_weights


def trajectory_files(weights: str | Path) -> list[Path]:
    """The periodic checkpoints ``step_*.pt`` of a pretraining run, in step order."""
    from ctdip.training.trainer import checkpoint_dir

    folder = checkpoint_dir(weights)
    files = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
    if len(files) < 2:
        raise UserError(f"subspace-dip needs the pretraining trajectory: at least two step_*.pt checkpoints in "
                        f"{folder} (run ctdip pretrain with --checkpoint-every N), found {len(files)}", path=weights)
    return files


def subspace_basis(thetas: torch.Tensor, k: int, keep: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, mask, singular values)`` from checkpoints ``thetas`` (T x P), see module docstring.

    B = M U_k (P x k, float32), mask (P,) bool, S (the k singular values of the centred matrix).
    """
    T, P = thetas.shape
    k = int(k)
    if not 1 <= k <= T - 1:
        raise UserError(f"subspace-dip: subspace_dim must be between 1 and {T - 1} (the trajectory has {T} checkpoints), got {k}")
    if not 0 < float(keep) <= 1:
        raise UserError(f"subspace-dip: keep must be in (0, 1], got {keep}")
    X = (thetas.double() - thetas.double().mean(0, keepdim=True)).T  # P x T
    # thin SVD through the T x T Gram matrix: X^T X = V S^2 V^T, U = X V / S
    evals, V = torch.linalg.eigh(X.T @ X)
    order = torch.argsort(evals, descending=True)[:k]
    s = evals[order].clamp_min(0).sqrt()
    if float(s[-1]) <= 1e-12 * float(s[0]):
        raise UserError(f"subspace-dip: the trajectory spans fewer than {k} directions; lower subspace_dim")
    U = (X @ V[:, order]) / s
    U, _ = torch.linalg.qr(U)  # re-orthonormalise (the Gram route loses a little accuracy)
    big = U.abs().argmax(0)
    U = U * torch.sign(U[big, torch.arange(k)])
    lev = (U * U).sum(1)
    n_keep = max(1, math.ceil(float(keep) * P))
    mask = torch.zeros(P, dtype=torch.bool)
    mask[torch.argsort(lev, descending=True, stable=True)[:n_keep]] = True
    B = (U * mask[:, None]).float()
    return B, mask, s.float()


class SubspaceDIP(EDIP):
    name = "subspace-dip"
    defaults = {**EDIP.defaults, "subspace_dim": 16, "keep": 0.5}

    # ------------------------------------------------------------------ building blocks
    def weights_path(self, problem, arch):
        if not self.params["weights"]:
            raise UserError("method 'subspace-dip' needs --weights FILE: the output of ctdip pretrain "
                            "--checkpoint-every N (its FILE.ckpt folder holds the trajectory)")
        return self.params["weights"]

    def build_network(self, problem):
        net = super().build_network(problem)
        for p in net.parameters():
            p.requires_grad_(False)
        self._names = [n for n, _ in net.named_parameters()]
        self._shapes = [p.shape for _, p in net.named_parameters()]
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])
        self.files = trajectory_files(self.weights_file)
        B, self.mask, self.singular_values = self._basis_from_trajectory()
        self.B = B.to(problem.device)
        self.theta0 = self.theta0.to(problem.device)
        self.c = torch.zeros(B.shape[1], device=problem.device, requires_grad=True)
        return net

    def _basis_from_trajectory(self):
        rows = []
        for f in self.files:
            obj = load_weights(f, kind="unet")
            if obj["arch"] != self.arch:
                raise UserError("trajectory checkpoint has another architecture than the weights file", path=f)
            sd = obj["state_dict"]
            try:
                rows.append(torch.cat([sd[n].reshape(-1).float() for n in self._names]))
            except KeyError as e:
                raise UserError(f"trajectory checkpoint lacks parameter {e}", path=f) from None
        k = min(int(self.params["subspace_dim"]), len(rows) - 1)  # the centred trajectory has rank <= T - 1
        if k < int(self.params["subspace_dim"]) and not getattr(self.ctx, "quiet", False):
            sys.stderr.write(f"warning: {self.weights_file}: the trajectory has {len(rows)} checkpoints; "
                             f"subspace_dim {self.params['subspace_dim']} lowered to {k}\n")
        return subspace_basis(torch.stack(rows), k, float(self.params["keep"]))

    def theta(self, c: torch.Tensor | None = None) -> torch.Tensor:
        """theta(c) = theta_0 + B c (flat, P)."""
        return self.theta0 + self.B @ (self.c if c is None else c)

    def image(self, c: torch.Tensor | None = None) -> torch.Tensor:
        """f_{theta(c)}(z) through ``torch.func.functional_call`` (the network keeps theta_0)."""
        flat = self.theta(c)
        params, o = {}, 0
        for n, shape in zip(self._names, self._shapes):
            m = math.prod(shape)
            params[n] = flat[o:o + m].view(shape)
            o += m
        return torch.func.functional_call(self.network, params, (self.z,))

    # ------------------------------------------------------------------ DIPModel hooks
    def param_groups(self, lr):
        return [{"params": [self.c], "lr": lr}]

    def output(self):
        return self.image()

    @torch.no_grad()
    def final_image(self, engine):
        return self.image().detach()

    def method_state(self):
        return {"c": self.c.detach().clone(), "basis": self.B.detach().clone()}

    def load_method_state(self, state):
        saved = state["basis"].to(self.B.device)
        if saved.shape != self.B.shape or float((saved - self.B).abs().max()) > 1e-4:
            raise UserError("the pretraining trajectory changed since this run's checkpoint (its subspace basis "
                            "differs); start afresh without --resume", path=self.weights_file)
        self.B = saved
        with torch.no_grad():
            self.c.copy_(state["c"].to(self.c.device))

    def choose_result(self, res):
        return res.image

    def extra_summary(self):
        return {"weights": self.weights_file, "weights_geometry_key": self.weights_geometry_key,
                "trajectory_checkpoints": len(self.files), "subspace_dim": int(self.B.shape[1]),
                "masked_parameters": int(self.mask.sum()), "network_parameters": int(self.theta0.numel()),
                "singular_values": [round(float(v), 6) for v in self.singular_values],
                "coefficients_norm": float(self.c.detach().norm()), "returned": "final"}
