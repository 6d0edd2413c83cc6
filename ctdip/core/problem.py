"""`Problem`: the operator, the data, an initial reconstruction and the scalings a method sees.

Scaling (recorded in every run config through :meth:`Problem.scalings`):

* ``intensity_scale`` s: data and images are multiplied by s so that the image is O(1)
  (``auto``: s = 1 / q99.9(FBP), the 99.9th percentile of the FBP/FDK of the data). Real scans in
  attenuation units (about 0.02 per mm) otherwise leave a network trained with lr 1e-4 barely
  moving; the published walnut code uses a fixed factor of 14 for the same reason.
  ``Problem.unscale`` returns reconstructions in the data's physical units.
* ``opnorm`` ||A||: the operator norm (power iteration), used by methods to normalise step sizes
  and losses so one preset weight means the same on every geometry and image size.

Tensors: ``y`` is (angles, rows, cols); images are (z, y, x) volumes. Networks work on
(N, C, H, W) in 2D and (N, C, D, H, W) in 3D; :meth:`forward` takes network-shaped images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ctdip.errors import UserError

if TYPE_CHECKING:
    from ctdip.core.data import Scan
    from ctdip.core.geometry import VolumeGeometry
    from ctdip.core.operators import RayTransform


def holdout_indices(n_views: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n_views`` into (fit, held) view indices; held views are spread evenly over the scan."""
    if not 0 <= fraction < 1:
        raise ValueError("holdout fraction must be in [0, 1)")
    n_held = int(round(n_views * fraction))
    if n_held == 0:
        return np.arange(n_views), np.zeros(0, dtype=int)
    held = np.unique(np.floor((np.arange(n_held) + 0.5) * n_views / n_held).astype(int))
    fit = np.setdiff1d(np.arange(n_views), held)
    return fit, held


@dataclass
class Problem:
    A: RayTransform  # on the fitted views
    y: torch.Tensor  # (angles, rows, cols), scaled by intensity_scale
    volume: VolumeGeometry
    x_init: torch.Tensor | None = None  # FBP/FDK (z, y, x), scaled
    reference: torch.Tensor | None = None  # (z, y, x), scaled
    intensity_scale: float = 1.0
    opnorm: float = 1.0
    A_held: RayTransform | None = None  # operator on held-out views (or None)
    y_held: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_scan(
        cls,
        scan: Scan,
        backend: str = "auto",
        device: str | torch.device = "cpu",
        intensity_scale: float | str = "auto",
        holdout: float = 0.0,
        fbp_filter: str = "ram-lak",
    ) -> Problem:
        try:
            return cls._from_scan(scan, backend, device, intensity_scale, holdout, fbp_filter)
        except UserError as e:  # e.g. FBP refusing a short scan: name the scan's geometry file
            where = (getattr(scan, "info", None) or {}).get("geometry_file") or getattr(scan, "source", None)
            if e.path is None and where is not None:
                raise UserError(e.message, path=where) from None
            raise

    @classmethod
    def _from_scan(cls, scan: Scan, backend: str, device: str | torch.device, intensity_scale: float | str,
                   holdout: float, fbp_filter: str) -> Problem:
        from ctdip.core.operators import RayTransform, fbp

        device = torch.device(device)
        geom = scan.geometry
        proj = np.asarray(scan.projections, dtype=np.float32)
        fit_idx, held_idx = holdout_indices(geom.n_views, holdout)
        g_fit = geom.select(fit_idx) if len(held_idx) else geom
        A = RayTransform(g_fit, scan.volume, backend=backend, device=device)
        y = torch.as_tensor(proj[fit_idx], device=device)
        x0 = fbp(y, g_fit, scan.volume, filter=fbp_filter).to(device)
        if intensity_scale == "auto":
            q = float(torch.quantile(x0.flatten()[:: max(1, x0.numel() // 1_000_000)].float(), 0.999))
            s = 1.0 / q if q > 0 else 1.0
        else:
            s = float(intensity_scale)
        ref = None
        if scan.reference is not None:
            ref = torch.as_tensor(np.asarray(scan.reference, np.float32), device=device) * s
        A_held = y_held = None
        if len(held_idx):
            A_held = RayTransform(geom.select(held_idx), scan.volume, backend=backend, device=device)
            y_held = torch.as_tensor(proj[held_idx], device=device) * s
        return cls(
            A=A, y=y * s, volume=scan.volume, x_init=x0 * s, reference=ref, intensity_scale=s,
            opnorm=float(A.norm()), A_held=A_held, y_held=y_held,
            info={"n_views_fit": int(len(fit_idx)), "n_views_held": int(len(held_idx)),
                  "held_views": held_idx.tolist(), "backend": A.backend},
        )

    # ---------------------------------------------------------------- shapes
    @property
    def dim(self) -> int:
        """2 for a one-slice problem (networks are 2D), 3 otherwise."""
        return 2 if self.volume.shape[0] == 1 else 3

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Spatial shape of network images: (H, W) in 2D, (D, H, W) in 3D."""
        return tuple(self.volume.shape[1:]) if self.dim == 2 else tuple(self.volume.shape)

    @property
    def device(self) -> torch.device:
        return self.y.device

    def to_volume(self, x: torch.Tensor) -> torch.Tensor:
        """Network-shaped (N, C, *image_shape) or image-shaped -> (..., z, y, x)."""
        return x.unsqueeze(-3) if self.dim == 2 else x

    def to_image(self, v: torch.Tensor) -> torch.Tensor:
        """(z, y, x) volume -> network-shaped (1, 1, *image_shape)."""
        v = v.reshape(self.volume.shape)
        v = v[0] if self.dim == 2 else v
        return v.reshape(1, 1, *self.image_shape)

    # ---------------------------------------------------------------- operators on images
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A applied to a network-shaped image: (N, C, *image_shape) -> (N, C, angles, rows, cols)."""
        return self.A(self.to_volume(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T back to network shape."""
        v = self.A.T(y)
        return v.squeeze(-3) if self.dim == 2 else v

    def unscale(self, x):
        """Undo the intensity scale (back to the data's units, e.g. attenuation per mm)."""
        return x / self.intensity_scale

    def scalings(self) -> dict:
        """Every scaling applied, for the run config."""
        return {"intensity_scale": float(self.intensity_scale), "opnorm": float(self.opnorm),
                "data_norm": float(self.y.norm()), **self.info}
