"""Stochastic view subsets for the DIP data term (handbook §5.3): ``--set view_batch=K``.

Each step draws K of the n fitted views without replacement, ``S_t ~ U{S : |S| = K}``, from the
engine's seeded generator (so the sequence is fixed by ``--seed`` and restored with it on
``--resume``), and fits only those::

    D_S(x) = (n / K) sum_{v in S} ||A_v x - y_v||^2 / ||y||^2

Every view lies in S with probability K / n, so ``E_S D_S(x) = ||A x - y||^2 / ||y||^2``: the
subset loss is an unbiased estimate of the full data term (same ``||y||^2`` normalisation), and so
is its gradient. A step then costs K / n of the operator's work (forward and adjoint); the
metrics rows log the full data fit, one full projection every ``log_every`` steps. The ``loss``
column and the minimum-loss pick (edip) use the step's subset estimate.

Restricted operators (:class:`ViewSubset`), by backend:

* ``matrix`` on CPU (scipy): the rows of view v are the contiguous block
  ``[v R, (v + 1) R)`` of the CSR matrix (R detector pixels per view), so ``M_S`` is assembled by
  concatenating K row blocks (a copy of nnz(M_S) entries, cheaper than the product itself);
  ``A_S x = M_S x`` and ``A_S^T y = M_S^T y`` (scipy's transposed CSR product, no second copy).
* ``torch``: the ray marcher of the selected views' geometry with the full operator's number of
  samples per ray, i.e. exactly the selected rows of the full operator.
* any other (``astra-cuda``, the CUDA matrix): the full projection, then the selected views (the
  same loss, no saving).
"""

from __future__ import annotations

import numpy as np
import torch

from ctdip.errors import UserError


class ViewSubset:
    """Applies ``A_S`` (and ``A_S^T`` through autograd) for view subsets of a ``RayTransform``."""

    def __init__(self, A):
        self.A = A
        self.n_views = int(A.range_shape[0])
        self.R = int(A.range_shape[1] * A.range_shape[2])
        impl = A._impl
        self.mode = "select"
        if A.backend == "matrix" and getattr(impl, "engine", None) == "scipy":
            self.mode = "rows"
            self._indptr = np.asarray(impl.M.indptr, dtype=np.int64)
        elif A.backend == "torch":
            self.mode = "march"

    def _rows(self, views: np.ndarray):
        """M_S: the CSR row blocks of ``views`` (sorted), concatenated."""
        import scipy.sparse as sp

        M = self.A._impl.M
        ip = self._indptr
        lo, hi = ip[views * self.R], ip[(views + 1) * self.R]
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])
        indptr = np.concatenate([[0]] + [ip[v * self.R + 1:(v + 1) * self.R + 1] - ip[v * self.R] + off
                                         for v, off in zip(views, np.concatenate([[0], np.cumsum(hi - lo)[:-1]]))])
        return sp.csr_matrix((M.data[idx], M.indices[idx], indptr), shape=(len(views) * self.R, M.shape[1]))

    def __call__(self, x: torch.Tensor, views: np.ndarray) -> torch.Tensor:
        """``A_S x`` for x (..., z, y, x) -> (..., K, rows, cols), differentiable."""
        from ctdip.core.operators import _Apply

        A = self.A
        if self.mode == "select":
            return A(x)[..., torch.as_tensor(views, device=x.device), :, :]
        xb, lead = A._prep(x, A.domain_shape, "volume")
        K = len(views)
        shape = (K, *A.range_shape[1:])
        if self.mode == "rows":
            Ms = self._rows(views)
            MsT = Ms.T  # CSC view of the transpose, no copy
            impl = A._impl

            def fwd(v: torch.Tensor) -> torch.Tensor:
                return impl._apply(Ms, v.reshape(v.shape[0], -1)).reshape(v.shape[0], *shape)

            def adj(g: torch.Tensor) -> torch.Tensor:
                return impl._apply(MsT, g.reshape(g.shape[0], -1)).reshape(g.shape[0], *A.domain_shape)
        else:
            from ctdip.core.operators._torch import TorchRayTransform

            full = A._impl
            sub = TorchRayTransform(A.geometry.select(views), A.volume, full.device)
            sub.step = full.step
            sub._n_steps = full.n_steps  # the full operator's samples per ray: exactly its rows
            fwd, adj = sub.forward, sub.adjoint
        return _Apply.apply(xb, lambda v: fwd(v.contiguous()), lambda g: adj(g.contiguous())).reshape(*lead, *shape)


def draw_views(n_views: int, k: int, gen: torch.Generator) -> np.ndarray:
    """K distinct views, sorted, drawn uniformly with ``gen`` (a first-K-of-a-permutation draw)."""
    return np.sort(torch.randperm(n_views, generator=gen, device=gen.device)[:k].cpu().numpy())


def check_view_batch(k: int, n_views: int, method: str) -> int:
    """The effective K: 0 (or K >= n) means every view; a UserError for a negative K."""
    k = int(k)
    if k < 0:
        raise UserError(f"method '{method}': view_batch must be 0 (all views) or a number of views, got {k}")
    return 0 if k >= n_views else k
