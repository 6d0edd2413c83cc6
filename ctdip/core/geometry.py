"""Acquisition and volume geometry, held as ASTRA-style vectors (mm).

INTERFACE CONTRACT (other modules code against these names):

Coordinates are ASTRA's world coordinates (x, y, z) in millimetres. Volumes are arrays (z, y, x).
Every projection geometry is a `ProjectionGeometry` with ``beam`` in {"parallel", "cone"} and
``vectors`` of shape (n_views, 12) in ASTRA's ``parallel3d_vec`` / ``cone_vec`` column order:
(ray direction or source: 3, detector centre: 3, detector column step u: 3, row step v: 3).
A 2D scan is the 3D case with ``det_shape[0] == 1`` (one detector row), rays in the z = 0 plane,
and a one-slice volume; ``kind`` then reads "parallel" or "fan" (3D: "parallel3d" or "cone").

    ProjectionGeometry.circular(kind, angles, det_cols, det_rows=1, pixel_mm=1.0, pixel_v_mm=None,
                                source_origin_mm=None, source_detector_mm=None,
                                offset_u_mm=0.0, offset_v_mm=0.0)   # angles: radians array
    ProjectionGeometry.from_geom_file(path, beam="cone", det_shape=(rows, cols))
    ProjectionGeometry.from_astra(proj_geom_dict) / .to_astra(dim=3 | 2) -> dict
    g.n_views, g.det_shape (rows, cols), g.kind, g.is_2d, g.angles (radians or None)
    g.view_indices(k) -> np.ndarray   # K equispaced of the N views
    g.subsample(k) -> ProjectionGeometry
    g.select(indices) -> ProjectionGeometry
    g.bin(b_rows, b_cols=None) -> ProjectionGeometry
    g.fan_slice(row=None) -> ProjectionGeometry    # 2D fan/parallel geometry of one detector row
    g.hash() -> str                           # stable hex digest (for caches, weight files)
    bin_projections(proj, b_rows, b_cols=None)  # the data-side twin of g.bin (block means)

    VolumeGeometry(shape=(z, y, x), voxel_mm=(dz, dy, dx), center_mm=(cz, cy, cx))
    VolumeGeometry.fov(geometry, n) -> VolumeGeometry  # default grid: field of view seen at all angles
    v.to_astra(dim=3 | 2) -> dict, v.with_size(n) (same extent, n x n in-plane), v.hash()

Conventions (the same numbers for every backend):

* ``circular`` follows ASTRA exactly: it equals ``astra.create_proj_geom('parallel'|'fanflat'|
  'parallel3d'|'cone', ...)`` followed by ``astra.functions.geom_2vec`` and
  ``geom_postalignment(offset_u_mm / pixel_mm)``, with origin-detector distance
  ``source_detector_mm - source_origin_mm``. Per view at angle a (SOD = source-origin distance,
  ODD = origin-detector distance, w/h = detector pixel width/height)::

      src = ( sin a * SOD, -cos a * SOD, 0)      (parallel: ray = (sin a, -cos a, 0))
      d   = (-sin a * ODD,  cos a * ODD, 0) + offset_u * (cos a, sin a, 0) + offset_v * (0, 0, 1)
      u   = ( cos a * w,    sin a * w,   0)      v = (0, 0, h)

* Detector pixel (row r, column c) of a view has its centre at
  ``d + (c - (cols - 1) / 2) u + (r - (rows - 1) / 2) v``.
* **Volume orientation is ASTRA's 3D one**: voxel (k, j, i) of a (z, y, x) array has its centre at
  ``x = xmin + (i + 1/2) dx``, ``y = ymin + (j + 1/2) dy``, ``z = zmin + (k + 1/2) dz``: the y
  index *increases* with y. ASTRA's 2D projectors use the opposite row order (image row 0 is at
  the top, max y; see ``CVolumeGeometry2D::pixelRowToCenterY``); the ``matrix`` backend flips rows
  internally, so a (1, y, x) volume means the same physical object for every backend and a
  user passing ``vol[0, ::-1]`` to ``astra.create_sino`` with ``to_astra(2)`` dicts gets our
  sinogram.
* Projections are arrays (angles, rows, cols) (ASTRA 3D uses (rows, angles, cols)).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctdip.errors import UserError

__all__ = ["ProjectionGeometry", "VolumeGeometry", "bin_projections", "import_astra"]


def import_astra(feature: str, hint: str = "install astra-toolbox"):
    """The ``astra`` module, imported on first use: ctdip imports and runs without astra-toolbox
    as long as no ASTRA-backed feature is used. A missing (or broken) ASTRA is a one-line
    :class:`UserError` naming ``feature`` and what to do instead (``hint``)."""
    try:
        import astra
    except (ImportError, OSError) as e:
        raise UserError(f"{feature} needs astra-toolbox, which cannot be imported here ({e}); {hint}") from None
    return astra

_KINDS = ("parallel", "fan", "parallel3d", "cone")


def _as3(v, name: str) -> tuple[float, float, float]:
    try:
        a = np.broadcast_to(np.asarray(v, dtype=float), (3,)) if np.ndim(v) <= 1 else None
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != (3,) or not np.all(np.isfinite(a)):
        raise UserError(f"{name} must be a number or 3 numbers (z, y, x), got {v!r}")
    return (float(a[0]), float(a[1]), float(a[2]))


@dataclass(eq=False)
class ProjectionGeometry:
    """Per-view ASTRA vectors (n, 12) for a parallel (ray direction) or cone (source) beam."""

    beam: str
    vectors: np.ndarray
    det_shape: tuple[int, int]
    angles: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.beam not in ("parallel", "cone"):
            raise UserError(f"beam must be 'parallel' or 'cone', got {self.beam!r}")
        vec = np.ascontiguousarray(np.asarray(self.vectors, dtype=np.float64))
        if vec.ndim != 2 or vec.shape[1] != 12 or vec.shape[0] < 1:
            raise UserError(f"geometry vectors must have shape (n_views, 12), got {vec.shape}")
        if not np.all(np.isfinite(vec)):
            raise UserError("geometry vectors contain NaN or infinite values")
        self.vectors = vec
        rows, cols = (int(s) for s in self.det_shape)
        if rows < 1 or cols < 1:
            raise UserError(f"detector shape must be positive (rows, cols), got {self.det_shape}")
        self.det_shape = (rows, cols)
        if self.angles is not None:
            self.angles = np.asarray(self.angles, dtype=np.float64).reshape(-1)
            if len(self.angles) != len(vec):
                raise UserError(f"{len(self.angles)} angles for {len(vec)} geometry vectors")

    # ------------------------------------------------------------------ construction
    @classmethod
    def circular(
        cls,
        kind: str,
        angles: Sequence[float] | np.ndarray,
        det_cols: int,
        det_rows: int = 1,
        pixel_mm: float = 1.0,
        pixel_v_mm: float | None = None,
        source_origin_mm: float | None = None,
        source_detector_mm: float | None = None,
        offset_u_mm: float = 0.0,
        offset_v_mm: float = 0.0,
    ) -> "ProjectionGeometry":
        """Circular orbit around the z axis, ASTRA conventions (see the module docstring)."""
        if kind not in _KINDS:
            raise UserError(f"unknown geometry kind {kind!r}; expected one of {', '.join(_KINDS)}")
        a = np.asarray(angles, dtype=np.float64).reshape(-1)
        if a.size == 0:
            raise UserError("a geometry needs at least one angle")
        if kind in ("parallel", "fan") and det_rows != 1:
            raise UserError(f"a 2D {kind} geometry has one detector row, got det_rows={det_rows}")
        if pixel_mm <= 0 or (pixel_v_mm is not None and pixel_v_mm <= 0):
            raise UserError("detector pixel size must be positive")
        h = float(pixel_mm if pixel_v_mm is None else pixel_v_mm)
        w = float(pixel_mm)
        s, c = np.sin(a), np.cos(a)
        z = np.zeros_like(a)
        vec = np.zeros((a.size, 12))
        if kind in ("fan", "cone"):
            if source_origin_mm is None or source_detector_mm is None:
                raise UserError(f"a {kind}-beam geometry needs source_origin_mm and source_detector_mm")
            if not 0 < source_origin_mm < source_detector_mm:
                raise UserError(
                    f"need 0 < source_origin_mm < source_detector_mm, got {source_origin_mm}, {source_detector_mm}")
            sod = float(source_origin_mm)
            odd = float(source_detector_mm) - sod
            vec[:, 0:3] = np.stack([s * sod, -c * sod, z], 1)
            vec[:, 3:6] = np.stack([-s * odd, c * odd, z], 1)
            beam = "cone"
        else:
            vec[:, 0:3] = np.stack([s, -c, z], 1)
            beam = "parallel"
        vec[:, 6:9] = np.stack([c * w, s * w, z], 1)
        vec[:, 9:12] = np.stack([z, z, z + h], 1)
        # geom_postalignment: shift the detector by offset/pixel detector pixels along u (and v)
        vec[:, 3:6] += (offset_u_mm / w) * vec[:, 6:9] + (offset_v_mm / h) * vec[:, 9:12]
        return cls(beam, vec, (int(det_rows), int(det_cols)), a)

    @classmethod
    def from_geom_file(cls, path: str | Path, beam: str = "cone",
                       det_shape: tuple[int, int] | None = None) -> "ProjectionGeometry":
        """Read an ASTRA vector file: one view per line, 12 numbers (parallel3d_vec / cone_vec), mm."""
        path = Path(path)
        if det_shape is None:
            raise UserError("the detector shape (rows, cols) is needed to read a .geom file", path=path)
        if not path.is_file():
            raise UserError("geometry vector file not found", path=path)
        try:
            vec = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise UserError(f"not a table of numbers ({e})", path=path) from None
        if vec.ndim != 2 or vec.shape[1] != 12:
            raise UserError(f"expected 12 columns (ASTRA parallel3d_vec/cone_vec rows), found shape {vec.shape}",
                            path=path)
        try:
            return cls(beam, vec, tuple(det_shape))
        except UserError as e:
            raise UserError(e.message, path=path) from None

    @classmethod
    def from_astra(cls, proj_geom: dict) -> "ProjectionGeometry":
        """From an ASTRA projection geometry dict (any of the 2D/3D basic or vector types)."""
        astra = import_astra("reading an ASTRA projection geometry")

        t = proj_geom.get("type")
        angles = None
        if t in ("parallel", "fanflat", "parallel3d", "cone"):
            angles = np.asarray(proj_geom["ProjectionAngles"], dtype=np.float64)
            proj_geom = astra.functions.geom_2vec(proj_geom)
            t = proj_geom["type"]
        if t in ("parallel_vec", "fanflat_vec"):
            v6 = np.asarray(proj_geom["Vectors"], dtype=np.float64)
            vec = np.zeros((len(v6), 12))
            vec[:, 0:2], vec[:, 3:5], vec[:, 6:8] = v6[:, 0:2], v6[:, 2:4], v6[:, 4:6]
            vec[:, 11] = np.hypot(v6[:, 4], v6[:, 5])
            return cls("parallel" if t == "parallel_vec" else "cone", vec,
                       (1, int(proj_geom["DetectorCount"])), angles)
        if t in ("parallel3d_vec", "cone_vec"):
            return cls("parallel" if t == "parallel3d_vec" else "cone", proj_geom["Vectors"],
                       (int(proj_geom["DetectorRowCount"]), int(proj_geom["DetectorColCount"])), angles)
        raise UserError(f"unsupported ASTRA projection geometry type {t!r}")

    def to_astra(self, dim: int | None = None) -> dict:
        """ASTRA vector geometry dict: dim=2 gives parallel_vec / fanflat_vec (2D only), dim=3
        parallel3d_vec / cone_vec (default: 2 for a 2D geometry, else 3)."""
        astra = import_astra("an ASTRA projection geometry dict")

        dim = (2 if self.is_2d else 3) if dim is None else dim
        if dim == 3:
            t = "parallel3d_vec" if self.beam == "parallel" else "cone_vec"
            return astra.create_proj_geom(t, self.det_shape[0], self.det_shape[1], self.vectors.copy())
        if dim == 2:
            if not self.is_2d:
                raise UserError(f"a {self.kind} geometry with {self.det_shape[0]} detector rows is not 2D; "
                                "take fan_slice(row) first")
            v = self.vectors
            v6 = np.concatenate([v[:, 0:2], v[:, 3:5], v[:, 6:8]], axis=1)
            t = "parallel_vec" if self.beam == "parallel" else "fanflat_vec"
            return astra.create_proj_geom(t, self.det_shape[1], v6)
        raise ValueError("dim must be 2 or 3")

    # ------------------------------------------------------------------ properties
    @property
    def n_views(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def is_2d(self) -> bool:
        """One detector row, every ray in the z = 0 plane, rows stepping along z."""
        v = self.vectors
        flat = np.abs(v[:, [2, 5, 8, 9, 10]]).max() <= 1e-9 * max(1.0, float(np.abs(v).max()))
        return self.det_shape[0] == 1 and bool(flat)

    @property
    def kind(self) -> str:
        if self.is_2d:
            return "parallel" if self.beam == "parallel" else "fan"
        return "parallel3d" if self.beam == "parallel" else "cone"

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """Detector pixel (height, width) of the first view, mm."""
        v = self.vectors[0]
        return float(np.linalg.norm(v[9:12])), float(np.linalg.norm(v[6:9]))

    @property
    def source_origin_mm(self) -> float | None:
        """Mean distance of the source from the z axis (cone/fan), None for parallel."""
        if self.beam != "cone":
            return None
        return float(np.mean(np.hypot(self.vectors[:, 0], self.vectors[:, 1])))

    @property
    def source_detector_mm(self) -> float | None:
        """Mean perpendicular source-to-detector-plane distance (cone/fan), None for parallel."""
        if self.beam != "cone":
            return None
        v = self.vectors
        n = np.cross(v[:, 6:9], v[:, 9:12])
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        return float(np.mean(np.abs(np.sum((v[:, 3:6] - v[:, 0:3]) * n, axis=1))))

    def view_angles(self) -> np.ndarray:
        """Angle of each view around the z axis (radians, unwrapped): ``angles`` when known, else
        recovered from the vectors (source position, or ray direction for parallel beams), which
        for circular geometries gives back the ASTRA angle."""
        if self.angles is not None:
            return self.angles.copy()
        v = self.vectors
        return np.unwrap(np.arctan2(v[:, 0], -v[:, 1]))

    # ------------------------------------------------------------------ derived geometries
    def view_indices(self, k: int) -> np.ndarray:
        """Indices of ``k`` equispaced views of the ``n_views``: floor(i * n / k), i = 0..k-1."""
        k = int(k)
        if not 1 <= k <= self.n_views:
            raise UserError(f"cannot take {k} views of a scan with {self.n_views} views")
        return np.floor(np.arange(k) * self.n_views / k + 1e-9).astype(np.int64)

    def subsample(self, k: int) -> "ProjectionGeometry":
        """The geometry of ``k`` equispaced views (see :meth:`view_indices`)."""
        return self.select(self.view_indices(k))

    def select(self, indices: Sequence[int] | np.ndarray) -> "ProjectionGeometry":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < -self.n_views or idx.max() >= self.n_views:
            raise UserError(f"view indices out of range for a scan with {self.n_views} views")
        ang = None if self.angles is None else self.angles[idx]
        return ProjectionGeometry(self.beam, self.vectors[idx], self.det_shape, ang)

    def bin(self, b_rows: int, b_cols: int | None = None) -> "ProjectionGeometry":
        """Detector binning: blocks of b_rows x b_cols pixels become one pixel.

        ``b_cols`` defaults to ``b_rows``; a one-row detector is only binned along columns.
        Trailing pixels that do not fill a block are dropped (as :func:`bin_projections` does), so
        the new detector centre moves by ``(new_n * b - n) / 2`` old pixels.
        """
        b_cols = int(b_rows if b_cols is None else b_cols)
        rows, cols = self.det_shape
        b_rows = 1 if rows == 1 else int(b_rows)
        if b_rows < 1 or b_cols < 1 or b_rows > rows or b_cols > cols:
            raise UserError(f"cannot bin a {rows}x{cols} detector by {b_rows}x{b_cols}")
        nr, nc = rows // b_rows, cols // b_cols
        v = self.vectors.copy()
        v[:, 3:6] += ((nc * b_cols - cols) / 2) * v[:, 6:9] + ((nr * b_rows - rows) / 2) * v[:, 9:12]
        v[:, 6:9] *= b_cols
        v[:, 9:12] *= b_rows
        return ProjectionGeometry(self.beam, v, (nr, nc), self.angles)

    def fan_slice(self, row: int | None = None) -> "ProjectionGeometry":
        """2D geometry (fan or parallel) of one detector row, in the z = 0 plane.

        The row's centre ``d + (row - (rows-1)/2) v``, the source (or ray direction) and ``u``
        keep their x and y components; z components are dropped. This is exact for the row at the
        source height (the default ``row``: the row nearest to where the source projects, i.e. the
        central slice); other rows see a slightly tilted fan, which this 2D model ignores.
        """
        rows = self.det_shape[0]
        v = self.vectors
        if row is None:
            if self.beam == "cone":
                # detector row coordinate of the source's orthogonal projection (mean over views)
                vv = v[:, 9:12]
                r = np.sum((v[:, 0:3] - v[:, 3:6]) * vv, axis=1) / np.sum(vv * vv, axis=1)
                row = int(np.clip(np.round(np.mean(r) + (rows - 1) / 2), 0, rows - 1))
            else:
                row = rows // 2
        if not 0 <= int(row) < rows:
            raise UserError(f"detector row {row} is outside the detector's {rows} rows")
        out = np.zeros_like(v)
        d = v[:, 3:6] + (int(row) - (rows - 1) / 2) * v[:, 9:12]
        out[:, 0:2] = v[:, 0:2]
        out[:, 3:5] = d[:, 0:2]
        out[:, 6:8] = v[:, 6:8]
        out[:, 11] = np.linalg.norm(v[:, 9:12], axis=1)
        return ProjectionGeometry(self.beam, out, (1, self.det_shape[1]), self.angles)

    # ------------------------------------------------------------------ identity
    def hash(self) -> str:
        """Stable hex digest of beam, detector shape and vectors (rounded to 1e-9 mm)."""
        h = hashlib.sha256()
        h.update(f"{self.beam}|{self.det_shape[0]}x{self.det_shape[1]}|".encode())
        h.update(np.round(self.vectors, 9).astype("<f8").tobytes())
        return h.hexdigest()[:20]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProjectionGeometry) and self.hash() == other.hash()

    def __hash__(self) -> int:
        return hash(self.hash())

    def __repr__(self) -> str:
        ph, pw = self.pixel_mm
        parts = [f"kind={self.kind!r}", f"views={self.n_views}",
                 f"det={self.det_shape[0]}x{self.det_shape[1]}", f"pixel={pw:.4g}x{ph:.4g}mm"]
        if self.beam == "cone":
            parts += [f"SOD={self.source_origin_mm:.4g}mm", f"SDD={self.source_detector_mm:.4g}mm"]
        a = self.view_angles()
        parts.append(f"angles={np.degrees(a[0]):.4g}..{np.degrees(a[-1]):.4g}deg")
        return f"ProjectionGeometry({', '.join(parts)})"


@dataclass(eq=False)
class VolumeGeometry:
    """A box of voxels: ``shape`` (z, y, x), ``voxel_mm`` (dz, dy, dx), centre (cz, cy, cx) in mm."""

    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float] | float = 1.0
    center_mm: tuple[float, float, float] | float = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        shp = tuple(int(s) for s in self.shape)
        if len(shp) != 3 or min(shp) < 1:
            raise UserError(f"volume shape must be 3 positive integers (z, y, x), got {self.shape!r}")
        self.shape = shp  # type: ignore[assignment]
        self.voxel_mm = _as3(self.voxel_mm, "voxel_mm")
        if min(self.voxel_mm) <= 0:
            raise UserError(f"voxel size must be positive, got {self.voxel_mm}")
        self.center_mm = _as3(self.center_mm, "center_mm")

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        return tuple(n * d for n, d in zip(self.shape, self.voxel_mm))  # type: ignore[return-value]

    @property
    def min_mm(self) -> tuple[float, float, float]:
        return tuple(c - e / 2 for c, e in zip(self.center_mm, self.extent_mm))  # type: ignore[return-value]

    @property
    def max_mm(self) -> tuple[float, float, float]:
        return tuple(c + e / 2 for c, e in zip(self.center_mm, self.extent_mm))  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        return self.shape[0] == 1

    @classmethod
    def fov(cls, geometry: ProjectionGeometry, n: int, nz: int | None = None) -> "VolumeGeometry":
        """An n x n in-plane grid (square voxels) circumscribing the circle around the z axis that
        every view sees, i.e. the smallest distance from the axis to an outer detector-edge ray.

        2D geometries give one slice (dz = dx). 3D: ``nz`` slices (default: enough cubic voxels
        to cover the detector height demagnified to the axis), centred where the central ray
        crosses the axis.
        """
        n = int(n)
        if n < 1:
            raise UserError(f"grid size must be positive, got {n}")
        v = geometry.vectors
        rows, cols = geometry.det_shape
        half = cols / 2
        radii = []
        for sgn in (-1.0, 1.0):
            edge = v[:, 3:5] + sgn * half * v[:, 6:8]  # detector edge (x, y)
            if geometry.beam == "cone":
                p0 = v[:, 0:2]
                dvec = edge - p0
            else:
                p0 = edge
                dvec = v[:, 0:2]
            cross = np.abs(p0[:, 0] * dvec[:, 1] - p0[:, 1] * dvec[:, 0])  # |p0 x d|, origin to line
            radii.append(cross / np.maximum(np.linalg.norm(dvec, axis=1), 1e-30))
        r = float(np.min(np.stack(radii)))
        if r <= 0:
            raise UserError("the rotation axis is not inside the field of view of every view")
        dx = 2 * r / n
        if geometry.is_2d:
            return cls((1, n, n), (dx, dx, dx), (0.0, 0.0, 0.0))
        height = rows * np.linalg.norm(v[:, 9:12], axis=1)
        if geometry.beam == "cone":
            sod = np.hypot(v[:, 0], v[:, 1])
            n_ = np.cross(v[:, 6:9], v[:, 9:12])
            n_ /= np.linalg.norm(n_, axis=1, keepdims=True)
            sdd = np.abs(np.sum((v[:, 3:6] - v[:, 0:3]) * n_, axis=1))
            mag = sod / sdd
            cz = float(np.mean(v[:, 2] + (v[:, 5] - v[:, 2]) * mag))
            height = height * mag
        else:
            cz = float(np.mean(v[:, 5]))
        if nz is None:
            nz = max(1, int(round(float(np.min(height)) / dx)))
        return cls((int(nz), n, n), (dx, dx, dx), (cz, 0.0, 0.0))

    def with_size(self, n: int) -> "VolumeGeometry":
        """The same box on an n x n in-plane grid (a one-slice volume stays one slice; 3D volumes
        scale the slice count by the same factor)."""
        n = int(n)
        if n < 1:
            raise UserError(f"grid size must be positive, got {n}")
        nz, ny, nx = self.shape
        ez, ey, ex = self.extent_mm
        if nz == 1:
            dz = self.voxel_mm[0] * (ex / n) / self.voxel_mm[2]
            return VolumeGeometry((1, n, n), (dz, ey / n, ex / n), self.center_mm)
        nz2 = max(1, int(round(nz * n / nx)))
        return VolumeGeometry((nz2, n, n), (ez / nz2, ey / n, ex / n), self.center_mm)

    def to_astra(self, dim: int | None = None) -> dict:
        """ASTRA volume geometry dict (2D for dim=2, needs one slice; default: 2 if one slice)."""
        astra = import_astra("an ASTRA volume geometry dict")

        dim = (2 if self.is_2d else 3) if dim is None else dim
        (z0, y0, x0), (z1, y1, x1) = self.min_mm, self.max_mm
        nz, ny, nx = self.shape
        if dim == 2:
            if nz != 1:
                raise UserError(f"a volume with {nz} slices is not 2D")
            return astra.create_vol_geom(ny, nx, x0, x1, y0, y1)
        if dim == 3:
            return astra.create_vol_geom(ny, nx, nz, x0, x1, y0, y1, z0, z1)
        raise ValueError("dim must be 2 or 3")

    def voxel_centers(self, axis: int) -> np.ndarray:
        """Coordinates (mm) of voxel centres along array axis 0 (z), 1 (y) or 2 (x)."""
        return self.min_mm[axis] + (np.arange(self.shape[axis]) + 0.5) * self.voxel_mm[axis]

    def hash(self) -> str:
        h = hashlib.sha256(repr((self.shape, tuple(round(x, 9) for x in self.voxel_mm),
                                 tuple(round(x, 9) for x in self.center_mm))).encode())
        return h.hexdigest()[:20]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VolumeGeometry) and self.hash() == other.hash()

    def __hash__(self) -> int:
        return hash(self.hash())

    def __repr__(self) -> str:
        fmt = lambda t: "x".join(f"{x:.4g}" for x in t)  # noqa: E731
        return (f"VolumeGeometry(shape={fmt(self.shape)}, voxel={fmt(self.voxel_mm)}mm, "
                f"center={fmt(self.center_mm)}mm)")


def bin_projections(proj, b_rows: int, b_cols: int | None = None):
    """Block-mean of (..., angles, rows, cols) projections, matching :meth:`ProjectionGeometry.bin`
    (line integrals are averaged, trailing pixels that do not fill a block are dropped).
    Works on numpy arrays and torch tensors."""
    b_cols = int(b_rows if b_cols is None else b_cols)
    rows, cols = proj.shape[-2], proj.shape[-1]
    b_rows = 1 if rows == 1 else int(b_rows)
    nr, nc = rows // b_rows, cols // b_cols
    p = proj[..., : nr * b_rows, : nc * b_cols]
    p = p.reshape(*p.shape[:-2], nr, b_rows, nc, b_cols)
    return p.mean(axis=(-3, -1)) if isinstance(p, np.ndarray) else p.mean(dim=(-3, -1))
