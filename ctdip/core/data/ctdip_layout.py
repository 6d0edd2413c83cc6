"""The ctdip scan-folder layout (what ``ctdip simulate`` writes; README "Your own scan" documents
every field for users)::

    scan/
      projections.tif   float32 (angles, rows, cols): line integrals, or raw counts when flats exist
      flats.tif         optional (n, rows, cols) open-beam images; darks.tif optional likewise
      geometry.yaml     the acquisition (below)
      reference.tif     optional ground truth (z, y, x) on the volume grid

``geometry.yaml``::

    type: fan                  # parallel | fan | cone   (parallel3d also accepted)
    angles: {count: 120, start_deg: 0, stop_deg: 360}   # or a list of angles in degrees
    source_origin_mm: 110.0    # fan/cone only
    source_detector_mm: 300.0  # fan/cone only
    detector: {cols: 328, rows: 1, pixel_mm: 0.35, offset_u_mm: 0.0, offset_v_mm: 0.0}
    volume: {shape: [1, 328, 328], voxel_mm: 0.126}      # optional; (z, y, x); center_mm optional
    # or instead of type/angles/distances:  vectors: scan_geom.geom  (ASTRA rows, mm) with
    # beam: cone | parallel  and detector: {cols, rows}

Angles from ``{count, start_deg, stop_deg}`` are ``start + (stop - start) * i / count`` for
i = 0..count-1 (the stop angle is excluded, as a full 360-degree scan repeats its first view).
Everything else follows ASTRA (``ProjectionGeometry.circular``). Without ``volume:`` the grid is
the field of view seen at all angles on ``detector.cols`` voxels (``VolumeGeometry.fov``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctdip.core.data import sanity
from ctdip.core.data.layouts import register_layout
from ctdip.core.data.preprocess import flat_dark_log, mean_frame
from ctdip.core.io import read_tiff, read_yaml, tiff_dtype, tiff_info, write_tiff_stack, write_yaml
from ctdip.errors import UserError

GEOMETRY_FILE = "geometry.yaml"
_TYPES = ("parallel", "fan", "cone", "parallel3d")


def _num(d: dict, key: str, path: Path, *, required: bool = True, default: Any = None,
         positive: bool = False, integer: bool = False, where: str = "") -> Any:
    if key not in d or d[key] is None:
        if required:
            raise UserError(f"missing field '{where}{key}'", path=path)
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"field '{where}{key}' must be a number, got {v!r}", path=path)
    if integer and (not float(v).is_integer()):
        raise UserError(f"field '{where}{key}' must be an integer, got {v!r}", path=path)
    if not math.isfinite(float(v)) or (positive and v <= 0):
        raise UserError(f"field '{where}{key}' must be a positive number, got {v!r}", path=path)
    return int(v) if integer else float(v)


def parse_angles(spec: Any, path: Path) -> np.ndarray:
    """Angles in radians from ``{count, start_deg, stop_deg}`` or a list of degrees."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"count", "start_deg", "stop_deg"}
        if unknown:
            raise UserError(f"unknown field(s) in 'angles': {', '.join(sorted(unknown))}", path=path)
        n = _num(spec, "count", path, positive=True, integer=True, where="angles.")
        a0 = _num(spec, "start_deg", path, required=False, default=0.0, where="angles.")
        a1 = _num(spec, "stop_deg", path, required=False, default=a0 + 360.0, where="angles.")
        return np.radians(a0 + (a1 - a0) * np.arange(n) / n)
    if isinstance(spec, list) and spec:
        try:
            a = np.asarray(spec, dtype=np.float64)
        except (TypeError, ValueError):
            raise UserError("'angles' must be a list of numbers (degrees)", path=path) from None
        if a.ndim != 1 or not np.all(np.isfinite(a)):
            raise UserError("'angles' must be a flat list of finite numbers (degrees)", path=path)
        return np.radians(a)
    raise UserError("'angles' must be {count, start_deg, stop_deg} or a non-empty list of degrees", path=path)


def parse_geometry(path: str | Path):
    """(ProjectionGeometry, VolumeGeometry | None) from a geometry.yaml (see module docstring)."""
    from ctdip.core.geometry import ProjectionGeometry

    path = Path(path)
    g = read_yaml(path)
    known = {"type", "beam", "angles", "source_origin_mm", "source_detector_mm", "detector", "volume", "vectors"}
    unknown = set(g) - known
    if unknown:
        raise UserError(f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}",
                        path=path)
    det = g.get("detector")
    if not isinstance(det, dict):
        raise UserError("missing or invalid 'detector' mapping (cols, rows, pixel_mm, ...)", path=path)
    dunknown = set(det) - {"cols", "rows", "pixel_mm", "pixel_v_mm", "offset_u_mm", "offset_v_mm"}
    if dunknown:
        raise UserError(f"unknown field(s) in 'detector': {', '.join(sorted(dunknown))}", path=path)
    cols = _num(det, "cols", path, positive=True, integer=True, where="detector.")
    rows = _num(det, "rows", path, required=False, default=1, positive=True, integer=True, where="detector.")
    try:
        if "vectors" in g:
            beam = g.get("beam") or {"fan": "cone", "cone": "cone", "parallel": "parallel",
                                     "parallel3d": "parallel"}.get(str(g.get("type", "cone")))
            if beam not in ("cone", "parallel"):
                raise UserError(f"'beam' must be cone or parallel, got {g.get('beam')!r}", path=path)
            vec_path = path.parent / str(g["vectors"])
            geom = ProjectionGeometry.from_geom_file(vec_path, beam=beam, det_shape=(rows, cols))
        else:
            kind = g.get("type")
            if kind not in _TYPES:
                raise UserError(f"'type' must be one of {', '.join(_TYPES)}, got {kind!r}", path=path)
            if "angles" not in g:
                raise UserError("missing field 'angles'", path=path)
            angles = parse_angles(g["angles"], path)
            if kind in ("parallel", "fan") and rows != 1:
                kind = "cone" if kind == "fan" else "parallel3d"
            sod = sdd = None
            if kind in ("fan", "cone"):
                sod = _num(g, "source_origin_mm", path, positive=True)
                sdd = _num(g, "source_detector_mm", path, positive=True)
            pix = _num(det, "pixel_mm", path, required=False, default=1.0, positive=True, where="detector.")
            pixv = _num(det, "pixel_v_mm", path, required=False, default=None, positive=True, where="detector.")
            geom = ProjectionGeometry.circular(
                kind, angles, cols, rows, pixel_mm=pix, pixel_v_mm=pixv, source_origin_mm=sod,
                source_detector_mm=sdd,
                offset_u_mm=_num(det, "offset_u_mm", path, required=False, default=0.0, where="detector."),
                offset_v_mm=_num(det, "offset_v_mm", path, required=False, default=0.0, where="detector."))
        vol = None
        if g.get("volume") is not None:
            v = g["volume"]
            if not isinstance(v, dict) or "shape" not in v:
                raise UserError("'volume' must be a mapping with 'shape' (z, y, x) and 'voxel_mm'", path=path)
            vunknown = set(v) - {"shape", "voxel_mm", "center_mm"}
            if vunknown:
                raise UserError(f"unknown field(s) in 'volume': {', '.join(sorted(vunknown))}", path=path)
            vol = volume_from_mapping(v, path, default_voxel_mm=1.0, where="volume.")
    except UserError as e:
        if e.path is None:
            raise UserError(e.message, path=path) from None
        raise
    return geom, vol


def _triple(d: dict, key: str, path: Path, default: Any, where: str, positive: bool) -> tuple[float, float, float]:
    """A number or 3 numbers (z, y, x) of field ``key``: finite (and positive if asked)."""
    v = d.get(key, default)
    vals = v if isinstance(v, (list, tuple)) else [v]
    ok = len(vals) in (1, 3) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                     and math.isfinite(float(x)) and (not positive or x > 0) for x in vals)
    if not ok:
        kind = "positive numbers" if positive else "finite numbers"
        raise UserError(f"field '{where}{key}' must be a number or 3 {kind} (z, y, x) in mm, got {v!r}", path=path)
    vals = [float(x) for x in vals]
    return tuple(vals * 3 if len(vals) == 1 else vals)  # type: ignore[return-value]


def volume_from_mapping(v: dict, path: Path, default_voxel_mm: float, where: str = ""):
    """A VolumeGeometry from ``{shape, voxel_mm, center_mm}`` (geometry.yaml's ``volume:`` or a
    walnut folder's volume.yaml); every field checked, errors name the file and the field."""
    from ctdip.core.geometry import VolumeGeometry

    shape = v.get("shape")
    if not (isinstance(shape, list) and len(shape) in (2, 3)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise UserError(f"field '{where}shape' must be 2 or 3 positive integers (z, y, x), got {shape!r}", path=path)
    if len(shape) == 2:
        shape = [1, *shape]
    vox = _triple(v, "voxel_mm", path, default_voxel_mm, where, positive=True)
    ctr = _triple(v, "center_mm", path, 0.0, where, positive=False)
    return VolumeGeometry(tuple(shape), vox, ctr)


def geometry_dict(geom, volume=None, *, kind: str | None = None, angles_deg: dict | list | None = None,
                  source_origin_mm: float | None = None, source_detector_mm: float | None = None,
                  pixel_mm: float | None = None, offset_u_mm: float = 0.0, offset_v_mm: float = 0.0) -> dict:
    """The geometry.yaml mapping of a circular scan (the inverse of :func:`parse_geometry`)."""
    d: dict[str, Any] = {"type": kind or geom.kind.replace("parallel3d", "parallel")}
    d["angles"] = angles_deg
    if source_origin_mm is not None:
        d["source_origin_mm"] = float(source_origin_mm)
        d["source_detector_mm"] = float(source_detector_mm)
    det = {"cols": int(geom.det_shape[1]), "rows": int(geom.det_shape[0]),
           "pixel_mm": float(pixel_mm if pixel_mm is not None else geom.pixel_mm[1]),
           "offset_u_mm": float(offset_u_mm), "offset_v_mm": float(offset_v_mm)}
    d["detector"] = det
    if volume is not None:
        d["volume"] = {"shape": [int(s) for s in volume.shape], "voxel_mm": [float(v) for v in volume.voxel_mm],
                       "center_mm": [float(c) for c in volume.center_mm]}
    return d


def is_ctdip_folder(folder: Path) -> bool:
    return (folder / GEOMETRY_FILE).is_file() or (folder / "projections.tif").is_file()


class CtdipSource:
    """A ctdip-layout folder opened lazily: geometry now, projections when asked (selected pages)."""

    layout = "ctdip"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        gpath = self.folder / GEOMETRY_FILE
        ppath = self.folder / "projections.tif"
        if not gpath.is_file():
            raise UserError(f"missing {GEOMETRY_FILE} (a ctdip scan folder needs projections.tif and "
                            f"{GEOMETRY_FILE})", path=self.folder)
        if not ppath.is_file():
            raise UserError("missing projections.tif", path=self.folder)
        self.geometry, vol = parse_geometry(gpath)
        self.geometry_path = gpath
        self.proj_path = ppath
        shape, n_pages = tiff_info(ppath)
        rows, cols = self.geometry.det_shape
        n = self.geometry.n_views
        if len(shape) == 2 and rows == 1:  # a sinogram stored as one (angles, cols) page
            self._sinogram_page = True
            n_found, found_rc = shape[0], (1, shape[1])
        elif len(shape) == 3:
            self._sinogram_page = False
            n_found, found_rc = shape[0], shape[1:]
        elif len(shape) == 2 and n == 1:
            self._sinogram_page = False
            n_found, found_rc = 1, shape
        else:
            raise UserError(f"expected a stack (angles, rows, cols), found shape {shape}", path=ppath)
        if n_found != n:
            raise UserError(f"projection count {n_found} does not match {n} angles in {GEOMETRY_FILE}", path=ppath)
        if tuple(found_rc) != (rows, cols):
            raise UserError(f"projections are {found_rc[0]}x{found_rc[1]} (rows x cols) but {GEOMETRY_FILE} "
                            f"says {rows}x{cols}", path=ppath)
        if not self._sinogram_page and n_pages != n and n > 1:
            self._sinogram_page = True  # one multi-dimensional page: read whole
        self.flat = self.dark = None
        self.flat_path = self.folder / "flats.tif"
        dpath = self.folder / "darks.tif"
        sanity.check_flats_darks(self.folder)
        self.dtype = tiff_dtype(ppath)
        sanity.check_dtype(self.dtype, ppath, self.flat_path.is_file())
        self.warnings: list[str] = []
        if self.flat_path.is_file():
            self.dark = mean_frame(read_tiff(dpath, dtype=np.float64), "darks", dpath) if dpath.is_file() else None
            self.flat = mean_frame(read_tiff(self.flat_path, dtype=np.float64), "flats", self.flat_path)
            if self.flat.shape != (rows, cols):
                raise UserError(f"flats are {self.flat.shape} but projections are {(rows, cols)}", path=self.flat_path)
            if self.dark is not None and self.dark.shape != (rows, cols):
                raise UserError(f"darks are {self.dark.shape} but projections are {(rows, cols)}", path=dpath)
            from ctdip.core.data.preprocess import check_flat

            check_flat(self.flat, self.dark, self.flat_path)
        self.ref_path = self.folder / "reference.tif"
        if vol is None:
            from ctdip.core.geometry import VolumeGeometry

            try:
                vol = VolumeGeometry.fov(self.geometry, cols)
            except UserError as e:
                raise UserError(f"{e.message} (no 'volume' given, so the grid is the field of view; "
                                "check the distances and detector offsets)", path=gpath) from None
        self.volume = vol
        if self.ref_path.is_file():
            rshape, _ = tiff_info(self.ref_path)
            rshape3 = (1, *rshape) if len(rshape) == 2 else tuple(rshape)
            if rshape3 != tuple(vol.shape):
                raise UserError(f"reference shape {rshape3} does not match the volume {tuple(vol.shape)} of "
                                f"{GEOMETRY_FILE}", path=self.ref_path)
        self.info = {"raw_counts": self.flat is not None}

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    def read(self, views: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Line integrals (k, r, cols) float32 of the given view indices (and detector rows)."""
        views = np.asarray(views, dtype=np.int64)
        if self._sinogram_page:
            p = read_tiff(self.proj_path, dtype=np.float64 if self.flat is not None else np.float32)
            p = p.reshape(self.geometry.n_views, *self.geometry.det_shape)[views]
        else:
            p = read_tiff(self.proj_path, pages=views, dtype=np.float64 if self.flat is not None else np.float32)
            p = p.reshape(len(views), *self.geometry.det_shape)
        flat, dark = self.flat, self.dark
        if rows is not None:
            p = p[:, rows]
            flat = None if flat is None else flat[rows]
            dark = None if dark is None else dark[rows]
        if flat is not None:
            sanity.check_not_empty(p, self.proj_path)
            return flat_dark_log(p, flat, dark, self.flat_path, self.proj_path)
        if not np.all(np.isfinite(p)):
            raise UserError("projections contain NaN or infinite values", path=self.proj_path)
        self.warnings += sanity.check_line_integrals(p, self.proj_path)
        return np.ascontiguousarray(p, dtype=np.float32)

    def read_reference(self, z: int | None = None) -> np.ndarray | None:
        """The reference volume (z, y, x), or its slice z as (1, y, x); None without reference.tif."""
        if not self.ref_path.is_file():
            return None
        if z is None:
            r = read_tiff(self.ref_path).reshape(self.volume.shape)
        else:
            _, n_pages = tiff_info(self.ref_path)
            if n_pages == self.volume.shape[0]:
                r = read_tiff(self.ref_path, pages=int(z))[None]
            else:
                r = read_tiff(self.ref_path).reshape(self.volume.shape)[int(z)][None]
        return sanity.check_reference(r, self.ref_path)


def write_ctdip(folder: str | Path, projections: np.ndarray, geometry_yaml: dict,
                reference: np.ndarray | None = None, flats: np.ndarray | None = None,
                darks: np.ndarray | None = None, voxel_mm=None, extra_files: dict | None = None) -> list[Path]:
    """Write a ctdip-layout folder (each file atomically); returns the paths written.

    ``projections`` (angles, rows, cols) are line integrals, or raw counts when ``flats`` is given.
    """
    from ctdip.core.io import write_tiff

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    p = folder / "projections.tif"
    write_tiff_stack(p, projections, dtype=np.float32)
    written.append(p)
    if flats is not None:
        write_tiff_stack(folder / "flats.tif", flats)
        written.append(folder / "flats.tif")
    if darks is not None:
        write_tiff_stack(folder / "darks.tif", darks)
        written.append(folder / "darks.tif")
    write_yaml(folder / GEOMETRY_FILE, geometry_yaml)
    written.append(folder / GEOMETRY_FILE)
    if reference is not None:
        write_tiff(folder / "reference.tif", reference, voxel_mm)
        written.append(folder / "reference.tif")
    return written


class CtdipLayout:
    """The ctdip layout in the layout registry (detected first)."""

    name = "ctdip"
    description = f"{GEOMETRY_FILE} + projections.tif"

    def detect(self, folder: Path) -> bool:
        return is_ctdip_folder(folder)

    def open(self, folder: Path, options: Mapping[str, Any]) -> CtdipSource:
        return CtdipSource(folder)


register_layout(CtdipLayout())
