"""Benchmark scans shared by the quality, speed and handbook-method benchmarks.

Two kinds of test object, each as a :class:`ctdip.core.data.Scan` (projections, geometry, volume and a
reference that is only ever used to *score*):

* **Head CT slices** (:func:`ct_scan`): axial slices of a real head CT volume (int16 Hounsfield
  units, (108, 256, 256) voxels of 0.957 x 0.957 x 1.5 mm), read from ``../shared/data/
  cranium_ct_hu.npy`` beside the repository (or ``$CTDIP_BENCH_DATA/cranium_ct_hu.npy``); it is not
  part of ctdip. HU -> attenuation ``mu = 0.0192 /mm (1 + HU/1000)``, clipped at 0. The reference is
  the slice on its own 256² grid; the projections are computed from the slice upsampled 2x
  (bilinear, 512² on the same 245 mm field of view), so the forward model of the reconstruction is
  not the one that made the data (no inverse crime). Fan beam over 360°, source-origin 500 mm,
  source-detector 1000 mm, the detector covering the circle around the square grid (392 columns of
  1.914 mm, magnification 2). Noise: Poisson with ``photons`` per detector pixel before the log
  (``-log(max(I, 1) / I0)``), or relative Gaussian (sigma = rel * mean|Ax|).
* **Walnut phantom** (:func:`walnut_scan`): the procedural walnut of ``ctdip.core.data.phantoms`` at
  128², fan beam as in ``benchmarks/bench_methods.py``, 5 % Gaussian noise, projected from a 2x finer
  phantom (no inverse crime).

Slices are fixed once: :data:`BENCH_SLICES` are reported, :data:`TUNING_SLICES` (and walnut seed
:data:`TUNING_WALNUT_SEED`) are the only ones a default may be chosen on, and a learned prior may be
trained only on slices at least :data:`EXCLUSION` slices away from every benchmark slice
(:func:`training_slices`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_SLICES = (40, 60, 80)  # reported
TUNING_SLICES = (30, 50, 70)  # defaults may be chosen on these
EXCLUSION = 8  # a trained prior never sees slices within 8 of a benchmark slice
BENCH_WALNUT_SEED = 0
TUNING_WALNUT_SEED = 1
CT_FILE = "cranium_ct_hu.npy"
MU_WATER_MM = 0.0192
CT_VOXEL_MM = 0.957
SOD_MM, SDD_MM = 500.0, 1000.0


def ct_data_path() -> Path:
    """Where the head CT volume is: ``$CTDIP_BENCH_DATA`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("CTDIP_BENCH_DATA")
    cands = [Path(env)] if env else []
    cands += [ROOT.parent / "shared" / "data"]
    for c in cands:
        if (c / CT_FILE).is_file():
            return c / CT_FILE
    raise FileNotFoundError(f"{CT_FILE} not found in {', '.join(map(str, cands))} "
                            "(set CTDIP_BENCH_DATA to the folder holding it)")


def ct_volume_mu() -> np.ndarray:
    """The whole head CT as attenuation per mm, float32 (z, y, x)."""
    hu = np.load(ct_data_path(), allow_pickle=False).astype(np.float32)
    return np.clip(MU_WATER_MM * (1.0 + hu / 1000.0), 0.0, None).astype(np.float32)


def training_slices(n_z: int = 108) -> list[int]:
    """Slice indices a learned prior may be trained on (>= EXCLUSION from every benchmark slice)."""
    return [z for z in range(n_z) if all(abs(z - b) >= EXCLUSION for b in BENCH_SLICES)]


def fan_geometry(views: int, n: int, voxel_mm: float, sod: float, sdd: float):
    """Fan beam over 360° whose detector covers the circle around the n x n grid (magnification sdd/sod)."""
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

    fov = n * voxel_mm
    R = fov / math.sqrt(2)
    half = sdd * math.tan(math.asin(R / sod))
    pixel = voxel_mm * sdd / sod
    cols = int(math.ceil(2 * half / pixel))
    ang = 2 * np.pi * np.arange(views) / views
    geom = ProjectionGeometry.circular("fan", ang, cols, 1, pixel_mm=2 * half / cols,
                                       source_origin_mm=sod, source_detector_mm=sdd)
    return geom, VolumeGeometry((1, n, n), voxel_mm)


def _project_fine(image: np.ndarray, geom, voxel_mm: float, factor: int = 2) -> np.ndarray:
    """Line integrals of ``image`` upsampled ``factor``x (bilinear, same extent) under ``geom``."""
    import torch
    from scipy import ndimage

    from ctdip.core.geometry import VolumeGeometry
    from ctdip.core.operators import RayTransform

    n = image.shape[-1]
    fine = ndimage.zoom(image, factor, order=1, mode="nearest", grid_mode=True).astype(np.float32)
    fine = np.clip(fine, 0.0, None)
    vol = VolumeGeometry((1, n * factor, n * factor), (voxel_mm, voxel_mm / factor, voxel_mm / factor))
    A = RayTransform(geom, vol, backend="matrix")
    return A(torch.as_tensor(fine[None])).numpy().astype(np.float64)


def add_noise(y: np.ndarray, *, photons: float | None = None, rel: float | None = None,
              seed: int = 0) -> np.ndarray:
    """Poisson counts ``I ~ Poisson(I0 exp(-y))`` read back as ``-log(max(I,1)/I0)``, or Gaussian."""
    rng = np.random.default_rng(seed)
    if photons is not None:
        counts = rng.poisson(photons * np.exp(-y))
        return (-np.log(np.maximum(counts, 1) / photons)).astype(np.float32)
    sigma = float(rel) * float(np.mean(np.abs(y)))
    return (y + sigma * rng.standard_normal(y.shape)).astype(np.float32)


def ct_scan(z: int, views: int, *, photons: float | None = 1e4, rel: float | None = None,
            seed: int = 0, n: int = 256):
    """A head CT slice ``z`` as a simulated fan-beam scan (module docstring); ``n`` < 256 resamples."""
    from ctdip.core.data import Scan

    vol = ct_volume_mu()
    img = vol[int(z)]
    voxel = CT_VOXEL_MM
    if n != img.shape[-1]:
        from scipy import ndimage

        img = ndimage.zoom(img, n / img.shape[-1], order=1, grid_mode=True, mode="nearest")
        voxel = CT_VOXEL_MM * vol.shape[-1] / n
    img = np.clip(img, 0, None).astype(np.float32)
    geom, vg = fan_geometry(views, n, voxel, SOD_MM, SDD_MM)
    y = _project_fine(img, geom, voxel)
    noisy = add_noise(y, photons=photons if rel is None else None, rel=rel, seed=seed + 1000 * int(z) + views)
    noise = f"poisson {photons:g}" if rel is None else f"gaussian {rel:g}"
    return Scan(projections=noisy, geometry=geom, volume=vg, reference=img[None].copy(),
                info={"object": f"head CT z={z}", "views": views, "noise": noise, "grid": n})


def walnut_scan(views: int, *, n: int = 128, rel: float = 0.05, seed: int = BENCH_WALNUT_SEED):
    """The procedural walnut at n², fan beam as in bench_methods (det 1.5 n, SOD 4 n, SDD 6 n at 1 mm
    pixels), projected from the 2n² phantom of the same seed, relative Gaussian noise."""
    from ctdip.core.data import Scan
    from ctdip.core.data.phantoms import walnut
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

    geom = ProjectionGeometry.circular("fan", np.linspace(0, 2 * np.pi, views, endpoint=False),
                                       det_cols=int(1.5 * n), pixel_mm=1.0,
                                       source_origin_mm=4.0 * n, source_detector_mm=6.0 * n)
    vg = VolumeGeometry.fov(geom, n)
    fine = walnut((2 * n, 2 * n), seed=seed).astype(np.float32)
    ref = fine.reshape(n, 2, n, 2).mean(axis=(1, 3))[None].astype(np.float32)  # the same object on n²
    import torch

    from ctdip.core.operators import RayTransform

    dz, dy, dx = vg.voxel_mm
    vf = VolumeGeometry((1, 2 * n, 2 * n), (dz, dy / 2, dx / 2), vg.center_mm)
    y = RayTransform(geom, vf, backend="matrix")(torch.as_tensor(fine[None])).numpy().astype(np.float64)
    noisy = add_noise(y, rel=rel, seed=seed + 1 + views)
    return Scan(projections=noisy, geometry=geom, volume=vg, reference=ref,
                info={"object": f"walnut seed={seed}", "views": views, "noise": f"gaussian {rel:g}", "grid": n})
