"""The ``astra-cuda`` backend: ASTRA's 3D CUDA projectors on torch CUDA tensors, no host copies.

Every geometry goes through ASTRA's 3D vector projector (``cuda3d`` with ``parallel3d_vec`` or
``cone_vec``); a 2D problem is a one-slice 3D volume. ASTRA's 3D volume order is ours (z, y, x with
the y index increasing with y), so volumes pass as they are; projections are (rows, angles, cols)
in ASTRA and (angles, rows, cols) here, a transpose done on the GPU. The tensors are handed to
``astra.experimental.direct_FP3D`` / ``direct_BP3D`` through DLPack::

    A x   = direct_FP3D(projector, vol=x_b, proj=y_b)     for each batch item b
    A^T y = direct_BP3D(projector, vol=x_b, proj=y_b)

ASTRA's kernels are matched pairs, so the adjoint test holds to float32 accuracy.
"""

from __future__ import annotations

import torch

from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry, import_astra
from ctdip.core.operators.backend import BackendDefaults, register_backend
from ctdip.errors import UserError


def unavailable_reason() -> str | None:
    """None when torch sees a CUDA device and ASTRA was built with CUDA, else why not (one line)."""
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        import astra

        if not astra.use_cuda():
            return "ASTRA was built without CUDA (or sees no GPU)"
    except Exception as e:  # noqa: BLE001 - any import/driver failure means "not available"
        return f"ASTRA cannot be used ({(str(e).splitlines() or [type(e).__name__])[0]})"
    return None


def available() -> bool:
    """True when torch sees a CUDA device and ASTRA was built with CUDA."""
    return unavailable_reason() is None


def astra_geometries(geometry: ProjectionGeometry, volume: VolumeGeometry) -> tuple[dict, dict]:
    """The (projection, volume) ASTRA 3D dicts this backend passes to ``cuda3d`` (CPU-testable)."""
    return geometry.to_astra(3), volume.to_astra(3)


class AstraCudaRayTransform:
    """``forward``/``adjoint`` on CUDA tensors (B, z, y, x) / (B, views, rows, cols)."""

    def __init__(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device):
        if device.type != "cuda" or not available():
            raise UserError("the astra-cuda backend needs a CUDA device and ASTRA built with CUDA; "
                            "use backend='matrix' or 'torch'")
        astra = import_astra("the astra-cuda backend", "use backend 'matrix' or 'torch'")

        self.geometry, self.volume, self.device = geometry, volume, device
        pg, vg = astra_geometries(geometry, volume)
        self._astra = astra
        with torch.cuda.device(device):
            self.pid = astra.create_projector("cuda3d", pg, vg)

    def __del__(self) -> None:
        try:
            self._astra.projector3d.delete(self.pid)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import astra.experimental as ax

        rows, cols = self.geometry.det_shape
        out = torch.empty((x.shape[0], rows, self.geometry.n_views, cols), dtype=torch.float32, device=x.device)
        with torch.cuda.device(x.device):
            for b in range(x.shape[0]):
                ax.direct_FP3D(self.pid, x[b].contiguous(), out[b])
        torch.cuda.synchronize(x.device)
        return out.permute(0, 2, 1, 3).contiguous()

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        import astra.experimental as ax

        out = torch.empty((y.shape[0], *self.volume.shape), dtype=torch.float32, device=y.device)
        ya = y.permute(0, 2, 1, 3).contiguous()
        with torch.cuda.device(y.device):
            for b in range(y.shape[0]):
                ax.direct_BP3D(self.pid, out[b], ya[b])
        torch.cuda.synchronize(y.device)
        return out


class AstraCudaBackend(BackendDefaults):
    """``astra-cuda``: ASTRA's CUDA projectors; ``auto``'s first choice on a CUDA device."""

    name = "astra-cuda"
    description = "ASTRA's 3D CUDA projectors on GPU tensors (CUDA only)"
    devices = ("cuda",)
    auto_rank = 10

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def create(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
               kernel: str | None = None) -> AstraCudaRayTransform:
        return AstraCudaRayTransform(geometry, volume, device)


register_backend(AstraCudaBackend())
