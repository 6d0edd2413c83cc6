"""The ``matrix`` backend: ASTRA's 2D CPU projector as a sparse system matrix.

The matrix M (rays x pixels) comes from ``astra.projector.matrix`` for the geometry's 2D vector
form (``line_fanflat`` for fan beams; ``linear`` (default), ``line`` or ``strip`` for parallel
beams), built view-chunk by view-chunk under a progress bar, with its columns permuted from ASTRA's
2D row order (row 0 at max y) to ours (y index increasing with y, see ``ctdip.geometry``). Then::

    A x = M x,        A^T y = M^T y

one sparse-dense product each; leading batch dims become columns of the dense factor. M and M^T
are kept as CSR (torch, or scipy when that is faster on CPU). M is cached on disk as ``.npz``
under ``$CTDIP_CACHE_DIR`` (else ``$XDG_CACHE_HOME/ctdip``, else ``~/.cache/ctdip``), in
``matrices/<geometry hash>-<volume hash>-<kernel>.npz``. Building is refused with a UserError when
the estimated size exceeds ``$CTDIP_MATRIX_BUDGET_GB`` (default: a quarter of the RAM).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ctdip.errors import UserError
from ctdip.geometry import ProjectionGeometry, VolumeGeometry
from ctdip.runs import atomic_write_bytes

PARALLEL_KERNELS = ("linear", "line", "strip")
FAN_KERNELS = ("line_fanflat",)
# CPU sparse product engine: "scipy" was faster than torch's CSR matmul on 2 threads
# (benchmarks/results/operators.md); CUDA always uses torch.
SPMM_ENGINE = os.environ.get("CTDIP_SPMM", "scipy")
_BYTES_PER_NNZ = 2 * (4 + 4) + 8  # M and M^T as float32 + int32 indices, plus build slack


def cache_dir() -> Path:
    """ctdip's cache folder: $CTDIP_CACHE_DIR, else $XDG_CACHE_HOME/ctdip, else ~/.cache/ctdip."""
    env = os.environ.get("CTDIP_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ctdip"


def memory_budget_bytes() -> float:
    env = os.environ.get("CTDIP_MATRIX_BUDGET_GB")
    if env:
        try:
            return float(env) * 2**30
        except ValueError:
            raise UserError(f"CTDIP_MATRIX_BUDGET_GB must be a number, got {env!r}") from None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return total / 4


def default_kernel(geometry: ProjectionGeometry) -> str:
    return "linear" if geometry.beam == "parallel" else "line_fanflat"


def estimate_nnz(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str) -> int:
    """Upper estimate of the matrix's non-zeros: rays x pixels touched per ray."""
    _, ny, nx = volume.shape
    per_ray = {"line": 2.0, "linear": 2.0, "strip": 3.0, "line_fanflat": 2.0}.get(kernel, 3.0)
    return int(geometry.n_views * geometry.det_shape[1] * per_ray * max(ny, nx) * 1.5)


def check_supported(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str) -> None:
    if not geometry.is_2d or volume.shape[0] != 1:
        raise UserError(f"the matrix backend needs a 2D geometry and a one-slice volume "
                        f"(got {geometry.kind}, volume {volume.shape}); use backend='torch'")
    if abs(volume.center_mm[0]) > 1e-9 * max(1.0, volume.voxel_mm[0]):
        raise UserError("the matrix backend needs the 2D volume slice centred at z = 0")
    allowed = PARALLEL_KERNELS if geometry.beam == "parallel" else FAN_KERNELS
    if kernel not in allowed:
        raise UserError(f"kernel {kernel!r} does not fit a {geometry.kind} geometry; use one of {allowed}")


def _flip_rows(M: sp.csr_matrix, ny: int, nx: int) -> sp.csr_matrix:
    """Permute columns from ASTRA 2D pixel order (row 0 at max y) to ours (row 0 at min y)."""
    j = M.indices
    M.indices = (((ny - 1) - j // nx) * nx + j % nx).astype(np.int32)
    M.has_sorted_indices = False
    M.sort_indices()
    return M


def build_matrix(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str,
                 progress: bool | None = None) -> sp.csr_matrix:
    """Assemble the float32 CSR system matrix from ASTRA, in ctdip's pixel order."""
    import astra

    _, ny, nx = volume.shape
    vg = volume.to_astra(2)
    n = geometry.n_views
    chunk = max(1, min(n, 2_000_000 // max(1, geometry.det_shape[1] * max(ny, nx) * 2)))
    starts = list(range(0, n, chunk))
    parts = []
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.console import Console

    console = Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    with Progress(TextColumn("building system matrix"), BarColumn(), TextColumn("{task.completed}/{task.total} views"),
                  TimeElapsedColumn(), console=console, disable=not show, transient=True) as bar:
        task = bar.add_task("matrix", total=n)
        for s in starts:
            sub = geometry.select(np.arange(s, min(s + chunk, n)))
            pid = astra.create_projector(kernel, sub.to_astra(2), vg)
            mid = None
            try:
                mid = astra.projector.matrix(pid)
                parts.append(astra.matrix.get(mid).astype(np.float32).tocsr())
            finally:
                if mid is not None:
                    astra.matrix.delete(mid)
                astra.projector.delete(pid)
            bar.advance(task, sub.n_views)
    M = sp.vstack(parts, format="csr").astype(np.float32)
    M.indices = M.indices.astype(np.int32)
    M.indptr = M.indptr.astype(np.int64 if M.nnz >= 2**31 else np.int32)
    return _flip_rows(M, ny, nx)


def load_or_build(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str,
                  use_cache: bool = True) -> sp.csr_matrix:
    check_supported(geometry, volume, kernel)
    path = cache_dir() / "matrices" / f"{geometry.hash()}-{volume.hash()}-{kernel}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                M = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            if M.shape == (geometry.n_views * geometry.det_shape[1], volume.shape[1] * volume.shape[2]):
                return M
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: rebuild it
    need = estimate_nnz(geometry, volume, kernel) * _BYTES_PER_NNZ
    budget = memory_budget_bytes()
    if need > budget:
        raise UserError(
            f"the system matrix for {geometry.n_views} views x {geometry.det_shape[1]} pixels on a "
            f"{volume.shape[1]}x{volume.shape[2]} grid would need about {need / 2**30:.1f} GB, over the "
            f"{budget / 2**30:.1f} GB budget (CTDIP_MATRIX_BUDGET_GB); use backend='torch', fewer views or a smaller grid")
    M = build_matrix(geometry, volume, kernel)
    if use_cache:
        buf = io.BytesIO()
        np.savez(buf, data=M.data, indices=M.indices, indptr=M.indptr, shape=np.asarray(M.shape))
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as e:  # a read-only cache must not stop a reconstruction
            print(f"warning: could not cache the system matrix in {path}: {e}", file=sys.stderr)
    return M


def _to_torch_csr(M: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # "sparse CSR support is in beta" / invariant-check notices
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(M.indptr.astype(np.int64)), torch.from_numpy(M.indices.astype(np.int64)),
            torch.from_numpy(M.data), size=M.shape, dtype=torch.float32, device=device,
            check_invariants=False)


class MatrixRayTransform:
    """``forward``/``adjoint`` on (B, 1, y, x) / (B, views, 1, cols) through one sparse product."""

    def __init__(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
                 kernel: str | None = None, use_cache: bool = True, engine: str | None = None):
        self.kernel = kernel or default_kernel(geometry)
        self.geometry, self.volume, self.device = geometry, volume, device
        M = load_or_build(geometry, volume, self.kernel, use_cache)
        self.engine = "torch" if device.type != "cpu" else (engine or SPMM_ENGINE)
        if self.engine not in ("torch", "scipy"):
            raise UserError(f"CTDIP_SPMM must be 'torch' or 'scipy', got {self.engine!r}")
        MT = M.T.tocsr()
        if self.engine == "scipy":
            self.M, self.MT = M, MT
        else:
            self.M, self.MT = _to_torch_csr(M, device), _to_torch_csr(MT, device)
        self.nnz = int(M.nnz)

    def _apply(self, mat, x2: torch.Tensor) -> torch.Tensor:
        """mat @ x2.T for x2 (B, n) -> (B, m)."""
        if self.engine == "scipy":
            xs = x2.detach().cpu().numpy()
            out = mat @ np.ascontiguousarray(xs.T) if xs.shape[0] > 1 else (mat @ xs[0])[None].T
            return torch.from_numpy(np.ascontiguousarray(np.asarray(out, dtype=np.float32).T)).to(x2.device)
        return torch.sparse.mm(mat, x2.T.contiguous()).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        out = self._apply(self.M, x.reshape(B, -1))
        return out.reshape(B, self.geometry.n_views, 1, self.geometry.det_shape[1])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        B = y.shape[0]
        out = self._apply(self.MT, y.reshape(B, -1))
        return out.reshape(B, *self.volume.shape)
