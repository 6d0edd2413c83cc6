"""Simulated scans: phantom -> projections (+ noise) -> a scan folder (ctdip or walnut layout).

Acquisition (defaults modelled on the walnut µCT scanner: source-origin 66 mm,
source-detector 199 mm, magnification ~3):

* the volume is ``size`` voxels across a ``fov_mm`` field of view (default 40 mm), centred at the
  origin: (1, N, N) for parallel/fan, (N, N, N) for cone;
* the detector covers the circle circumscribing the volume's square cross-section (radius
  ``R = fov / sqrt(2)``), so nothing is truncated: fan/cone half-width ``SDD tan(asin(R/SOD))``,
  parallel ``R``; its pixel is the voxel times the magnification ``SDD/SOD`` (parallel: the voxel),
  unless ``--detector COLS`` fixes the column count (the pixel then stretches to keep the coverage);
  cone-beam rows cover the volume's height seen from the source's nearest point;
* angles ``360 i / K`` degrees, i = 0..K-1.

Intensities: ``walnut`` is in attenuation per mm; ``shepp-logan`` and ``ellipses`` are O(1)
images scaled by ``mu_mm`` (attenuation per mm of intensity 1, default 0.05); a volume from a
file is used as is (attenuation per mm), or with ``hu=True`` converted from Hounsfield units by
``mu = mu_water (1 + HU/1000)``, ``mu_water = 0.0192 /mm`` (water at ~70 keV), clipped at 0.

Noise: ``noise`` = relative Gaussian noise on the line integrals (sigma = noise * mean|Ax|, the
EDIP paper), or ``photons`` = I0 for Poisson counts ``I ~ Poisson(I0 exp(-Ax))`` written as raw
counts with two flats (Poisson(I0) + dark each) and a dark (constant 100), so the readers' flat/dark/log
path is exercised. The projections are computed on the phantom's own grid (``RayTransform``
with the default backend).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ctdip.core.data.sanity import check_grid_memory
from ctdip.core.validate import NONNEG, POSITIVE, Rule, check_output_path, choice
from ctdip.errors import UserError

SOD_MM = 66.0
SDD_MM = 199.0
MU_WATER_MM = 0.0192
DARK_LEVEL = 100.0
NOISE_FREE_I0 = 10000.0
PHANTOM_NAMES = ("walnut", "shepp-logan", "ellipses")


def make_geometry(kind: str, angles: int, size: int, fov_mm: float, detector: int | None = None,
                  nz: int | None = None):
    """(ProjectionGeometry, VolumeGeometry, geometry.yaml dict) of a simulated circular scan."""
    from ctdip.core.data.ctdip_layout import geometry_dict
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

    if kind not in ("parallel", "fan", "cone"):
        raise UserError(f"--geometry must be parallel, fan or cone, got {kind!r}")
    if angles < 1:
        raise UserError(f"--angles must be positive, got {angles}")
    if size < 2:
        raise UserError(f"--size must be at least 2, got {size}")
    voxel = fov_mm / size
    R = fov_mm / math.sqrt(2)
    if kind == "parallel":
        half, pixel = R, voxel
    else:
        if R >= SOD_MM:
            raise UserError(f"--fov-mm {fov_mm} is too large for the source-origin distance {SOD_MM} mm")
        half = SDD_MM * math.tan(math.asin(R / SOD_MM))
        pixel = voxel * SDD_MM / SOD_MM
    cols = detector if detector is not None else int(math.ceil(2 * half / pixel))
    if cols < 1:
        raise UserError(f"--detector must be positive, got {cols}")
    pixel = 2 * half / cols
    rows = 1
    nz_ = 1
    if kind == "cone":
        nz_ = size if nz is None else int(nz)
        zhalf = nz_ * voxel / 2
        vhalf = zhalf * SDD_MM / (SOD_MM - R)
        rows = int(math.ceil(2 * vhalf / pixel))
    ang = 2 * np.pi * np.arange(angles) / angles
    sod = sdd = None
    if kind != "parallel":
        sod, sdd = SOD_MM, SDD_MM
    geom = ProjectionGeometry.circular(kind, ang, cols, rows, pixel_mm=pixel, source_origin_mm=sod,
                                       source_detector_mm=sdd)
    vol = VolumeGeometry((nz_, size, size), voxel)
    gy = geometry_dict(geom, vol, kind=kind, angles_deg={"count": int(angles), "start_deg": 0.0, "stop_deg": 360.0},
                       source_origin_mm=sod, source_detector_mm=sdd, pixel_mm=pixel)
    return geom, vol, gy


def make_phantom(phantom: str, shape: tuple[int, ...], seed: int, mu_mm: float) -> np.ndarray:
    """The named phantom on ``shape`` (2D or 3D), in attenuation per mm."""
    import torch

    from ctdip.core.data import phantoms

    if phantom == "walnut":
        return phantoms.walnut(shape, seed=seed)
    if phantom == "shepp-logan":
        return phantoms.shepp_logan(shape) * np.float32(mu_mm)
    if phantom == "ellipses":
        g = torch.Generator().manual_seed(int(seed))
        return (phantoms.random_ellipses(1, shape, generator=g)[0].numpy() * mu_mm).astype(np.float32)
    raise UserError(f"unknown phantom '{phantom}'; choose one of: {', '.join(PHANTOM_NAMES)}")


def load_volume(path: str | Path, hu: bool = False) -> np.ndarray:
    """A (z, y, x) or (y, x) volume from .npy or .tif; Hounsfield units converted if ``hu``."""
    from ctdip.core.io import read_npy, read_tiff

    path = Path(path)
    if not path.is_file():
        raise UserError("volume file not found", path=path)
    if path.suffix.lower() == ".npy":
        v = read_npy(path)
    elif path.suffix.lower() in (".tif", ".tiff"):
        v = read_tiff(path)
    else:
        raise UserError("--from-volume expects a .npy or .tif/.tiff file", path=path)
    v = np.asarray(v, dtype=np.float32)
    v = np.squeeze(v) if v.ndim > 3 else v
    if v.ndim not in (2, 3) or not np.all(np.isfinite(v)):
        raise UserError(f"expected a finite 2D or 3D array, got shape {v.shape}", path=path)
    if hu:
        v = np.clip(MU_WATER_MM * (1.0 + v / 1000.0), 0.0, None).astype(np.float32)
    return v


def _fit_volume(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize ``v`` to ``shape`` (linear interpolation of the same extent), if it differs."""
    from scipy import ndimage

    if v.shape == shape:
        return v
    f = [s / t for s, t in zip(shape, v.shape)]
    return ndimage.zoom(v, f, order=1, mode="nearest", grid_mode=True).astype(np.float32)


def exact_counts(data: np.ndarray, max_nudges: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 counts, flats (2) and dark whose flat/dark/log reading gives back float32 ``data``
    bit for bit: ``c = D + I0 exp(-data)`` (I0 = 1e4, D = 100), then the few pixels whose float64
    round trip lands on a neighbouring float32 are nudged by one float64 ulp at a time.

    ``data`` entries with |p| < 1e-7 (below float32 resolution of an O(1) line integral) are
    expected to be zero (the caller zeroes them); they read back exactly.
    """
    from ctdip.core.data.preprocess import flat_dark_log

    p = np.asarray(data, np.float32)
    shape = p.shape[1:]
    dark = np.full(shape, DARK_LEVEL)
    flats = np.full((2, *shape), DARK_LEVEL + NOISE_FREE_I0)
    c = DARK_LEVEL + NOISE_FREE_I0 * np.exp(-p.astype(np.float64))
    for _ in range(max_nudges):
        r = flat_dark_log(c, flats.mean(0), dark)
        bad = r != p
        if not bad.any():
            break
        # too much attenuation read back -> more counts
        c[bad] = np.nextafter(c[bad], np.where(r[bad] > p[bad], np.inf, -np.inf))
    return c, flats, dark


def simulate(out: str | Path, *, phantom: str = "walnut", geometry: str = "fan", angles: int = 60,
             size: int = 128, detector: int | None = None, noise: float = 0.0, photons: float | None = None,
             layout: str = "ctdip", seed: int = 0, from_volume: str | Path | None = None, hu: bool = False,
             fov_mm: float = 40.0, mu_mm: float = 0.05, force: bool = False, backend: str = "auto",
             quiet: bool = False,
             return_arrays: bool = False) -> dict:
    """Simulate a scan into folder ``out`` and return a summary dict (see the module docstring).

    Everything is computed before the first file is written, and written into a temporary
    sibling folder that is renamed to ``out`` at the end: a failure leaves no partial folder.
    ``return_arrays`` adds ``summary["arrays"]`` = {reference, clean (Ax), data (the stored
    projections: noisy line integrals, or raw counts with ``photons``)}.
    """
    import torch

    from ctdip.core.operators import RayTransform

    out = check_output_path(out, "folder", option="OUT")
    choice(layout, "--layout", ("ctdip", "walnut"))
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError("output folder exists and is not empty (use --force to replace it)", path=out)
    angles = Rule(integer=True, minimum=2)(angles, "--angles")
    size = Rule(integer=True, minimum=8)(size, "--size")
    detector = Rule(integer=True, minimum=2, optional=True)(detector, "--detector")
    noise = NONNEG(noise, "--noise")
    photons = Rule(minimum=0, open_min=True, optional=True)(photons, "--photons")
    fov_mm = POSITIVE(fov_mm, "--fov-mm")
    check_grid_memory((size if geometry == "cone" else 1, size, size), "--size")
    if photons is not None and noise > 0:
        raise UserError("choose either --noise (Gaussian) or --photons (Poisson), not both")
    if layout == "walnut" and geometry == "parallel":
        raise UserError("the walnut layout stores cone-beam vectors; use --geometry fan or cone")

    rng = np.random.default_rng(seed)
    vol_arr = None
    if from_volume is not None:
        vol_arr = load_volume(from_volume, hu=hu)
        if geometry in ("parallel", "fan"):
            if vol_arr.ndim == 3 and vol_arr.shape[0] != 1:
                raise UserError(f"a {geometry}-beam scan needs a 2D volume, got shape {vol_arr.shape}; "
                                "use --geometry cone for volumes", path=from_volume)
            vol_arr = vol_arr.reshape(vol_arr.shape[-2:])
        elif vol_arr.ndim != 3:
            raise UserError(f"a cone-beam scan needs a 3D volume, got shape {vol_arr.shape}", path=from_volume)
    nz = None
    if vol_arr is not None and geometry == "cone":
        nz = int(round(vol_arr.shape[0] * size / vol_arr.shape[-1]))
    geom, vol, gyaml = make_geometry(geometry, angles, size, fov_mm, detector, nz)
    shape = (size, size) if geometry != "cone" else tuple(vol.shape)
    if vol_arr is None:
        x = make_phantom(phantom, shape, seed, mu_mm)
        source = phantom
    else:
        x = _fit_volume(vol_arr, shape)
        source = str(from_volume)
        if vol_arr.shape != shape and not quiet:
            import sys

            sys.stderr.write(f"note: {from_volume}: resampled the {' x '.join(map(str, vol_arr.shape))} volume to "
                             f"the {' x '.join(map(str, shape))} grid (--size {size}; linear interpolation, same "
                             f"{fov_mm:g} mm field of view)\n")
            sys.stderr.flush()
    x3 = x.reshape(vol.shape).astype(np.float32)

    A = RayTransform(geom, vol, backend=backend, device="cpu")
    with torch.no_grad():
        y = A(torch.from_numpy(x3)).numpy().astype(np.float64)
    summary: dict[str, Any] = {"phantom": source, "geometry": geometry, "angles": angles, "size": size,
                               "detector": list(geom.det_shape), "voxel_mm": float(vol.voxel_mm[2]),
                               "layout": layout, "seed": seed, "backend": A.backend,
                               "max_line_integral": float(y.max())}
    flats = dark = None
    if photons is not None:
        counts = rng.poisson(float(photons) * np.exp(-y)).astype(np.float64) + DARK_LEVEL
        flats = rng.poisson(float(photons), size=(2, *geom.det_shape)).astype(np.float64) + DARK_LEVEL
        dark = np.full(geom.det_shape, DARK_LEVEL)
        summary.update(noise="poisson", photons=float(photons))
        data = counts
    elif noise > 0:
        from ctdip.core.data.noise import gaussian_noise

        data, sigma = gaussian_noise(y, noise, rng)
        summary.update(noise="gaussian", noise_rel=float(noise), noise_sigma=sigma)
    else:
        data = y.astype(np.float32)
        summary.update(noise="none")
    if photons is None:  # below float32 resolution of an O(1) line integral: exactly zero
        data = np.where(np.abs(data) < 1e-7, np.float32(0), data).astype(np.float32)

    tmp = out.parent / f".{out.name}.tmp-simulate"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if layout == "ctdip":
            from ctdip.core.data.ctdip_layout import write_ctdip

            write_ctdip(tmp, data, gyaml, reference=x3, flats=flats,
                        darks=None if dark is None else dark[None], voxel_mm=vol.voxel_mm)
        else:
            from ctdip.core.data.walnut_layout import write_walnut

            if photons is None:  # noise-free or Gaussian: counts that read back to exactly `data`
                counts, flats, dark = exact_counts(data)
                dtype = np.float64
            else:
                counts, dtype = data, np.float32
            write_walnut(tmp, counts, flats, dark, geom, vol, reference=x3, dtype=dtype)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["folder"] = str(out)
    if return_arrays:
        summary["arrays"] = {"reference": x3, "clean": y.astype(np.float32),
                             "data": np.asarray(data, np.float32)}
    return summary
