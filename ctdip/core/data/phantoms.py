"""Phantoms: Shepp–Logan, a procedural walnut, and batched random ellipses (EDIP pretraining).

Coordinates: every phantom is defined on the normalised cube [-1, 1]^3 in ASTRA's world axes
(x to the right, y up, z up) and sampled at voxel centres of an array (z, y, x); row 0 of an image
is the *top* (largest y), so ``plt.imshow(img)`` shows the phantom upright. A 2D shape ``(ny, nx)``
is the z = 0 slice of the 3D phantom.

Units:

* :func:`shepp_logan` uses the modified (Toft) intensities, O(1), dimensionless.
* :func:`walnut` is in **attenuation per mm** of a walnut scanned at ~40 kV (shell ~0.055, septum
  ~0.04, kernel ~0.03 /mm), the magnitudes of the public walnut µCT reconstructions; the
  phantom fills ~80 % of the cube, so a 40 mm field of view gives a ~32 mm walnut.
* :func:`random_ellipses` is normalised to [0, 1] (the EDIP paper's pretraining images).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

# (value, a, b, c, x0, y0, z0, phi_deg): modified 3D Shepp–Logan (Kak & Slaney geometry, Toft
# contrast). The 2D phantom uses (value, a, b, x0, y0, phi) of the same rows at z = 0.
_SHEPP_LOGAN_3D = [
    (1.0, 0.69, 0.92, 0.81, 0.0, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.78, 0.0, -0.0184, 0.0, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.22, 0.0, 0.0, -18.0),
    (-0.2, 0.16, 0.41, 0.28, -0.22, 0.0, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.41, 0.0, 0.35, -0.15, 0.0),
    (0.1, 0.046, 0.046, 0.05, 0.0, 0.1, 0.25, 0.0),
    (0.1, 0.046, 0.046, 0.05, 0.0, -0.1, 0.25, 0.0),
    (0.1, 0.046, 0.023, 0.05, -0.08, -0.605, 0.0, 0.0),
    (0.1, 0.023, 0.023, 0.02, 0.0, -0.606, 0.0, 0.0),
    (0.1, 0.023, 0.046, 0.02, 0.06, -0.605, 0.0, 0.0),
]
_SHEPP_LOGAN_2D = [
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"phantom shape must be (ny, nx) or (nz, ny, nx) of positive sizes, got {shape}")
    return shape


def _axis(n: int) -> np.ndarray:
    """Voxel-centre coordinates of n voxels spanning [-1, 1]."""
    return (np.arange(n, dtype=np.float64) + 0.5) * (2.0 / n) - 1.0


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (x, y, z) for an array (z, y, x) or (y, x); rows run top (y=+1) down."""
    if len(shape) == 2:
        ny, nx = shape
        z = np.zeros(1)
    else:
        nz, ny, nx = shape
        z = _axis(nz)
    zz, yy, xx = np.meshgrid(z, -_axis(ny), _axis(nx), indexing="ij")
    if len(shape) == 2:
        return xx[0], yy[0], zz[0]
    return xx, yy, zz


def shepp_logan(shape: Sequence[int]) -> np.ndarray:
    """Modified Shepp–Logan phantom, float32 of ``shape`` (2D (y, x) or 3D (z, y, x)), values in [0, 1].

    Each ellipse(oid) adds its value where ``((x-x0)'/a)^2 + ((y-y0)'/b)^2 (+ ((z-z0)/c)^2) <= 1``
    (primed coordinates rotated by phi about z).
    """
    shape = _check_shape(shape)
    x, y, z = _grid(shape)
    out = np.zeros(shape, dtype=np.float64)
    if len(shape) == 2:  # the classical 2D table
        rows = [(v, a, b, 1.0, x0, y0, 0.0, phi) for v, a, b, x0, y0, phi in _SHEPP_LOGAN_2D]
    else:
        rows = _SHEPP_LOGAN_3D
    for v, a, b, c, x0, y0, z0, phi in rows:
        t = math.radians(phi)
        ct, st = math.cos(t), math.sin(t)
        dx, dy = x - x0, y - y0
        xr, yr = ct * dx + st * dy, -st * dx + ct * dy
        r = (xr / a) ** 2 + (yr / b) ** 2 + ((z - z0) / c) ** 2
        out[r <= 1.0] += v
    return np.clip(out, 0.0, None).astype(np.float32)


# ------------------------------------------------------------------------------------ walnut
def _sphere_noise(rng: np.random.Generator, n_waves: int, freq: tuple[float, float]):
    """A smooth random function on directions: sum_k a_k sin(f_k <w_k, n> + p_k) / sqrt(K)."""
    w = rng.normal(size=(n_waves, 3))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    f = rng.uniform(*freq, size=n_waves)
    p = rng.uniform(0, 2 * np.pi, size=n_waves)
    a = rng.normal(size=n_waves)

    def field(nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> np.ndarray:
        out = np.zeros_like(nx)
        for k in range(n_waves):
            out += a[k] * np.sin(f[k] * (w[k, 0] * nx + w[k, 1] * ny + w[k, 2] * nz) + p[k])
        return out / math.sqrt(n_waves)

    return field


def walnut(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A procedural walnut in attenuation per mm, float32 of ``shape`` (2D (y, x) = z=0 slice, or 3D).

    Built from an ellipsoidal radius ``s = |(x/ax, y/ay, z/az)|`` modulated by smooth random
    functions of the direction (seeded):

    * **shell** (0.055 /mm): ``1 - t < s < 1 + wrinkles``, thickness t ~ 0.09, a rough outer
      surface and a raised suture ridge along the plane x = 0;
    * **septum** (0.04 /mm): the membrane |x| < 0.022 inside the shell that splits the kernel;
    * **kernel lobes** (0.03 /mm with ±10 % texture): inside ``s < 1 - t - gap`` on both sides of
      the septum, cut by meandering air channels where a band-limited random field
      ``h(x) = sum_k a_k sin(f_k <w_k, x> + p_k) + 0.25 sin(9 pi s)`` is near zero (|h| < 0.22),
      and a partial secondary partition at y = 0;
    * air (0) elsewhere. Edges are softened by a half-voxel Gaussian so the phantom is band-limited.
    """
    from scipy import ndimage

    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)
    ax, ay, az = 0.76, 0.84, 0.80
    ax, ay, az = (v * rng.uniform(0.95, 1.05) for v in (ax, ay, az))
    r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2) + 1e-12
    nx, ny, nz = x / (r * ax), y / (r * ay), z / (r * az)
    low = _sphere_noise(rng, 12, (1.0, 3.0))(nx, ny, nz)
    high = _sphere_noise(rng, 24, (8.0, 18.0))(nx, ny, nz)
    fold = _sphere_noise(rng, 16, (3.0, 8.0))(nx, ny, nz)
    s = r * (1.0 + 0.035 * low)
    ridge = 0.05 * np.exp(-((x / 0.06) ** 2))  # suture ridge along x = 0
    outer = 1.0 + 0.018 * high + ridge
    t = 0.09 * (1.0 + 0.15 * fold)
    shell = (s < outer) & (s > outer - t - ridge)
    inner = s < 1.0 - 0.09 - 0.05 * (1.2 + 0.6 * low)
    septum = inner & (np.abs(x) < 0.022)
    channels = _sphere_noise(rng, 48, (14.0, 24.0))(x, y, z) + 0.3 * np.sin(9 * np.pi * s)
    folds = np.abs(channels) > 0.22
    partition = (np.abs(y + 0.02 * fold) < 0.018) & (y < 0.2) & (np.abs(x) < 0.55)
    kernel = inner & ~septum & folds & ~partition & (np.abs(x) > 0.04)
    tex = 1.0 + 0.1 * _sphere_noise(rng, 16, (10.0, 25.0))(x, y, z)
    vol = np.zeros(shape, dtype=np.float64)
    vol[shell] = 0.055
    vol[septum] = 0.040
    vol[kernel] = 0.030
    vol *= tex
    vol = ndimage.gaussian_filter(vol, sigma=0.5, mode="constant")
    return np.clip(vol, 0.0, None).astype(np.float32)


# ------------------------------------------------------------------------------------ ellipses
def random_ellipses(
    n: int,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    n_ellipses: int = 40,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` random-ellipse images (2D shape) or ellipsoid volumes (3D shape), tensor (n, *shape) in [0, 1].

    The distribution of the EDIP paper's synthetic pretraining data (Barbano et al. 2022, after
    the dival ``EllipsesDataset``): each image sums ``n_ellipses`` ellipses with

    * value ``v ~ U(-0.4, 1)``,
    * semi-axes ``a_i ~ 0.2 * Exp(1)`` (clipped to [0.01, 1]) in units of the half-width,
    * centre uniform in the unit ball (so ellipses stay in the inscribed disc/ball),
    * orientation ``phi ~ U(0, 2 pi)`` (3D: Euler angles phi, theta, psi uniform),

    then the foreground (non-zero pixels) is shifted so its minimum is 0 and the image is divided
    by its maximum: ``x <- (x - min_fg x) * [x != 0];  x <- x / max x``.

    All random numbers are drawn on ``device`` from ``generator`` (seeded generators give the same
    images for the same device); the work is ``n_ellipses`` vectorised passes over (n, *shape).
    """
    shape = _check_shape(shape)
    dev = torch.device(device)
    if generator is not None and generator.device != dev:
        gen_dev = generator.device
    else:
        gen_dev = dev
    dim = len(shape)
    E = int(n_ellipses)

    def rand(*size):
        return torch.rand(*size, generator=generator, device=gen_dev, dtype=torch.float64).to(dev)

    value = -0.4 + 1.4 * rand(n, E)
    axes = (-0.2 * torch.log1p(-rand(n, E, dim).clamp(max=1 - 1e-12))).clamp(0.01, 1.0)
    # centre uniform in the unit ball: direction * radius^(1/dim)
    g = torch.randn(n, E, dim, generator=generator, device=gen_dev, dtype=torch.float64).to(dev)
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    centre = g * rand(n, E, 1) ** (1.0 / dim)
    if dim == 2:
        phi = 2 * math.pi * rand(n, E)
        c, s = torch.cos(phi), torch.sin(phi)
        rot = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # (n, E, 2, 2)
    else:
        ang = 2 * math.pi * rand(n, E, 3)
        rot = _euler_zxz(ang[..., 0], ang[..., 1], ang[..., 2])  # (n, E, 3, 3)
    # coordinate grid (dim, *shape): components (x, y[, z]) in [-1, 1]
    axes_1d = [torch.linspace(-1 + 1 / s_, 1 - 1 / s_, s_, device=dev, dtype=dtype) for s_ in shape]
    mesh = torch.meshgrid(*axes_1d, indexing="ij")
    coords = [mesh[-1], -mesh[-2]] + ([mesh[0]] if dim == 3 else [])
    out = torch.zeros((n, *shape), device=dev, dtype=dtype)
    value, axes, centre, rot = (t.to(dtype) for t in (value, axes, centre, rot))
    view = (n,) + (1,) * dim
    for e in range(E):
        d = [coords[i].unsqueeze(0) - centre[:, e, i].reshape(view) for i in range(dim)]
        q = torch.zeros((n, *shape), device=dev, dtype=dtype)
        for i in range(dim):
            p = sum(rot[:, e, i, j].reshape(view) * d[j] for j in range(dim))
            q += (p / axes[:, e, i].reshape(view)) ** 2
        out += value[:, e].reshape(view) * (q <= 1.0).to(dtype)
    flat = out.reshape(n, -1)
    fg = flat != 0
    big = torch.finfo(dtype).max
    mins = torch.where(fg, flat, torch.full_like(flat, big)).amin(dim=1, keepdim=True)
    mins = torch.where(torch.isfinite(mins) & (mins < big), mins, torch.zeros_like(mins))
    flat = torch.where(fg, flat - mins, flat)
    maxs = flat.amax(dim=1, keepdim=True)
    flat = flat / torch.where(maxs > 0, maxs, torch.ones_like(maxs))
    return flat.reshape(n, *shape)


def _euler_zxz(phi: torch.Tensor, theta: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Rotation matrices R = Rz(psi) Rx(theta) Rz(phi), shape (..., 3, 3)."""
    cf, sf = torch.cos(phi), torch.sin(phi)
    ct, st = torch.cos(theta), torch.sin(theta)
    cp, sp = torch.cos(psi), torch.sin(psi)
    r = torch.stack(
        [
            torch.stack([cp * cf - ct * sf * sp, cp * sf + ct * cf * sp, sp * st], -1),
            torch.stack([-sp * cf - ct * sf * cp, -sp * sf + ct * cf * cp, cp * st], -1),
            torch.stack([st * sf, -st * cf, ct], -1),
        ],
        -2,
    )
    return r


PHANTOMS = {"shepp-logan": shepp_logan, "walnut": walnut}
