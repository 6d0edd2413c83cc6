"""Synthetic training data for one geometry: ellipse phantoms, their noisy data and FBP.

For phantoms ``x`` (random ellipses in 2D, ellipsoids in 3D, ``ctdip.core.data.phantoms``) on
the volume grid, :class:`EllipseSimulator` computes with the project's ``RayTransform`` ``A`` on
the training device, a whole batch ``(N, z, y, x)`` per call::

    y     = A x + eta,   eta ~ N(0, (noise * mean|A x|)^2)      (white, per sample)
    x_fbp = FBP(y)                                              (the filter Problem.from_scan uses)
    s_i   = 1 / q99.9(x_fbp,i)   (scale="auto", as Problem scales real data; 1 with "none")

and returns the scaled pairs ``(s_i x_fbp,i, s_i x_i)`` (and ``s_i y_i``), so that a network
trained on them sees inputs with the statistics of ``problem.x_init`` and outputs images in the
problem's scaled units.
"""

from __future__ import annotations

import torch


def net_input(v: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, z, y, x) volumes -> (N, 1, H, W) in 2D (z = 1 is the channel) or (N, 1, D, H, W) in 3D."""
    return v if dim == 2 else v.unsqueeze(1)


def from_net(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Network output -> (N, z, y, x) volumes (the inverse of :func:`net_input`)."""
    return x if dim == 2 else x.squeeze(1)


class EllipseSimulator:
    """Batched (FBP of noisy data, phantom) pairs for one geometry, on the operator's device.

    ``sample(n, generator)`` returns ``(x_fbp, x)``, both ``(n, z, y, x)``, scaled per sample as
    :class:`~ctdip.core.problem.Problem` scales real data (see the module docstring).
    """

    def __init__(self, A, geometry, volume, noise: float = 0.05, n_ellipses: int = 40,
                 fbp_filter: str = "ram-lak", scale: str = "auto", device: str | torch.device = "cpu"):
        self.A, self.geometry, self.volume = A, geometry, volume
        self.noise, self.n_ellipses, self.fbp_filter, self.scale = noise, n_ellipses, fbp_filter, scale
        self.device = torch.device(device)
        self.shape = tuple(int(s) for s in volume.shape)
        self.dim = 2 if self.shape[0] == 1 else 3
        self._batched_fbp: bool | None = None

    def phantoms(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from ctdip.core.data.phantoms import random_ellipses

        shape = self.shape[1:] if self.dim == 2 else self.shape
        x = random_ellipses(n, shape, generator=generator, device=self.device, n_ellipses=self.n_ellipses)
        x = x.to(self.device, torch.float32)
        return x.reshape(n, *self.shape)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """FBP/FDK of a batch (N, angles, rows, cols) -> (N, z, y, x); one call when supported."""
        from ctdip.core.operators import fbp

        n = y.shape[0]
        if self._batched_fbp is not False:
            try:
                out = fbp(y, self.geometry, self.volume, filter=self.fbp_filter)
                if tuple(out.shape) == (n, *self.shape):
                    self._batched_fbp = True
                    return out.to(self.device)
            except Exception:
                if self._batched_fbp:
                    raise
            self._batched_fbp = False
        return torch.stack([fbp(y[i], self.geometry, self.volume, filter=self.fbp_filter).reshape(self.shape)
                            for i in range(n)]).to(self.device)

    def simulate(self, x: torch.Tensor, generator: torch.Generator, with_data: bool = False):
        """Noisy data and FBP for phantoms ``x`` (N, z, y, x); returns scaled ``(x_fbp, x)``
        (and the scaled noisy data ``y`` as a third item when ``with_data``)."""
        with torch.no_grad():
            y = self.A(x)
            if self.noise > 0:
                amp = y.abs().flatten(1).mean(1).reshape(-1, *([1] * (y.dim() - 1)))
                eta = torch.randn(y.shape, generator=generator, device=generator.device, dtype=y.dtype)
                y = y + self.noise * amp * eta.to(y.device)
            xf = self.fbp(y)
            if self.scale == "auto":
                flat = xf.flatten(1)
                step = max(1, flat.shape[1] // 1_000_000)
                q = torch.quantile(flat[:, ::step].float(), 0.999, dim=1)
                s = torch.where(q > 0, 1.0 / q, torch.ones_like(q)).reshape(-1, *([1] * (xf.dim() - 1)))
                xf, x = xf * s, x * s
                y = y * s.reshape(-1, *([1] * (y.dim() - 1)))
            return (xf, x, y) if with_data else (xf, x)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.simulate(self.phantoms(n, generator), generator)

    def shepp_logan(self, generator: torch.Generator, with_data: bool = False):
        """The validation pair: Shepp–Logan phantom of the volume's grid, same noise and scaling."""
        from ctdip.core.data.phantoms import shepp_logan

        shape = self.shape[1:] if self.dim == 2 else self.shape
        x = torch.as_tensor(shepp_logan(shape), dtype=torch.float32, device=self.device)
        return self.simulate(x.reshape(1, *self.shape), generator, with_data)
