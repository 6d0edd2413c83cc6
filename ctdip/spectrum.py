"""Spectrum of a network's Jacobian: randomised SVD of ``J = d(A f_theta(z)) / d theta`` and the
NTK eigenimages (EDIP paper, Barbano et al. 2022, Alg. 1; handbook Fig. 3).

With ``g(theta) = A f_theta(z)`` (M measurements, P parameters) and ``l = k + p`` probe vectors
(rank ``k``, oversampling ``p``), the randomised range finder of Halko et al. 2011 reads::

    Omega ~ N(0, 1)^(P x l)                 random probes in parameter space
    Y     = J Omega                         l exact JVPs (torch.func.jvp, forward mode)
    (optionally q power steps:  Y <- J (J^T Q), re-orthonormalising in between)
    Q R   = Y                               thin QR, Q: M x l orthonormal
    B     = Q^T J                           l VJPs (torch.func.vjp), rows J^T q_i
    B     = U_B S V^T                       small SVD
    J    ~= (Q U_B) S V^T                   keep the leading k triplets

``A`` is linear and needs no autodiff: ``J w = A (J_f w)`` and ``J^T q = J_f^T (A^T q)`` with
``J_f = d f_theta(z) / d theta`` (image space), so every backend of ``RayTransform`` works.

The neural tangent kernel in image space is ``K = J_f J_f^T``; its eigenvectors are the left
singular vectors of ``J_f`` (the *eigenimages*) and its eigenvalues the squared singular values.
They come out of the same routine with ``op=None``.

Derived quantities:

* Hoyer sparsity of a vector ``v`` in R^n: ``(sqrt(n) - |v|_1 / |v|_2) / (sqrt(n) - 1)`` in [0, 1]
  (0: all entries equal in magnitude, 1: a single non-zero).
* Layer share of a right singular vector ``v``: ``|v_L|^2 / |v|^2`` for the parameters ``v_L`` of
  each layer L (and of the encoder vs the decoder); shares sum to one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ctdip.errors import UserError

Params = Mapping[str, torch.Tensor]


@dataclass
class JacobianSVD:
    """Leading singular triplets of a Jacobian ``J`` (output dim M, parameter dim P)."""

    singular_values: np.ndarray  # (k,), descending
    left: np.ndarray  # (k, M): left singular vectors (rows), in output space
    right: torch.Tensor  # (k, P): right singular vectors (rows), in parameter space (flattened)
    names: list[str]  # parameter names, in the order they are flattened
    sizes: list[int]  # number of entries of each parameter
    timings: dict = field(default_factory=dict)  # seconds per stage
    vectorised: bool = True  # JVPs/VJPs were batched with torch.func.vmap


# --------------------------------------------------------------------------------------------------
# core
# --------------------------------------------------------------------------------------------------
def _flatten(params: Params) -> tuple[torch.Tensor, list[str], list[torch.Size]]:
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return flat, names, shapes


def _unflatten(flat: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, s in zip(names, shapes):
        k = math.prod(s)
        out[n] = flat[i : i + k].view(s)
        i += k
    return out


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, bool]:
    """Apply ``fn`` to each row of ``rows`` with ``torch.func.vmap``; fall back to a loop for
    networks with operations vmap does not support."""
    try:
        return torch.func.vmap(fn, chunk_size=chunk)(rows), True
    except (RuntimeError, NotImplementedError):
        return torch.stack([fn(r) for r in rows]), False


def _orth(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (columns) of the column span of ``y`` (thin QR, in float64)."""
    q, _ = torch.linalg.qr(y.double(), mode="reduced")
    return q


def randomized_jacobian_svd(
    f: Callable[[Params], torch.Tensor],
    params: Params,
    rank: int,
    op: Callable[[torch.Tensor], torch.Tensor] | None = None,
    op_adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
    oversample: int = 10,
    power_iters: int = 0,
    seed: int = 0,
    chunk: int | None = 16,
) -> JacobianSVD:
    """Randomised SVD of ``J = d op(f(theta)) / d theta`` at ``params`` (module docstring).

    f: maps a dict of parameter tensors to an output tensor (e.g. an image (1, 1, H, W)).
    op: linear map applied to a *batch* of outputs, ``(b, *f_shape) -> (b, ...)``; None = identity.
    op_adjoint: its adjoint ``(b, ...) -> (b, *f_shape)``; when None it is obtained with autograd
        (the gradient of ``<op(x), q>`` in ``x``), which is exact because ``op`` is linear.
    rank: number of singular triplets returned (k); ``oversample`` extra probes (p);
    power_iters: subspace iterations (q) that sharpen a slowly decaying spectrum.
    chunk: probes per vmap batch (memory vs speed); None = all at once.
    """
    if rank < 1:
        raise UserError(f"--rank must be at least 1, got {rank}")
    t0 = time.perf_counter()
    theta, names, shapes = _flatten(params)
    P = theta.numel()
    dev, dt = theta.device, theta.dtype

    def image(flat: torch.Tensor) -> torch.Tensor:
        return f(_unflatten(flat, names, shapes))

    with torch.no_grad():
        out0 = image(theta)
    f_shape = tuple(out0.shape)

    def apply_op(x: torch.Tensor) -> torch.Tensor:  # (b, *f_shape) -> (b, M)
        x = x.to(dt)
        return (op(x) if op is not None else x).reshape(x.shape[0], -1)

    range_shape = tuple(op(out0.unsqueeze(0)).shape[1:]) if op is not None else f_shape
    M = math.prod(range_shape)

    def apply_adj(q: torch.Tensor) -> torch.Tensor:  # (b, M) -> (b, *f_shape)
        q = q.to(dt).reshape(q.shape[0], *range_shape)
        if op is None:
            return q.reshape(q.shape[0], *f_shape)
        if op_adjoint is not None:
            return op_adjoint(q).reshape(q.shape[0], *f_shape)
        x = torch.zeros((q.shape[0], *f_shape), dtype=dt, device=dev, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad((op(x) * q).sum(), x)
        return g

    l = min(rank + oversample, P, M)
    if rank > l:
        raise UserError(f"--rank {rank} exceeds the Jacobian's size ({M} x {P})")

    def jvp_one(w: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(image, (theta,), (w,))[1]

    _, vjp_fn = torch.func.vjp(image, theta)

    def vjp_one(c: torch.Tensor) -> torch.Tensor:
        return vjp_fn(c)[0]

    timings: dict[str, float] = {"setup_s": time.perf_counter() - t0}
    vec = True

    def J(W: torch.Tensor) -> torch.Tensor:  # (b, P) -> (b, M)
        nonlocal vec
        t = time.perf_counter()
        Y, ok = _batched(jvp_one, W.to(dt), chunk)
        vec = vec and ok
        timings["jvp_s"] = timings.get("jvp_s", 0.0) + time.perf_counter() - t
        return apply_op(Y.detach())

    def JT(C: torch.Tensor) -> torch.Tensor:  # (b, M) -> (b, P)
        nonlocal vec
        t = time.perf_counter()
        X = apply_adj(C).detach()
        G, ok = _batched(vjp_one, X, chunk)
        vec = vec and ok
        timings["vjp_s"] = timings.get("vjp_s", 0.0) + time.perf_counter() - t
        return G.detach()

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    omega = torch.randn((l, P), generator=gen, dtype=torch.float32).to(device=dev, dtype=dt)
    Q = _orth(J(omega).T)  # (M, l)
    del omega
    for _ in range(power_iters):
        Z = _orth(JT(Q.T).T)  # (P, l)
        Q = _orth(J(Z.T).T)
    B = JT(Q.T)  # (l, P)
    t = time.perf_counter()
    small = B.double() if P * l <= 50_000_000 else B.float()
    U_b, S, Vh = torch.linalg.svd(small, full_matrices=False)
    left = (Q.to(U_b.dtype) @ U_b).T  # (l, M)
    timings["svd_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return JacobianSVD(
        singular_values=S[:rank].cpu().numpy().astype(np.float64),
        left=left[:rank].cpu().numpy(),
        right=Vh[:rank].to(torch.float32).cpu(),
        names=names,
        sizes=[math.prod(s) for s in shapes],
        timings=timings,
        vectorised=vec,
    )


# --------------------------------------------------------------------------------------------------
# derived quantities
# --------------------------------------------------------------------------------------------------
def hoyer(v: np.ndarray | torch.Tensor) -> float:
    """Hoyer sparsity ``(sqrt(n) - |v|_1/|v|_2) / (sqrt(n) - 1)``: 0 = flat, 1 = one spike."""
    v = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64).ravel()
    n = v.size
    l2 = np.linalg.norm(v)
    if n < 2 or l2 == 0:
        return 0.0
    return float((math.sqrt(n) - np.abs(v).sum() / l2) / (math.sqrt(n) - 1))


def layer_of(name: str) -> str:
    """Layer a parameter belongs to: its module path without the trailing ``weight``/``bias``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def parameter_shares(right: torch.Tensor, names: list[str], sizes: list[int], groups: Mapping[str, str] | None = None
                     ) -> tuple[list[str], np.ndarray]:
    """Share ``|v_G|^2 / |v|^2`` of each group G for each right singular vector (rows of ``right``).

    ``groups`` maps parameter name -> group label (default: :func:`layer_of`). Returns the group
    labels in first-seen order and a (k, n_groups) array whose rows sum to one.
    """
    labels: list[str] = []
    idx = []
    for n in names:
        g = groups[n] if groups is not None else layer_of(n)
        if g not in labels:
            labels.append(g)
        idx.append(labels.index(g))
    sq = right.double() ** 2
    out = np.zeros((right.shape[0], len(labels)))
    start = 0
    for i, s in zip(idx, sizes):
        out[:, i] += sq[:, start : start + s].sum(1).numpy()
        start += s
    tot = out.sum(1, keepdims=True)
    return labels, out / np.where(tot > 0, tot, 1.0)


def encoder_decoder_groups(net: torch.nn.Module) -> dict[str, str]:
    """Parameter name -> ``encoder`` | ``decoder``: the encoder is ``net.encoder_parameters()``
    when the network defines it (ctdip's U-Net: ``inc`` and the ``down`` blocks, what EDIP-FE
    freezes); otherwise parameters under modules named ``inc``/``down``/``enc*`` count as encoder."""
    enc_ids = set()
    if hasattr(net, "encoder_parameters"):
        enc_ids = {id(p) for p in net.encoder_parameters()}
    out = {}
    for n, p in net.named_parameters():
        top = n.split(".", 1)[0].lower()
        is_enc = id(p) in enc_ids if enc_ids else (top in ("inc", "down") or top.startswith("enc"))
        out[n] = "encoder" if is_enc else "decoder"
    return out
