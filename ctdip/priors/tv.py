"""Total variation: finite differences, the TV norm of the DIP TV term and the TV prox, shared by
PDHG-TV, tv / tv-hqs and the ``tv`` denoiser.

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


# --------------------------------------------------------------------------- network-shaped (N, C, *S)
def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def spatial_grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences over the spatial dims (2..) with zero at the far boundary
    (:func:`grad` over ``dims = (2, ..., ndim - 1)``). (N, C, *S) -> (d, N, C, *S)."""
    return grad(x, _spatial(x))


def spatial_div(p: torch.Tensor) -> torch.Tensor:
    """Divergence, the negative adjoint of :func:`spatial_grad`."""
    return div(p, _spatial(p[0]))


def tv_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Isotropic total variation, averaged over voxels: ``mean_i sqrt(sum_k (D_k x)_i^2 + eps)``.

    Averaging (not summing) keeps a TV weight meaningful across image sizes."""
    g = spatial_grad(x)
    return torch.sqrt((g * g).sum(0) + eps).mean()


def tv_prox(x: torch.Tensor, lam: float | torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """``argmin_u 1/2 ||u - x||^2 + lam * sum_i |grad u|_i`` by the fast gradient projection (FGP) on the
    dual (Beck & Teboulle 2009): with ``u(p) = x + lam div p`` and ``L = 4 d`` (d spatial dims),

        p_k = Proj_{|p|<=1}( r_k + 1/(L lam) grad u(r_k) ),
        t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,  r_{k+1} = p_k + (t_k - 1)/t_{k+1} (p_k - p_{k-1}),

    returning ``u(p)``. ``x`` is network-shaped, (N, C, *S)."""
    lam_f = float(lam)
    if lam_f <= 0:
        return x.clone()
    d = x.ndim - 2
    L = 4.0 * d
    p = torch.zeros((d, *x.shape), dtype=x.dtype, device=x.device)
    r = p.clone()
    t = 1.0
    for _ in range(iterations):
        u = x + lam_f * spatial_div(r)
        p_new = r + spatial_grad(u) / (L * lam_f)
        nrm = torch.sqrt((p_new * p_new).sum(0, keepdim=True)).clamp_min(1.0)
        p_new = p_new / nrm
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        r = p_new + ((t - 1) / t_new) * (p_new - p)
        p, t = p_new, t_new
    return x + lam_f * spatial_div(p)
