"""Finite differences for total variation, shared by PDHG-TV, the TV prox and the DIP TV term.

Forward differences along the axes ``dims`` with a Neumann boundary (zero at the last index)::

    (D_k x)_i = x_{i + e_k} - x_i   if i_k < n_k - 1,   else 0

stacked into a tensor of shape ``(len(dims), *x.shape)``. Its exact adjoint is

    (D^T q)_i = sum_k  q_{k, i - e_k} [i_k > 0] - q_{k, i} [i_k < n_k - 1]

so ``<D x, q> = <x, D^T q>``; the divergence is ``div = -D^T``. The isotropic total variation is
``TV(x) = sum_i |(D x)_i|_2``. All functions are differentiable (autograd) and work on any dtype.
"""

from __future__ import annotations

import torch


def grad(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Forward differences along ``dims`` (Neumann: zero at the last index) -> (len(dims), *x.shape)."""
    out = []
    for d in dims:
        g = torch.zeros_like(x)
        n = x.shape[d]
        if n > 1:
            g.narrow(d, 0, n - 1).copy_(x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1))
        out.append(g)
    return torch.stack(out)


def div(q: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Divergence, the negative adjoint of :func:`grad`: ``<grad x, q> = -<x, div q>``."""
    out = torch.zeros_like(q[0])
    for k, d in enumerate(dims):
        g = q[k]
        n = g.shape[d]
        if n == 1:
            continue
        dk = torch.zeros_like(g)
        dk.narrow(d, 0, 1).copy_(g.narrow(d, 0, 1))
        if n > 2:
            dk.narrow(d, 1, n - 2).copy_(g.narrow(d, 1, n - 2) - g.narrow(d, 0, n - 2))
        dk.narrow(d, n - 1, 1).copy_(-g.narrow(d, n - 2, 1))
        out = out + dk
    return out


def grad_adjoint(q: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The exact adjoint of :func:`grad` (= minus the divergence)."""
    return -div(q, dims)


def tv(x: torch.Tensor, dims: tuple[int, ...]) -> float:
    """Isotropic total variation ``sum_i |(grad x)_i|_2``."""
    return float(grad(x, dims).pow(2).sum(0).sqrt().sum())
