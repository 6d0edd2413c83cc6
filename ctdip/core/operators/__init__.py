"""Ray transforms (A, A^T) with interchangeable backends, and FBP/FDK.

INTERFACE CONTRACT (other modules code against these names):

    A = RayTransform(geometry, volume, backend="auto", device="cpu")
    y = A(x)        # x: (..., z, y, x) float32 torch tensor -> (..., angles, rows, cols)
    x = A.T(y)      # adjoint, same leading dims; autograd works through both
    A.norm()        # operator 2-norm estimate (power iteration, cached)
    A.range_shape   # (angles, rows, cols); A.domain_shape  # (z, y, x)
    A.backend       # the backend actually used

    fbp(y, geometry, volume, filter="ram-lak", ...) -> torch.Tensor (z, y, x)   # parallel/fan FBP, cone FDK

Backends (``backend=``): ``"matrix"`` (a cached sparse system matrix: ASTRA's 2D CPU projector for
2D slices, the torch ray marcher written out (``kernel="trilinear"``) for 3D and any other volume;
CPU or CUDA), ``"torch"`` (our differentiable ray marching; any vector geometry, 2D and 3D;
CPU or CUDA), ``"astra-cuda"`` (ASTRA's CUDA projectors; CUDA only) and ``"auto"``: astra-cuda on
a CUDA device when ASTRA has CUDA, else matrix for 2D on any device and for 3D on CPU (when within
the memory budget), else torch. Each backend implements the ``Backend`` protocol of
:mod:`ctdip.core.operators.backend` and registers itself there; ``RayTransform`` has no list of
its own (``BACKENDS`` is ``("auto", *backend_names())``).

Autograd: ``A(x)`` is a ``torch.autograd.Function`` whose backward is ``A.T`` (and vice versa), so
gradients are exact adjoints and cost one operator application.

Norm: ``||A||_2`` by power iteration on A^T A (x <- A^T A x / ||A^T A x||, ||A||^2 ~ ||A^T A x||
for unit x), to a relative change below 1e-4; cached on the object and on disk (cache dir
``norms/``, keyed by geometry, volume, backend and kernel).
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
from ctdip.core.io import cache_dir
from ctdip.core.operators.backend import Backend, Projector, auto_backend, backend_names, get_backend, register_backend
from ctdip.errors import UserError

__all__ = ["RayTransform", "fbp", "BACKENDS", "Backend", "Projector", "register_backend", "backend_names"]


def __getattr__(name: str) -> Any:
    if name == "BACKENDS":  # the --backend choices: auto and every registered backend
        return ("auto", *backend_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Apply(torch.autograd.Function):
    """y = op(x) with backward g -> op_adjoint(g)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, op: Any, adj: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.adj, ctx.op = adj, op
        return op(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return _Apply.apply(g.contiguous(), ctx.adj, ctx.op), None, None


class RayTransform:
    """The discrete ray transform A of a projection geometry on a volume grid.

    ``A(x)`` maps (..., z, y, x) volumes (attenuation per mm) to (..., angles, rows, cols) line
    integrals; ``A.T`` is its adjoint. Inputs are cast to float32 on the operator's device.
    """

    def __init__(self, geometry: ProjectionGeometry, volume: VolumeGeometry, backend: str = "auto",
                 device: str | torch.device = "cpu", kernel: str | None = None):
        choices = ("auto", *backend_names())
        if backend not in choices:
            raise UserError(f"unknown backend {backend!r}; expected one of {', '.join(choices)}")
        self.geometry, self.volume = geometry, volume
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {device} requested but CUDA is not available")
        self.kernel = kernel
        self._norm: float | None = None
        self.backend, self._impl = self._make(backend)

    # ------------------------------------------------------------------ backends
    def _make(self, backend: str) -> tuple[str, Projector]:
        """The registered backend's operator (``auto``: :func:`~ctdip.core.operators.backend.auto_backend`)."""
        g, v, dev = self.geometry, self.volume, self.device
        b = auto_backend(g, v, dev, self.kernel) if backend == "auto" else get_backend(backend)
        return b.name, b.create(g, v, dev, self.kernel)

    # ------------------------------------------------------------------ shapes
    @property
    def domain_shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)  # type: ignore[return-value]

    @property
    def range_shape(self) -> tuple[int, int, int]:
        return (self.geometry.n_views, *self.geometry.det_shape)

    def _prep(self, t: torch.Tensor, shape: tuple[int, ...], what: str) -> tuple[torch.Tensor, tuple]:
        t = torch.as_tensor(t)
        if tuple(t.shape[-3:]) != tuple(shape):
            raise UserError(f"{what} must end with shape {tuple(shape)}, got {tuple(t.shape)}")
        lead = tuple(t.shape[:-3])
        t = t.to(device=self.device, dtype=torch.float32)
        return t.reshape(-1, *shape), lead

    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        return self._impl.forward(x.contiguous())

    def _adj(self, y: torch.Tensor) -> torch.Tensor:
        return self._impl.adjoint(y.contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._prep(x, self.domain_shape, "volume")
        return _Apply.apply(xb, self._fwd, self._adj).reshape(*lead, *self.range_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        yb, lead = self._prep(y, self.range_shape, "projections")
        return _Apply.apply(yb, self._adj, self._fwd).reshape(*lead, *self.domain_shape)

    @property
    def T(self) -> "_Adjoint":
        return _Adjoint(self)

    # ------------------------------------------------------------------ norm
    def _norm_key(self) -> str:
        k = getattr(self._impl, "kernel", "")
        return f"{self.geometry.hash()}-{self.volume.hash()}-{self.backend}{'-' + k if k else ''}"

    def norm(self, max_iter: int = 100, rtol: float = 1e-4, use_cache: bool = True) -> float:
        """||A||_2 by power iteration on A^T A (seeded; cached in memory and on disk)."""
        if self._norm is not None:
            return self._norm
        path = cache_dir() / "norms" / f"{self._norm_key()}.json"
        if use_cache and path.is_file():
            try:
                self._norm = float(json.loads(path.read_text())["norm"])
                return self._norm
            except (OSError, ValueError, KeyError):
                pass
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(self.domain_shape, generator=gen).to(self.device)
        x /= x.norm()
        lam = 0.0
        with torch.no_grad():
            for _ in range(max_iter):
                z = self._adj(self._fwd(x[None]))[0]
                new = float(z.norm())
                if new == 0.0:
                    break
                x = z / new
                if abs(new - lam) <= rtol * new:
                    lam = new
                    break
                lam = new
        self._norm = math.sqrt(lam)
        if use_cache:
            from ctdip.core.io import atomic_write_text

            try:
                atomic_write_text(path, json.dumps({"norm": self._norm, "backend": self.backend}))
            except OSError:
                pass
        return self._norm

    def __repr__(self) -> str:
        return f"RayTransform({self.geometry!r}, {self.volume!r}, backend={self.backend!r}, device={str(self.device)!r})"


class _Adjoint:
    """A^T as an object: callable, with ``.T`` giving A back and the same norm."""

    def __init__(self, op: RayTransform):
        self.op = op

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(y)

    @property
    def T(self) -> RayTransform:
        return self.op

    def norm(self) -> float:
        return self.op.norm()

    @property
    def domain_shape(self) -> tuple[int, int, int]:
        return self.op.range_shape

    @property
    def range_shape(self) -> tuple[int, int, int]:
        return self.op.domain_shape


def fbp(*args, **kwargs) -> torch.Tensor:
    """Filtered backprojection / FDK; see :func:`ctdip.core.operators.fbp_fdk.fbp`."""
    from ctdip.core.operators.fbp_fdk import fbp as _fbp

    return _fbp(*args, **kwargs)
