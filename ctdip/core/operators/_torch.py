"""The ``torch`` backend: differentiable ray marching for any vector geometry, 2D and 3D.

Forward (one detector pixel p of a view, unit ray direction d, entry/exit parameters t0 < t1 of
the ray in the volume box, L = t1 - t0, K samples)::

    (A x)(p) = integral of x along the ray ~= sum_k x(o + t_k d) * L / K,  t_k = t0 + (k + 1/2) L / K

with x(.) the trilinear (bilinear for one slice) interpolation of the voxel values
(``torch.nn.functional.grid_sample``, zero outside the box) and one K for all rays of the geometry,
K = ceil(L_max / (step_fraction * smallest voxel)) (L_max: the longest chord of any ray), so every
step L/K is at most half a voxel and the discretisation does not depend on batching or chunking
(the ``matrix`` backend builds this same operator as a sparse matrix from
:meth:`TorchRayTransform.samples`). Cone beams march from the source to the pixel, parallel beams
along the ray direction through the pixel. The adjoint is the exact transpose of this discrete
operator, computed by reverse-mode autodiff of the (linear) forward, chunk by chunk over views so
memory stays bounded. All code is device-agnostic: it runs on CPU and CUDA tensors alike.

Also here: :func:`detector_coords`, the voxel-to-detector mapping used by the voxel-driven
backprojector of FBP/FDK.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
from ctdip.core.operators.backend import BackendDefaults, register_backend

# Samples (rays x steps x batch) per chunk: bounds peak memory to a few hundred MB.
_POINTS_PER_CHUNK = 2**22


def _pixel_centres(vec: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(nv, 12) vectors -> (nv, rows, cols, 3) detector pixel centres."""
    c = torch.arange(cols, dtype=vec.dtype, device=vec.device) - (cols - 1) / 2
    r = torch.arange(rows, dtype=vec.dtype, device=vec.device) - (rows - 1) / 2
    d, u, v = vec[:, None, None, 3:6], vec[:, None, None, 6:9], vec[:, None, None, 9:12]
    return d + c[None, None, :, None] * u + r[None, :, None, None] * v


class TorchRayTransform:
    """Ray-marching projector; ``forward``/``adjoint`` take (B, z, y, x) / (B, views, rows, cols)."""

    def __init__(self, geometry: ProjectionGeometry, volume: VolumeGeometry,
                 device: torch.device, step_fraction: float = 0.5):
        self.geometry, self.volume, self.device = geometry, volume, device
        self.vec = torch.as_tensor(geometry.vectors, dtype=torch.float64, device=device)
        self.step = step_fraction * min(volume.voxel_mm if not volume.is_2d else volume.voxel_mm[1:])
        self.lo = torch.tensor(volume.min_mm[::-1], dtype=torch.float64, device=device)  # (x, y, z)
        self.hi = torch.tensor(volume.max_mm[::-1], dtype=torch.float64, device=device)
        self.centre = (self.lo + self.hi) / 2
        self.half = (self.hi - self.lo) / 2
        # one slice and rays in its mid-plane: bilinear sampling in (x, y) is exact and faster
        zc = volume.center_mm[0]
        self.planar = volume.is_2d and geometry.is_2d and abs(zc) < 1e-9 * max(1.0, volume.voxel_mm[0])
        self._n_steps: int | None = None

    def _rays(self, views: slice):
        """Origins o, unit directions d (nv, R, C, 3) float64, and entry t0 / length L (nv, R, C)."""
        rows, cols = self.geometry.det_shape
        vec = self.vec[views]
        pix = _pixel_centres(vec, rows, cols)
        if self.geometry.beam == "cone":
            o = vec[:, None, None, 0:3].expand_as(pix)
            d = pix - o
            seg = d.norm(dim=-1)
            d = d / seg[..., None]
        else:
            o = pix
            d = (vec[:, None, None, 0:3] / vec[:, None, None, 0:3].norm(dim=-1, keepdim=True)).expand_as(pix)
            seg = None
        if self.planar:  # ignore z: the slab in z is the whole line
            lo, hi, o_, d_ = self.lo[:2], self.hi[:2], o[..., :2], d[..., :2]
        else:
            lo, hi, o_, d_ = self.lo, self.hi, o, d
        tiny = 1e-12
        d_safe = torch.where(d_.abs() < tiny, torch.full_like(d_, tiny), d_)
        ta, tb = (lo - o_) / d_safe, (hi - o_) / d_safe
        t0 = torch.minimum(ta, tb).amax(-1)
        t1 = torch.maximum(ta, tb).amin(-1)
        if seg is not None:  # between source and detector
            t0 = t0.clamp(min=0.0)
            t1 = torch.minimum(t1, seg)
        length = (t1 - t0).clamp(min=0.0)
        return o, d, t0, length

    @property
    def n_steps(self) -> int:
        """K, the number of samples on every ray: ceil(longest chord / step), computed once."""
        if self._n_steps is None:
            rows, cols = self.geometry.det_shape
            nv = max(1, _POINTS_PER_CHUNK // max(1, 8 * rows * cols))
            lmax = 0.0
            for i in range(0, self.geometry.n_views, nv):
                lmax = max(lmax, float(self._rays(slice(i, i + nv))[3].max()))
            self._n_steps = max(1, int(np.ceil(lmax / self.step - 1e-9)))
        return self._n_steps

    def samples(self, views: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample points of the rays of some views and their weight L/K.

        Returns pts (nv, R, C, K, 3) float64 (x, y, z) in mm (only (x, y) when planar) and
        w (nv, R, C) float64: (A x)(ray) = w * sum_k x(pts[..., k, :]).
        """
        return self.points(*self._rays(views))

    def points(self, o: torch.Tensor, d: torch.Tensor, t0: torch.Tensor,
               length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of given rays (any leading shape ...): pts (..., K, 3 or 2) and weight L/K (...)."""
        K = self.n_steps
        k = (torch.arange(K, dtype=torch.float64, device=o.device) + 0.5) / K
        t = t0[..., None] + length[..., None] * k  # (..., K)
        if self.planar:
            pts = o[..., None, :2] + t[..., None] * d[..., None, :2]
        else:
            pts = o[..., None, :] + t[..., None] * d[..., None, :]
        return pts, length / K

    def _chunks(self, batch: int, n_steps_hint: int):
        rows, cols = self.geometry.det_shape
        per_view = rows * cols * max(1, n_steps_hint) * max(1, batch)
        nv = max(1, min(self.geometry.n_views, _POINTS_PER_CHUNK // max(1, per_view)))
        return [slice(i, min(i + nv, self.geometry.n_views)) for i in range(0, self.geometry.n_views, nv)]

    def _project_chunk(self, x: torch.Tensor, views: slice) -> torch.Tensor:
        """x: (B, z, y, x) float32 (may require grad) -> (B, nv, rows, cols)."""
        pts, w = self.samples(views)
        nv, R, C, K = pts.shape[:4]
        B = x.shape[0]
        if self.planar:
            g = ((pts - self.centre[:2]) / self.half[:2]).to(torch.float32)
            grid = g.reshape(1, nv * R * C, K, 2)
            img = x[:, 0][None]  # (1, B, H, W)
            s = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        else:
            g = ((pts - self.centre) / self.half).to(torch.float32)
            grid = g.reshape(1, 1, nv * R * C, K, 3)
            s = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        s = s.reshape(B, nv * R * C, K).sum(-1)
        return (s * w.to(torch.float32).reshape(1, -1)).reshape(B, nv, R, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for views in self._chunks(x.shape[0], self.n_steps):
            out.append(self._project_chunk(x, views))
        return torch.cat(out, dim=1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        B = y.shape[0]
        acc = torch.zeros((B, *self.volume.shape), dtype=torch.float32, device=y.device)
        with torch.enable_grad():
            for views in self._chunks(B, self.n_steps):
                leaf = torch.zeros_like(acc, requires_grad=True)
                out = self._project_chunk(leaf, views)
                (g,) = torch.autograd.grad(out, leaf, grad_outputs=y[:, views].contiguous())
                acc += g
        return acc


def projection_matrices(geometry: ProjectionGeometry, vec: torch.Tensor) -> torch.Tensor:
    """Per-view 3x4 homogeneous maps from a point (x, y, z, 1) to (col * w, row * w, w).

    col/row are the fractional detector indices (pixel centres at integers) where the ray through
    the point hits the detector. For cone beams ``w = (p - s) . n`` (n = u x v), so
    ``w / ((0 - s) . n)`` is FDK's depth ratio U; for parallel beams w = 1. Derivation: the hit
    point is ``s + ((d - s) . n / (p - s) . n) (p - s)`` (cone) or ``p + ((d - p) . n / r . n) r``
    (parallel); its offset from d, dotted with the dual basis u* = v x n / |n|^2, v* = n x u / |n|^2
    of the detector plane, gives the column and row. vec: (nv, 12) float64 -> (nv, 3, 4) float64.
    """
    rows, cols = geometry.det_shape
    s, d, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
    n = torch.cross(u, v, dim=-1)
    nn2 = (n * n).sum(-1, keepdim=True)
    duals = (torch.cross(v, n, dim=-1) / nn2, torch.cross(n, u, dim=-1) / nn2)
    centres = ((cols - 1) / 2, (rows - 1) / 2)
    P = torch.zeros((len(vec), 3, 4), dtype=vec.dtype, device=vec.device)
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    if geometry.beam == "cone":
        num = dot(d - s, n)
        P[:, 2, :3], P[:, 2, 3] = n, -dot(n, s)
        for k, (du, c0) in enumerate(zip(duals, centres)):
            a = dot(s - d, du) + c0
            P[:, k, :3] = a[:, None] * n + num[:, None] * du
            P[:, k, 3] = -a * dot(n, s) - num * dot(du, s)
    else:
        rn = dot(s, n)
        for k, (du, c0) in enumerate(zip(duals, centres)):
            ratio = dot(s, du) / rn
            P[:, k, :3] = du - ratio[:, None] * n
            P[:, k, 3] = -dot(d, du) + dot(d, n) * ratio + c0
        P[:, 2, 3] = 1.0
    return P


def detector_coords(geometry: ProjectionGeometry, vec: torch.Tensor, pts: torch.Tensor):
    """Where the ray through each point hits the detector, for a chunk of views.

    vec: (nv, 12) float64 vectors; pts: (M, 3) points (x, y, z), any float dtype (the maps are
    applied in that dtype). Returns (col, row, depth), each (nv, M): fractional detector
    column/row indices and, for cone beams, the depth ratio U = ((p - s) . n) / ((0 - s) . n)
    used by FDK's 1/U^2 weight (1 for parallel beams).
    """
    P = projection_matrices(geometry, vec)
    h = torch.einsum("vij,mj->vim", P[:, :, :3].to(pts.dtype), pts) + P[:, :, 3:].to(pts.dtype)
    w = h[:, 2]
    col, row = h[:, 0] / w, h[:, 1] / w
    if geometry.beam == "cone":
        s_n = -(vec[:, 0:3] * torch.cross(vec[:, 6:9], vec[:, 9:12], dim=-1)).sum(-1)
        depth = w / s_n[:, None].to(pts.dtype)
    else:
        depth = torch.ones_like(w)
    return col, row, depth


class TorchBackend(BackendDefaults):
    """``torch``: ray marching, any vector geometry, any device; ``auto``'s last resort (fits all;
    no precomputed operator, chunks bound the working memory)."""

    name = "torch"
    description = "differentiable ray marching in torch (any vector geometry, 2D and 3D)"
    devices = ("cpu", "cuda")
    auto_rank = 100

    def create(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
               kernel: str | None = None) -> TorchRayTransform:
        return TorchRayTransform(geometry, volume, device)


register_backend(TorchBackend())
