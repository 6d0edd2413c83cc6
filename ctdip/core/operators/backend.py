"""What an operator backend is, and the registry that ``RayTransform`` picks backends from.

A backend turns a (projection geometry, volume grid, device) into a :class:`Projector`, the pair of
batched linear maps

    forward: (B, z, y, x) -> (B, views, rows, cols),   x -> A x
    adjoint: (B, views, rows, cols) -> (B, z, y, x),   y -> A^T y

on float32 tensors of that device, with <A x, y> = <x, A^T y> to float32 accuracy (the adjoint
tests in ``tests/test_operators.py`` run on every registered backend that is available).
``RayTransform`` adds the shapes, batching, autograd and the norm around it.

Each backend module registers itself (``register_backend(MyBackend())`` at its end); the
built-in ones (``_matrix``, ``_torch``, ``_astra_cuda``, listed in that order) are imported on the
first registry query (``ctdip.core.registry``).

``backend="auto"`` walks the backends by ascending ``auto_rank`` and takes the first that is
available, runs on the device and whose :meth:`Backend.fits` says yes. With the built-in ranks
(astra-cuda 10, matrix 20, torch 100) that is: astra-cuda on a CUDA device when ASTRA has CUDA,
else matrix for 2D on any device and for 3D on CPU (when its memory estimate is within the
budget), else torch (which fits everything).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from ctdip.core.registry import Registry
from ctdip.errors import UserError

if TYPE_CHECKING:
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

__all__ = [
    "REGISTRY",
    "Backend",
    "BackendDefaults",
    "Projector",
    "auto_backend",
    "backend_names",
    "backends",
    "get_backend",
    "register_backend",
    "unregister_backend",
]


@runtime_checkable
class Projector(Protocol):
    """A backend's operator on one geometry, volume and device (what ``RayTransform`` calls)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x for contiguous float32 x of shape (B, z, y, x) -> (B, views, rows, cols)."""
        ...

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y for contiguous float32 y of shape (B, views, rows, cols) -> (B, z, y, x)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """An operator backend: its name, where it runs, and how to make its :class:`Projector`."""

    #: the ``--backend`` name
    name: str
    #: one line for listings: the discretisation and where it runs
    description: str
    #: device types (``torch.device.type``) it runs on, e.g. ``("cpu", "cuda")``
    devices: tuple[str, ...]
    #: order in which ``auto`` tries it (lower first)
    auto_rank: int

    def unavailable_reason(self) -> str | None:
        """None when the backend can run on this machine, else one line saying why not."""
        ...

    def memory_bytes(self, geometry: ProjectionGeometry, volume: VolumeGeometry,
                     kernel: str | None = None) -> float | None:
        """Estimated bytes its operator keeps for this problem (None when small or unknown)."""
        ...

    def fits(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
             kernel: str | None = None) -> bool:
        """Whether ``auto`` takes this backend for the problem (called only when it is available
        and ``device.type`` is in ``devices``); may raise ``UserError`` for a ``kernel`` that
        cannot work."""
        ...

    def create(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
               kernel: str | None = None) -> Projector:
        """The operator (raises ``UserError`` with a one-line reason when it cannot be made)."""
        ...


class BackendDefaults:
    """Defaults a backend class may inherit: always available, no memory estimate, fits every
    problem (so ``auto`` takes it whenever it reaches it)."""

    def unavailable_reason(self) -> str | None:
        return None

    def memory_bytes(self, geometry: ProjectionGeometry, volume: VolumeGeometry,
                     kernel: str | None = None) -> float | None:
        return None

    def fits(self, geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
             kernel: str | None = None) -> bool:
        return True


#: the registered backends; built-ins listed matrix, torch, astra-cuda whatever the import order
REGISTRY: Registry[Backend] = Registry("backend", Backend, builtins=(
    "ctdip.core.operators._matrix", "ctdip.core.operators._torch", "ctdip.core.operators._astra_cuda"),
    reserved=("auto",))


# the registry's functions under their backend names: register_backend(backend, replace=False),
# unregister_backend(name), backends() (name -> backend, listing order), backend_names(), get_backend(name)
register_backend = REGISTRY.register
unregister_backend = REGISTRY.unregister
backends = REGISTRY.all
backend_names = REGISTRY.names
get_backend = REGISTRY.get


def auto_backend(geometry: ProjectionGeometry, volume: VolumeGeometry, device: torch.device,
                 kernel: str | None = None) -> Backend:
    """The backend ``backend="auto"`` uses: the first available one, by ``auto_rank``, that runs on
    ``device`` and :meth:`~Backend.fits` the problem."""
    for b in sorted(backends().values(), key=lambda b: b.auto_rank):
        if device.type in b.devices and b.unavailable_reason() is None and b.fits(geometry, volume, device, kernel):
            return b
    raise UserError(f"no operator backend fits a {geometry.kind} geometry on a "
                    f"{'x'.join(map(str, volume.shape))} grid on {device}")
