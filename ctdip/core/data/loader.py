"""Open any scan folder as a :class:`~ctdip.core.data.Scan`, applying the shared reconstruct options.

Layouts are recognised by content, in the layout registry's order (``ctdip.core.data.layouts``):
``geometry.yaml``/``projections.tif`` -> ctdip layout; ``Projections/tubeV*``, ``tubeV*`` or
``scan_geom_corrected.geom`` -> walnut layout.

Options (``--setup NAME`` presets supply defaults; explicit options win), applied in this order
through the geometry layer so every backend sees the same numbers (:func:`load_geometry` applies
them to a bare ``geometry.yaml``, without projections):

1. ``angles K``: the K equispaced views ``geometry.view_indices(K)``; only those are read.
2. ``mode``: ``2d`` (default) reconstructs one slice; ``3d`` the volume. Data with one detector
   row are always 2D.
3. ``slice Z`` (2D mode on a multi-row scan): Z indexes the z axis of the scan's full volume grid
   (``mid`` = the middle slice ``nz // 2``, ``+3``/``-3`` = offsets from it). The 2D problem is the
   fan (or parallel) geometry of the detector row through that slice, ``geometry.fan_slice(row)``:
   ``row`` is where rays from the source through the point (0, 0, z) on the rotation axis meet the
   detector, averaged over views and rounded. The one-slice volume keeps the in-plane grid and
   slice thickness; the reference is that z slice of the reference volume.
4. ``bin B``: ``geometry.bin(B, B)`` in 3D, ``geometry.bin(1, B)`` (columns only) in 2D, with the
   projections block-averaged the same way (``bin_projections``). Setups give ``bin_to_cols C``
   instead: ``B = max(1, floor(cols / C))``, so a protocol's "bin 6x on the 768-column walnut
   detector" (C = 128) leaves a smaller detector unbinned; an explicit ``bin`` wins. When the
   binned detector column, seen at the rotation axis (pixel x source-origin / source-detector
   distance), is wider than ``MAX_COLUMN_VOXELS`` voxels of the grid, one ``warning:`` line says
   that resolution is lost (:func:`binning_warning`).
5. ``size N``: the same field of view on an N x N in-plane grid (``volume.with_size(N)``; in 3D
   the slice count scales by the same factor). The reference is resampled to the new voxel
   centres by linear interpolation after a Gaussian anti-alias filter of sigma = (f - 1) / 2 old
   voxels per axis, f = new voxel / old voxel (no filter when f <= 1).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ctdip.core.data import Scan
from ctdip.core.validate import POSITIVE_INT, Rule, choice
from ctdip.errors import UserError

SCAN_OPTIONS = ("angles", "bin", "bin_to_cols", "slice", "mode", "size", "orbit")
#: a binned detector column wider than this many voxels (at the rotation axis) draws a warning;
#: the published walnut protocols sit at 3 (2D: 0.30 mm columns, 0.1 mm voxels) and 0.5 (3D)
MAX_COLUMN_VOXELS = 4.0


def setups_dir() -> Path:
    from ctdip.core.io import preset_dir

    return preset_dir("setups")


def setup_names() -> list[str]:
    return sorted(p.stem for p in setups_dir().glob("*.yaml"))


def load_setup(name: str | Path) -> dict:
    """A setup preset (``presets/setups/<name>.yaml`` or a YAML file): its scan options and method
    defaults, as ``{"scan": {...}, "params": {...}, "method": ...}``."""
    from ctdip.core.io import read_yaml

    p = Path(name)
    if not (p.suffix in (".yaml", ".yml") and p.is_file()):
        p = setups_dir() / f"{name}.yaml"
        if not p.is_file():
            raise UserError(f"unknown setup '{name}'; choose one of: {', '.join(setup_names())} (or a YAML file)")
    d = read_yaml(p)
    scan = d.get("scan", {}) or {}
    if not isinstance(scan, dict):
        raise UserError("'scan' must be a mapping of scan options", path=p)
    unknown = set(scan) - set(SCAN_OPTIONS)
    if unknown:
        raise UserError(f"unknown scan option(s) {', '.join(sorted(unknown))}; known: {', '.join(SCAN_OPTIONS)}",
                        path=p)
    params = d.get("params", {}) or {}
    return {"name": p.stem, "path": str(p), "scan": dict(scan), "params": dict(params),
            "method": d.get("method"), "description": d.get("description", "")}


def detect_layout(folder: Path) -> str:
    """The name of the first registered layout (``ctdip.core.data.layouts``) that detects ``folder``."""
    from ctdip.core.data.layouts import find_layout

    return find_layout(folder).name


def open_source(path: str | Path, orbit: int | None = None):
    """The lazily-read source of a scan folder (a ``ScanSource`` of ``ctdip.core.data.layouts``)."""
    from ctdip.core.data.layouts import find_layout

    folder = Path(path)
    if not folder.exists():
        raise UserError("scan folder not found", path=folder)
    if not folder.is_dir():
        raise UserError("not a folder (a scan is a folder: projections.tif + geometry.yaml, or the walnut "
                        "layout)", path=folder)
    return find_layout(folder).open(folder, {"orbit": orbit})


def parse_slice(spec: Any, nz: int) -> int:
    """Slice index from an int, ``"mid"``, or a signed offset ``"+3"``/``"-3"`` from the middle."""
    mid = nz // 2
    if spec is None or spec == "mid":
        z = mid
    elif isinstance(spec, str) and spec.strip()[:1] in "+-":
        try:
            z = mid + int(spec.strip())
        except ValueError:
            raise UserError(f"--slice must be an index, 'mid' or an offset like +3, got {spec!r}") from None
    else:
        try:
            z = int(spec)
        except (TypeError, ValueError):
            raise UserError(f"--slice must be an index, 'mid' or an offset like +3, got {spec!r}") from None
    if not 0 <= z < nz:
        raise UserError(f"--slice {spec} is outside the volume's {nz} slices (0..{nz - 1})")
    return z


def detector_row_through(geometry, z_mm: float) -> int:
    """Detector row hit by rays through the point (0, 0, z_mm) on the axis (mean over views)."""
    v = geometry.vectors
    rows = geometry.det_shape[0]
    d, u, vv = v[:, 3:6], v[:, 6:9], v[:, 9:12]
    n = np.cross(u, vv)
    p = np.array([0.0, 0.0, float(z_mm)])
    if geometry.beam == "cone":
        s = v[:, 0:3]
        direction = p - s
        t = np.sum((d - s) * n, 1) / np.sum(direction * n, 1)
        q = s + t[:, None] * direction
    else:
        r = v[:, 0:3]
        t = np.sum((d - p) * n, 1) / np.sum(r * n, 1)
        q = p + t[:, None] * r
    # solve q - d = a u + b v in the least-squares sense (u, v may not be orthogonal)
    b = []
    for k in range(len(v)):
        m = np.stack([u[k], vv[k]], 1)
        ab, *_ = np.linalg.lstsq(m, q[k] - d[k], rcond=None)
        b.append(ab[1])
    row = float(np.mean(b)) + (rows - 1) / 2
    return int(np.clip(np.round(row), 0, rows - 1))


def resample(ref: np.ndarray, old, new) -> np.ndarray:
    """Resample a (z, y, x) array from VolumeGeometry ``old`` to ``new`` (see module docstring)."""
    from scipy import ndimage

    if tuple(old.shape) == tuple(new.shape) and np.allclose(old.voxel_mm, new.voxel_mm) \
            and np.allclose(old.center_mm, new.center_mm):
        return ref
    a = np.asarray(ref, dtype=np.float64)
    f = np.asarray(new.voxel_mm) / np.asarray(old.voxel_mm)
    if old.shape[0] == 1:
        f[0] = 1.0
    sigma = np.maximum(0.0, (f - 1.0) / 2.0)
    if np.any(sigma > 0):
        a = ndimage.gaussian_filter(a, sigma, mode="nearest")
    coords = []
    for ax in range(3):
        c = (new.voxel_centers(ax) - old.min_mm[ax]) / old.voxel_mm[ax] - 0.5
        if old.shape[ax] == 1:
            c = np.zeros(new.shape[ax])
        coords.append(c)
    grid = np.meshgrid(*coords, indexing="ij")
    out = ndimage.map_coordinates(a, grid, order=1, mode="nearest")
    return out.astype(np.float32)


def scan_options(setup: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """The scan options of the acquisition preset ``setup`` (if any), overridden by the ``options``
    that are not None."""
    opts: dict[str, Any] = dict(load_setup(setup)["scan"]) if setup is not None else {}
    for k, v in options.items():
        if v is not None:
            opts[k] = v
    return check_scan_options(opts)


#: the rules of the numeric scan options (``ctdip.core.validate``)
SCAN_OPTION_RULES = {"angles": Rule(integer=True, minimum=2), "bin": POSITIVE_INT,
                     "size": Rule(integer=True, minimum=8), "orbit": Rule(integer=True, minimum=1, maximum=3)}


def check_scan_options(opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` with --angles (>= 2 views), --bin (>= 1), --size (>= 8), --orbit (1..3) checked."""
    out = dict(opts)
    for k, rule in SCAN_OPTION_RULES.items():
        if out.get(k) is not None:
            out[k] = rule(out[k], f"--{k}")
    if out.get("mode") is not None:
        out["mode"] = choice(str(out["mode"]).lower(), "--mode", ("2d", "3d"))
    return out


def mode_and_bin(opts: dict[str, Any], cols: int | None = None) -> tuple[str, int]:
    """The validated ``mode`` ('2d' default or '3d') and detector binning (default 1) of ``opts``:
    ``bin``, else ``max(1, cols // bin_to_cols)`` for a detector of ``cols`` columns."""
    mode_ = choice(str(opts.get("mode") or "2d").lower(), "--mode", ("2d", "3d"))
    if opts.get("bin") is None and opts.get("bin_to_cols") is not None and cols is not None:
        target = POSITIVE_INT(opts["bin_to_cols"], "bin_to_cols")
        return mode_, max(1, int(cols) // target)
    b = POSITIVE_INT(1 if opts.get("bin") is None else opts["bin"], "--bin")
    return mode_, b


def column_width_at_axis_mm(geometry) -> float:
    """Mean width of one detector column at the rotation axis: ``|u|`` (parallel) or
    ``|u| |s| / |d - s|`` (fan/cone: pixel over the magnification, source s, detector centre d)."""
    v = geometry.vectors
    u = np.linalg.norm(v[:, 6:9], axis=1)
    if geometry.beam != "cone":
        return float(u.mean())
    s, d = v[:, 0:3], v[:, 3:6]
    return float((u * np.linalg.norm(s, axis=1) / np.linalg.norm(d - s, axis=1)).mean())


def binning_warning(geometry, volume, b: int) -> str | None:
    """The one-line warning when binning by ``b`` left detector columns wider (at the axis) than
    ``MAX_COLUMN_VOXELS`` in-plane voxels of ``volume``; None otherwise (see module docstring)."""
    if b <= 1:
        return None
    ratio = column_width_at_axis_mm(geometry) / float(volume.voxel_mm[2])
    if ratio <= MAX_COLUMN_VOXELS:
        return None
    return (f"warning: detector binning {b}x leaves {geometry.det_shape[1]} columns, each {ratio:.1f} voxels "
            f"wide on the {volume.shape[2]} x {volume.shape[1]} grid: the reconstruction loses resolution "
            f"(pass a smaller --bin, e.g. --bin 1)")


class _Selection(NamedTuple):
    """What the options select of a scan's geometry (module docstring, steps 1-5)."""

    views: np.ndarray  # view indices to read
    rows: np.ndarray | None  # detector rows to read (None: all)
    z: int | None  # reference slice (None: the volume)
    mode: str  # "2d" or "3d"
    bin: int  # detector binning b (rows and columns in 3D, columns in 2D)
    geometry: Any  # the final geometry (selected, sliced, binned)
    volume: Any  # the grid of the selected volume or slice, before --size
    resized: Any  # the --size grid (None without --size)
    warnings: list[str]  # of the geometry checks (ctdip.core.data.sanity)
    binning: str | None  # the binning warning (binning_warning), if any


def _select(geom, vol, opts: dict[str, Any], info: dict[str, Any], path, geometry_file) -> _Selection:
    """Apply angles, mode, slice, bin and size (``opts``) to a scan's ``geom`` and ``vol``; the
    plausibility checks run on the selected geometry. Slice details are added to ``info``."""
    from ctdip.core.data.sanity import check_geometry, check_grid_memory
    from ctdip.core.geometry import VolumeGeometry

    views = np.arange(geom.n_views)
    if opts.get("angles") is not None:
        k = int(opts["angles"])
        views = geom.view_indices(k)
        geom = geom.select(views)
    mode_, b = mode_and_bin(opts, geom.det_shape[1])
    rows = geom.det_shape[0]
    rows_read = None
    if rows == 1 or geom.is_2d:
        if mode_ == "3d" and vol.shape[0] > 1:
            raise UserError("--mode 3d needs a multi-row detector; this scan has one row", path=path)
        if opts.get("slice") not in (None, "mid") and vol.shape[0] == 1:
            z = parse_slice(opts["slice"], 1)
        mode_ = "2d"
        if vol.shape[0] != 1:
            vol = VolumeGeometry((1, *vol.shape[1:]), vol.voxel_mm, (0.0, *vol.center_mm[1:]))
        z = 0
        g2 = geom if geom.is_2d else geom.fan_slice(0)
    elif mode_ == "2d":
        z = parse_slice(opts.get("slice"), vol.shape[0])
        z_mm = float(vol.voxel_centers(0)[z])
        row = detector_row_through(geom, z_mm)
        rows_read = np.array([row])
        g2 = geom.fan_slice(row)
        info.update({"slice": z, "slice_z_mm": z_mm, "detector_row": row})
        vol = VolumeGeometry((1, *vol.shape[1:]), vol.voxel_mm, (0.0, *vol.center_mm[1:]))
    else:
        z = None
        g2 = geom
    warnings = check_geometry(g2, vol, geometry_file)
    if b > 1:
        g2 = g2.bin(1, b) if mode_ == "2d" else g2.bin(b, b)
    new_vol = vol.with_size(int(opts["size"])) if opts.get("size") is not None else None
    if new_vol is not None:
        check_grid_memory(new_vol.shape, "--size")
    msg = binning_warning(g2, vol if new_vol is None else new_vol, b)
    return _Selection(views, rows_read, z, mode_, b, g2, vol, new_vol, warnings,
                      None if msg is None else msg.removeprefix("warning: "))


def _print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        sys.stderr.write(f"warning: {w}\n")
    sys.stderr.flush()


def load_geometry(path: str | Path, *, angles: int | None = None, bin: int | None = None, slice: Any = None,
                  mode: str | None = None, size: int | None = None, setup: str | None = None,
                  bin_to_cols: int | None = None, print_warnings: bool = True):
    """``(ProjectionGeometry, VolumeGeometry)`` of a bare ``geometry.yaml`` with the options of
    :func:`load_scan` applied: the geometry and grid a scan folder with this file would give
    (no projections are read; the volume defaults to the field of view on ``detector.cols`` voxels)."""
    from ctdip.core.data.ctdip_layout import parse_geometry
    from ctdip.core.geometry import VolumeGeometry

    path = Path(path)
    if not path.is_file():
        raise UserError("geometry file not found", path=path)
    opts = scan_options(setup, angles=angles, bin=bin, slice=slice, mode=mode, size=size, bin_to_cols=bin_to_cols)
    geom, vol = parse_geometry(path)
    if vol is None:
        vol = VolumeGeometry.fov(geom, geom.det_shape[1])
    sel = _select(geom, vol, opts, {}, path, path)
    if print_warnings:
        _print_warnings(sel.warnings + ([sel.binning] if sel.binning else []))
    return sel.geometry, sel.volume if sel.resized is None else sel.resized


def load_scan(path: str | Path, *, angles: int | None = None, bin: int | None = None, slice: Any = None,
              mode: str | None = None, size: int | None = None, orbit: int | None = None,
              setup: str | None = None, read_reference: bool = True, bin_to_cols: int | None = None,
              print_warnings: bool = True) -> Scan:
    """Read a scan folder and apply the options (module docstring) -> :class:`Scan` of line integrals.

    The plausibility checks of :mod:`ctdip.core.data.sanity` and the binning check
    (:func:`binning_warning`) run on the final geometry and data; their warnings are kept in
    ``info["warnings"]`` and printed as ``warning:`` lines on stderr (unless ``print_warnings`` is
    false)."""
    from ctdip.core.geometry import bin_projections

    opts = scan_options(setup, angles=angles, bin=bin, slice=slice, mode=mode, size=size, orbit=orbit,
                        bin_to_cols=bin_to_cols)
    src = open_source(path, orbit=opts.get("orbit"))
    geom, vol = src.geometry, src.volume
    info: dict[str, Any] = {"layout": src.layout, "folder": str(Path(path)), "n_views_total": geom.n_views,
                            "detector_total": list(geom.det_shape), "options": dict(opts),
                            "volume_full": {"shape": list(vol.shape), "voxel_mm": list(vol.voxel_mm),
                                            "center_mm": list(vol.center_mm)}, **src.info}
    sel = _select(geom, vol, opts, info, path, getattr(src, "geometry_path", Path(path)))
    proj = src.read(sel.views, sel.rows)
    if sel.bin > 1:
        proj = bin_projections(proj, 1, sel.bin) if sel.mode == "2d" else bin_projections(proj, sel.bin, sel.bin)
    warnings = sel.warnings + list(getattr(src, "warnings", [])) + ([sel.binning] if sel.binning else [])
    ref = None
    if read_reference:
        ref = src.read_reference(sel.z)
        if ref is not None and sel.mode == "3d":
            ref = ref.reshape(src.volume.shape)
    vol = sel.volume
    if sel.resized is not None:
        if ref is not None:
            ref = resample(ref, vol, sel.resized)
        vol = sel.resized
    info.update({"mode": sel.mode, "views": sel.views.tolist() if len(sel.views) <= 4096 else None,
                 "detector": list(sel.geometry.det_shape), "bin": sel.bin, "warnings": warnings,
                 "geometry_file": str(getattr(src, "geometry_path", path))})
    if print_warnings:
        _print_warnings(warnings)
    return Scan(projections=np.ascontiguousarray(proj, dtype=np.float32), geometry=sel.geometry, volume=vol,
                reference=None if ref is None else np.ascontiguousarray(ref, dtype=np.float32),
                source=Path(path), layout=src.layout, info=info)
