"""Randomised SVD of a Jacobian ``J = d op(f(theta)) / d theta`` from JVPs and VJPs (EDIP paper,
Barbano et al. 2022, Alg. 1; Halko, Martinsson, Tropp 2011).

With ``g(theta) = op(f(theta))`` (M outputs, P parameters) and ``l = k + p`` probe vectors
(rank ``k``, oversampling ``p``), the randomised range finder reads::

    Omega ~ N(0, 1)^(P x l)                 random probes in parameter space
    Y     = J Omega                         l exact JVPs (torch.func.jvp, forward mode)
    (optionally q power steps:  Y <- J (J^T Q), re-orthonormalising in between)
    Q R   = Y                               thin QR, Q: M x l orthonormal
    B     = Q^T J                           l VJPs (torch.func.vjp), rows J^T q_i
    B     = U_B S V^T                       small SVD
    J    ~= (Q U_B) S V^T                   keep the leading k triplets

A linear ``op`` needs no autodiff: ``J w = op(J_f w)`` and ``J^T q = J_f^T (op^T q)`` with
``J_f = d f(theta) / d theta``; ``op^T`` is given or obtained as the gradient of ``<op(x), q>``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
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

