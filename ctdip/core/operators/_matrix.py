"""The ``matrix`` backend: the ray transform as a sparse system matrix M, built once and cached.

Two discretisations (``kernel``):

* 2D geometry on one slice centred at z = 0: ASTRA's 2D CPU projector (``astra.projector.matrix``
  for the geometry's 2D vector form: ``line_fanflat`` for fan beams; ``linear`` (default),
  ``line`` or ``strip`` for parallel beams), with its columns permuted from ASTRA's 2D row order
  (row 0 at max y) to ours (y index increasing with y, see ``ctdip.core.geometry``).
* any other geometry and volume (3D parallel/cone vectors, several slices, off-centre slices):
  ``trilinear``, exactly the ``torch`` backend's ray marcher written out: for ray r with samples
  p_rk (k < K) and step w_r = L_r / K, and trilinear weights phi_j(p) of voxel j,
  ``M[r, j] = w_r * sum_k phi_j(p_rk)`` (duplicates summed), so A x agrees with the torch
  backend to float rounding. ``trilinear-coarse`` uses one sample per voxel instead of two
  (the same non-zeros, half the build time; its own torch twin is ``step_fraction=1``).

Then::

    A x = M x,        A^T y = M^T y

one sparse-dense product each; leading batch dims become columns of the dense factor. M and M^T
are kept as CSR (torch, or scipy when that is faster on CPU). M is built view-chunk by view-chunk
under a progress bar and cached on disk as ``.npz`` under ``$CTDIP_CACHE_DIR`` (else
``$XDG_CACHE_HOME/ctdip``, else ``~/.cache/ctdip``), in
``matrices/<geometry hash>-<volume hash>-<kernel>.npz``. Building is refused with a UserError when
the estimated size (non-zeros x bytes per non-zero of M and M^T) exceeds
``$CTDIP_MATRIX_BUDGET_GB`` (default: a quarter of the RAM). For ``trilinear`` the non-zeros are
estimated exactly on a strided subset of rays (a few views, a 24 x 24 pixel lattice) and scaled.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import scipy.sparse as sp
import torch

from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry, import_astra
from ctdip.core.io import atomic_write_bytes, cache_dir
from ctdip.core.operators.backend import BackendDefaults, register_backend
from ctdip.errors import UserError

PARALLEL_KERNELS = ("linear", "line", "strip")
FAN_KERNELS = ("line_fanflat",)
# ray-marching kernels (any geometry): name -> samples step as a fraction of the smallest voxel
MARCH_KERNELS = {"trilinear": 0.5, "trilinear-coarse": 1.0}
# CPU sparse product engine: "scipy" was faster than torch's CSR matmul on 2 threads
# (benchmarks/results/operators.md); CUDA always uses torch.
SPMM_ENGINE = os.environ.get("CTDIP_SPMM", "scipy")
_BYTES_PER_NNZ = 2 * (4 + 4) + 8  # M and M^T as float32 + int32 indices, plus build slack


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


def astra_2d(geometry: ProjectionGeometry, volume: VolumeGeometry) -> bool:
    """True when ASTRA's 2D projectors apply: 2D geometry, one slice centred at z = 0."""
    return (geometry.is_2d and volume.shape[0] == 1
            and abs(volume.center_mm[0]) <= 1e-9 * max(1.0, volume.voxel_mm[0]))


def default_kernel(geometry: ProjectionGeometry, volume: VolumeGeometry | None = None) -> str:
    if volume is not None and not astra_2d(geometry, volume):
        return "trilinear"
    return "linear" if geometry.beam == "parallel" else "line_fanflat"


def estimate_nnz(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str) -> int:
    """Estimate of the matrix's non-zeros (ASTRA kernels: an upper bound from rays x pixels
    touched per ray; ray-marching kernels: exact count on a strided ray subset, scaled, +10 %)."""
    if kernel in MARCH_KERNELS:
        return _estimate_nnz_march(geometry, volume, kernel)
    _, ny, nx = volume.shape
    per_ray = {"line": 2.0, "linear": 2.0, "strip": 3.0, "line_fanflat": 2.0}.get(kernel, 3.0)
    return int(geometry.n_views * geometry.det_shape[1] * per_ray * max(ny, nx) * 1.5)


def matrix_bytes(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str) -> float:
    """Estimated memory of M and M^T (non-zeros x bytes per non-zero), what the budget is checked against."""
    return estimate_nnz(geometry, volume, kernel) * _BYTES_PER_NNZ


def check_supported(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str) -> None:
    if kernel in MARCH_KERNELS:
        return
    if not astra_2d(geometry, volume):
        raise UserError(f"kernel {kernel!r} needs a 2D geometry and a one-slice volume centred at z = 0 "
                        f"(got {geometry.kind}, volume {volume.shape}); use kernel='trilinear' (the default "
                        f"for this geometry) or backend='torch'")
    allowed = PARALLEL_KERNELS if geometry.beam == "parallel" else FAN_KERNELS
    if kernel not in allowed:
        raise UserError(f"kernel {kernel!r} does not fit a {geometry.kind} geometry; use one of "
                        f"{allowed + tuple(MARCH_KERNELS)}")


def _progress(total: int, label: str, progress: bool | None):
    """The matrix build's bar (:class:`ctdip.core.progress.ProgressBar`): on a terminal, unless
    ``progress`` is False."""
    from ctdip.core.progress import ProgressBar

    return ProgressBar(label, total, unit="views", quiet=progress is False, transient=True)


def _flip_rows(M: sp.csr_matrix, ny: int, nx: int) -> sp.csr_matrix:
    """Permute columns from ASTRA 2D pixel order (row 0 at max y) to ours (row 0 at min y)."""
    j = M.indices
    M.indices = (((ny - 1) - j // nx) * nx + j % nx).astype(np.int32)
    M.has_sorted_indices = False
    M.sort_indices()
    return M


def build_matrix(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str,
                 progress: bool | None = None) -> sp.csr_matrix:
    """Assemble the float32 CSR system matrix (rays x voxels) in ctdip's pixel order."""
    if kernel in MARCH_KERNELS:
        return build_march_matrix(geometry, volume, kernel, progress)
    astra = import_astra(f"building the matrix operator (kernel {kernel!r})",
                         "ship the cached matrix ($CTDIP_CACHE_DIR/matrices), install astra-toolbox, "
                         "or use backend 'torch'")

    _, ny, nx = volume.shape
    vg = volume.to_astra(2)
    n = geometry.n_views
    chunk = max(1, min(n, 2_000_000 // max(1, geometry.det_shape[1] * max(ny, nx) * 2)))
    starts = list(range(0, n, chunk))
    parts = []
    bar = _progress(n, "building system matrix", progress)
    with bar:
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
            bar.advance(sub.n_views)
    M = sp.vstack(parts, format="csr").astype(np.float32)
    M.indices = M.indices.astype(np.int32)
    M.indptr = M.indptr.astype(np.int64 if M.nnz >= 2**31 else np.int32)
    return _flip_rows(M, ny, nx)


# samples per block when writing out ray-marching rows: bounds the build's temporary memory
# (8 corners x (row, col, value) x this many samples, ~100 MB)
_SAMPLES_PER_BLOCK = 2**19


class _one_thread:
    """Run torch single-threaded inside (the build's many mid-sized elementwise ops were up to 10x
    slower with a thread pool on a busy machine, and scipy's part is single-threaded anyway)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _marcher(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str):
    from ctdip.core.operators._torch import TorchRayTransform

    return TorchRayTransform(geometry, volume, torch.device("cpu"), step_fraction=MARCH_KERNELS[kernel])


def _march_rows(op, volume: VolumeGeometry, o: torch.Tensor, d: torch.Tensor, t0: torch.Tensor,
                length: torch.Tensor) -> sp.csr_matrix:
    """CSR rows (one per ray, rays flattened) of the ray marcher: trilinear weights of each
    sample (as grid_sample with align_corners=False, zero outside) times L/K, duplicates summed.

    Corners are indexed in the volume padded by one voxel on each side, so all 8 corners of a
    sample are valid indices and each ray's K * 8 entries stay contiguous (the CSR structure is
    known without sorting rows); padding columns are dropped after summing duplicates.
    """
    pts, w = op.points(o, d, t0, length)  # (N, K, D), (N,)
    N, K, D = pts.shape
    sizes = volume.shape[::-1][:D]  # (nx, ny, nz)
    lo = torch.tensor(volume.min_mm[::-1][:D], dtype=torch.float64)
    vox = torch.tensor(volume.voxel_mm[::-1][:D], dtype=torch.float64)
    f = (pts - lo) / vox - 0.5  # continuous voxel index, voxel centres at integers
    n_t = torch.tensor(sizes, dtype=torch.float64)
    inside = ((f > -1) & (f < n_t)).all(-1)  # samples with any corner in the volume
    f = torch.where(inside[..., None], f, torch.zeros_like(f))
    i0 = torch.floor(f)
    fr = (f - i0).to(torch.float32)
    i0 = i0.to(torch.int64) + 1  # padded index of the lower corner, in [0, n]
    pad = [s + 2 for s in sizes]
    base = i0[..., 0]
    stride = 1
    for a in range(1, D):
        stride *= pad[a - 1]
        base = base + i0[..., a] * stride
    # corner weights as an outer product over axes; corner (.., dy, dx) at offset dx + px (dy + py ..)
    wt = (w.to(torch.float32)[:, None] * inside)[..., None]  # (N, K, 1)
    offs = torch.zeros(1, dtype=torch.int64)
    stride = 1
    for a in range(D):  # corner index: bit a set = upper neighbour along axis a (last axis most significant)
        fa = fr[..., a, None]
        wa = torch.cat([1.0 - fa, fa], dim=-1)  # (N, K, 2)
        wt = (wa[..., :, None] * wt[..., None, :]).reshape(N, K, -1)
        offs = (torch.tensor([0, stride])[:, None] + offs[None, :]).reshape(-1)
        stride *= pad[a]
    cols = (base[..., None] + offs).reshape(-1).numpy()
    data = wt.reshape(-1).numpy()
    M = sp.csr_matrix((data, cols, np.arange(N + 1, dtype=np.int64) * (K * 2**D)),
                      shape=(N, int(np.prod(pad))))
    M.sum_duplicates()
    # padded column -> voxel index (or -1 for padding); drop padding and exact zeros
    grids = np.meshgrid(*[np.arange(p) - 1 for p in pad[::-1]], indexing="ij")  # (.., y, x) order
    valid = np.ones(grids[0].shape, dtype=bool)
    vidx = np.zeros(grids[0].shape, dtype=np.int64)
    stride = 1
    for a in range(D):
        g = grids[D - 1 - a]
        valid &= (g >= 0) & (g < sizes[a])
        vidx += g * stride
        stride *= sizes[a]
    cmap = np.where(valid, vidx, -1).reshape(-1)
    newc = cmap[M.indices]
    keep = (newc >= 0) & (M.data != 0)
    counts = np.add.reduceat(keep.astype(np.int64), M.indptr[:-1]) if M.nnz else np.zeros(N, np.int64)
    counts[np.diff(M.indptr) == 0] = 0
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((M.data[keep], newc[keep].astype(np.int32), indptr),
                         shape=(N, int(np.prod(volume.shape))))


def _ray_blocks(op, views: slice):
    """Rays of some views, flattened, in blocks of about _SAMPLES_PER_BLOCK samples."""
    o, d, t0, length = op._rays(views)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    t0, length = t0.reshape(-1), length.reshape(-1)
    nb = max(1, _SAMPLES_PER_BLOCK // op.n_steps)
    for i in range(0, len(t0), nb):
        yield o[i:i + nb], d[i:i + nb], t0[i:i + nb], length[i:i + nb]


def build_march_matrix(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str = "trilinear",
                       progress: bool | None = None) -> sp.csr_matrix:
    """The torch backend's ray marcher as a float32 CSR matrix, built view by view."""
    op = _marcher(geometry, volume, kernel)
    n = geometry.n_views
    parts = []
    bar = _progress(n, f"building system matrix ({kernel})", progress)
    with torch.no_grad(), _one_thread(), bar:
        for i in range(n):
            for block in _ray_blocks(op, slice(i, i + 1)):
                parts.append(_march_rows(op, volume, *block).astype(np.float32))
            bar.advance(1)
    M = sp.vstack(parts, format="csr")
    M.indices = M.indices.astype(np.int32)
    M.indptr = M.indptr.astype(np.int64 if M.nnz >= 2**31 else np.int32)
    return M


def _estimate_nnz_march(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str) -> int:
    """Exact non-zeros of a strided subset of rays (<= 8 views x 24 x 24 pixels), scaled, +10 %."""
    op = _marcher(geometry, volume, kernel)
    rows, cols = geometry.det_shape
    views = np.unique(np.linspace(0, geometry.n_views - 1, min(8, geometry.n_views)).round().astype(int))
    ri = np.unique(np.linspace(0, rows - 1, min(24, rows)).round().astype(int))
    ci = np.unique(np.linspace(0, cols - 1, min(24, cols)).round().astype(int))
    count = 0
    with torch.no_grad(), _one_thread():
        for i in views:
            o, d, t0, length = (t[0][ri][:, ci] for t in op._rays(slice(int(i), int(i) + 1)))
            count += _march_rows(op, volume, o.reshape(-1, 3), d.reshape(-1, 3), t0.reshape(-1),
                                 length.reshape(-1)).nnz
    per_ray = count / (len(views) * len(ri) * len(ci))
    return int(1.1 * per_ray * geometry.n_views * rows * cols) + 1


def load_or_build(geometry: ProjectionGeometry, volume: VolumeGeometry, kernel: str,
                  use_cache: bool = True) -> sp.csr_matrix:
    check_supported(geometry, volume, kernel)
    path = cache_dir() / "matrices" / f"{geometry.hash()}-{volume.hash()}-{kernel}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                M = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            if M.shape == (geometry.n_views * geometry.det_shape[0] * geometry.det_shape[1],
                           int(np.prod(volume.shape))):
                return M
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: rebuild it
    need = matrix_bytes(geometry, volume, kernel)
    budget = memory_budget_bytes()
    if need > budget:
        rows, cols = geometry.det_shape
        raise UserError(
            f"the {kernel} system matrix for {geometry.n_views} views x {rows}x{cols} pixels on a "
            f"{'x'.join(map(str, volume.shape))} grid would need about {need / 2**30:.3g} GB, over the "
            f"{budget / 2**30:.3g} GB budget (CTDIP_MATRIX_BUDGET_GB); use backend='torch', fewer views or a smaller grid")
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
    """``forward``/``adjoint`` on (B, z, y, x) / (B, views, rows, cols) through one sparse product."""

    def __init__(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
                 kernel: str | None = None, use_cache: bool = True, engine: str | None = None):
        self.kernel = kernel or default_kernel(geometry, volume)
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
        return out.reshape(B, self.geometry.n_views, *self.geometry.det_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        B = y.shape[0]
        out = self._apply(self.MT, y.reshape(B, -1))
        return out.reshape(B, *self.volume.shape)


class MatrixBackend(BackendDefaults):
    """``matrix``: the cached sparse system matrix (CPU or CUDA); see the module docstring."""

    name = "matrix"
    description = "cached sparse system matrix (ASTRA 2D kernels, or the ray marcher written out)"
    devices = ("cpu", "cuda")
    auto_rank = 20

    def memory_bytes(self, geometry: ProjectionGeometry, volume: VolumeGeometry,
                     kernel: str | None = None) -> float:
        return matrix_bytes(geometry, volume, kernel or default_kernel(geometry, volume))

    def fits(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
             kernel: str | None = None) -> bool:
        """2D (ASTRA's kernels) on any device, 3D on CPU only, and within the memory budget."""
        if not (astra_2d(geometry, volume) or device.type == "cpu"):
            return False
        k = kernel or default_kernel(geometry, volume)
        check_supported(geometry, volume, k)
        return self.memory_bytes(geometry, volume, k) <= memory_budget_bytes()

    def create(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
               kernel: str | None = None) -> MatrixRayTransform:
        return MatrixRayTransform(geometry, volume, device, kernel)


register_backend(MatrixBackend())
