"""Physical plausibility of a scan: refuse data and geometries that cannot be reconstructed, warn
about ones that are merely unusual.

Refusals raise :class:`~ctdip.errors.UserError` naming the file; the functions returning lists
give warning strings, which the commands print as one ``warning: ...`` line each.

Rules (README "Your own scan"):

* **projection values**: complex data are refused. Without ``flats.tif`` the projections must be
  line integrals ``p = -log(I / I0)``; integer data (uint8, uint16, ...) or data whose median
  exceeds :data:`MAX_LINE_INTEGRAL` = 30 (a transmission ``e^-30 ~ 1e-13``, far below any
  detector's dynamic range) are raw counts, refused with a hint to add the flats. ``darks.tif``
  without ``flats.tif`` is refused; all-zero projections are refused; negative line integrals
  below -1 (transmission above e = 2.7: more photons than the open beam) give a warning.
* **views**: at least 2, and not all at one angle (an angular span below 1e-6 rad); a span below
  180 degrees gives a limited-angle warning.
* **source**: a fan/cone source inside the reconstruction volume (in any view) is refused.
* **field of view**: the volume's centre and 8 points of its inscribed in-plane circle are
  projected onto the detector of every view (cone beams: only points between source and
  detector count). None of them on the detector in any view -> refused (the field of view misses
  the volume: check ``volume.center_mm``, the detector offsets and the distances); the centre off
  the detector in more than half of the views -> warning.
* **grid memory**: a grid whose float32 volume times :data:`GRID_COPIES` exceeds the physical
  memory is refused before anything is allocated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ctdip.errors import UserError

#: largest plausible median line integral (transmission e^-30); above it the data are counts
MAX_LINE_INTEGRAL = 30.0
#: working copies of the volume a reconstruction holds (images, references, gradients, Adam moments)
GRID_COPIES = 16


def check_dtype(dtype: np.dtype, path: Path, has_flats: bool) -> None:
    """Refuse complex projections, and integer ones (raw counts) without flats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise UserError(f"complex projections ({dtype}); ctdip needs real line integrals, or raw counts "
                        "with flats.tif", path=path)
    if not np.issubdtype(dtype, np.number) or dtype == np.bool_:
        raise UserError(f"projections are not numbers ({dtype})", path=path)
    if np.issubdtype(dtype, np.integer) and not has_flats:
        raise UserError(f"{dtype} projections are raw detector counts, but there is no flats.tif: add "
                        "flats.tif (open-beam images, and darks.tif) next to them, or store line integrals "
                        "-log(I / I0) as float32", path=path)


def check_flats_darks(folder: Path, flat_name: str = "flats.tif", dark_name: str = "darks.tif") -> None:
    """Refuse darks without flats (a dark alone cannot turn counts into line integrals)."""
    if (folder / dark_name).is_file() and not (folder / flat_name).is_file():
        raise UserError(f"{dark_name} without {flat_name}: raw counts need the open-beam images "
                        f"({flat_name}) too; add them, or remove {dark_name} if the projections are "
                        "line integrals", path=folder / dark_name)


def check_not_empty(p: np.ndarray, path: Path) -> None:
    """Refuse empty or all-zero projections."""
    a = np.asarray(p)
    if a.size == 0:
        raise UserError("no projection data", path=path)
    if not np.any(a):
        raise UserError("projections are all zero (no object, or an empty file)", path=path)


def check_reference(ref: np.ndarray, path: Path) -> np.ndarray:
    """The reference, refused if it holds NaN or infinite values (it could not score anything)."""
    if not np.all(np.isfinite(ref)):
        raise UserError("reference contains NaN or infinite values; fix it or remove it", path=path)
    return ref


def check_line_integrals(p: np.ndarray, path: Path) -> list[str]:
    """Refuse all-zero data and raw counts stored as line integrals; warnings for odd values."""
    a = np.asarray(p)
    check_not_empty(a, path)
    sub = a.reshape(-1)[:: max(1, a.size // 1_000_000)]
    med = float(np.median(sub))
    if med > MAX_LINE_INTEGRAL:
        raise UserError(f"values look like raw detector counts (median {med:.4g}, max {float(sub.max()):.4g}; "
                        f"a line integral above {MAX_LINE_INTEGRAL:g} means a transmission below "
                        f"e^-{MAX_LINE_INTEGRAL:g}) but there is no flats.tif: add flats.tif (and darks.tif), "
                        "or store line integrals -log(I / I0)", path=path)
    warnings = []
    lo = float(sub.min())
    if lo < -1.0:
        warnings.append(f"{path}: line integrals down to {lo:.3g} (transmission above {math.exp(-lo):.3g}: "
                        "more photons than the open beam); check the flat field or the sign")
    return warnings


def _detector_coords(geom, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(col, row, between) of points pts (m, 3) [x, y, z] in every view: detector pixel
    coordinates (0 = first pixel centre) and, for cone beams, whether the point lies between
    the source and the detector."""
    v = geom.vectors
    s_or_r, d, u, vv = v[:, None, 0:3], v[:, None, 3:6], v[:, None, 6:9], v[:, None, 9:12]
    n = np.cross(u, vv)
    p = pts[None]
    if geom.beam == "cone":
        num = np.sum((d - s_or_r) * n, -1)
        den = np.sum((p - s_or_r) * n, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / den
        q = s_or_r + t[..., None] * (p - s_or_r)
        between = (den * num > 0) & (np.abs(t) >= 1.0)  # source -> point -> detector
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.sum((d - p) * n, -1) / np.sum(s_or_r * n, -1)
        q = p + t[..., None] * s_or_r
        between = np.ones(t.shape, dtype=bool)
    w = q - d
    uu, uv, vv2 = np.sum(u * u, -1), np.sum(u * vv, -1), np.sum(vv * vv, -1)
    wu, wv = np.sum(w * u, -1), np.sum(w * vv, -1)
    det = uu * vv2 - uv * uv
    a = (wu * vv2 - wv * uv) / det
    b = (wv * uu - wu * uv) / det
    rows, cols = geom.det_shape
    return a + (cols - 1) / 2, b + (rows - 1) / 2, between & np.isfinite(a) & np.isfinite(b)


def check_geometry(geom, volume, path: Path | None = None) -> list[str]:
    """Refuse impossible geometries (module docstring); warnings for unusual ones."""
    warnings: list[str] = []
    n = geom.n_views
    if n < 2:
        raise UserError(f"{n} view: a reconstruction needs at least 2 views", path=path)
    ang = geom.view_angles()
    span = float(np.max(ang) - np.min(ang))
    if span < 1e-6:
        raise UserError(f"all {n} views are at the same angle ({math.degrees(float(ang[0])):.4g} degrees); "
                        "check angles (start_deg and stop_deg) or the geometry vectors", path=path)
    step = span / (n - 1)
    coverage = math.degrees(span + step)
    if coverage < 180 - 1e-6:
        warnings.append(f"{path}: the views cover only {coverage:.3g} degrees (limited-angle scan: expect "
                        "streaks along the missing directions)")
    cz, cy, cx = volume.center_mm
    ez, ey, ex = volume.extent_mm
    if geom.beam == "cone":
        src = geom.vectors[:, 0:3]
        inside = (np.abs(src[:, 0] - cx) < ex / 2) & (np.abs(src[:, 1] - cy) < ey / 2)
        if volume.shape[0] > 1:
            inside &= np.abs(src[:, 2] - cz) < ez / 2
        if np.any(inside):
            k = int(np.argmax(inside))
            r = float(np.hypot(src[k, 0], src[k, 1]))
            raise UserError(f"the source is inside the reconstruction volume (view {k}: {r:.4g} mm from the "
                            f"rotation axis, the volume spans {ex:.4g} x {ey:.4g} mm around "
                            f"({cx:.4g}, {cy:.4g})); check source_origin_mm and the volume", path=path)
    rad = 0.5 * min(ex, ey)
    phi = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    pts = np.concatenate([[[cx, cy, cz]], np.stack([cx + rad * np.cos(phi), cy + rad * np.sin(phi),
                                                    np.full(8, cz)], 1)])
    col, row, between = _detector_coords(geom, pts)
    rows, cols = geom.det_shape
    on = between & (col >= -0.5) & (col <= cols - 0.5)
    if rows > 1 and not geom.is_2d:
        on &= (row >= -0.5) & (row <= rows - 0.5)
    if not np.any(on):
        raise UserError(f"the field of view misses the volume: no point of the volume (centre x={cx:.4g}, "
                        f"y={cy:.4g}, z={cz:.4g} mm) is seen on the detector in any view; check volume.center_mm, "
                        "the detector offsets and the distances", path=path)
    off = int(np.count_nonzero(~on[:, 0]))
    if off > n / 2:
        warnings.append(f"{path}: the volume centre is outside the field of view in {off} of {n} views")
    return warnings


def physical_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8.0 * 2**30


def check_grid_memory(shape, option: str = "--size") -> None:
    """Refuse a grid whose :data:`GRID_COPIES` float32 copies exceed the physical memory."""
    voxels = float(np.prod([float(s) for s in shape]))
    need = voxels * 4 * GRID_COPIES
    have = physical_memory_bytes()
    if need > have:
        raise UserError(f"{option}: a {' x '.join(str(int(s)) for s in shape)} grid needs about "
                        f"{need / 2**30:.3g} GiB ({GRID_COPIES} float32 copies) but this machine has "
                        f"{have / 2**30:.3g} GiB; use a smaller --size")
