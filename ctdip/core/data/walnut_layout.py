"""The public walnut µCT layout (Der Sarkissian et al. 2019, "A cone-beam X-ray CT data collection
designed for machine learning", Sci. Data 6:215), read exactly as the dataset's own reference
script ``GroundTruthReconstruction.py`` (github.com/cicwi/WalnutReconstructionCodes) does::

    WalnutN/
      Projections/tubeV{1,2,3}/           orbit 1 (high), 2 (middle), 3 (low source position)
        scan_000000.tif ... scan_001200.tif   raw counts, 1201 files; file 1200 repeats file 0's angle
        di000000.tif                          dark
        io000000.tif, io000001.tif            flats before/after the scan (averaged)
        scan_geom_corrected.geom              1201 rows of ASTRA cone_vec vectors (mm)
      Reconstructions/full_AGD_50_NNNNNN.tiff reference slices (z index NNNNNN), 501^3 voxels of 0.1 mm

What the reader does, step by step as in that script:

1. ``vecs = loadtxt(geom)[0:1200]`` (the 1201st row repeats the first angle);
2. view ``j`` of ``vecs`` is the file ``scan_{1200 - j:06}.tif`` (the projections are read in
   reverse order, "due to the portrait mode acquisition": ``projs_idx = range(1200, 0, -1)``);
   an ``--angles K`` subset reads only the K files it needs;
3. every image (dark, flats, projections) goes through ``trafo(img) = transpose(flipud(img))``,
   which turns the stored (768, 972) image into the detector's (rows, cols) = (972, 768);
4. ``(proj - dark) / (mean(flats) - dark)``, then ``-log``;
5. arrays are kept as (angles, rows, cols); the script transposes to ASTRA's (rows, angles, cols)
   only to hand them to ASTRA, which our operators do internally.

The reference volume is the stack of ``Reconstructions/full_AGD_50_*.tiff`` slices in index
order, which is exactly the ASTRA volume array (z, y, x) the script saved slice by slice
(``vol_rec[i, ...]``), on the grid ``501^3`` voxels of 0.1 mm centred at the origin. A folder
written by :func:`write_walnut` (``ctdip simulate --layout walnut``) additionally holds
``volume.yaml`` (shape, voxel_mm, center_mm) for its own grid, and ``reference.tif``.

(The dataset's ``FDKReconstruction.py`` has had both ``range(1200, 0, -1)`` and
``range(1199, -1, -1)`` for the file order; we follow ``GroundTruthReconstruction.py``, which made
the reference reconstructions.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctdip.core.data.layouts import register_layout
from ctdip.core.data.preprocess import check_flat, flat_dark_log, mean_frame
from ctdip.core.data.sanity import check_dtype, check_reference
from ctdip.core.io import read_tiff, read_yaml, tiff_dtype, tiff_info, write_tiff_image, write_yaml
from ctdip.errors import UserError

GEOM_NAME = "scan_geom_corrected.geom"
DARK_NAME = "di000000.tif"
FLAT_NAMES = ("io000000.tif", "io000001.tif")
REF_PATTERN = "full_AGD_50_{:06}.tiff"
WALNUT_VOXEL_MM = 0.1
WALNUT_GRID = 501


def trafo(image: np.ndarray) -> np.ndarray:
    """Stored image -> detector (rows, cols): ``transpose(flipud(image))``."""
    return np.transpose(np.flipud(image))


def inverse_trafo(image: np.ndarray) -> np.ndarray:
    """Detector (rows, cols) -> stored image: ``flipud(transpose(image))``."""
    return np.flipud(np.transpose(image))


def _read_image(path: Path) -> np.ndarray:
    """One stored walnut image as float64 (rows, cols) of the detector (after :func:`trafo`)."""
    img = read_tiff(path, dtype=np.float64)
    img = img.reshape(img.shape[-2:]) if img.ndim > 2 and img.shape[0] == 1 else img
    if img.ndim != 2:
        raise UserError(f"expected one 2D image, found shape {img.shape}", path=path)
    return trafo(img)


def find_orbit_folder(folder: Path, orbit: int) -> Path | None:
    """The tubeV{orbit} folder of a walnut folder (or the folder itself if it holds the scan files)."""
    for cand in (folder / "Projections" / f"tubeV{orbit}", folder / f"tubeV{orbit}", folder):
        if (cand / GEOM_NAME).is_file() or any(cand.glob("scan_0*.tif")):
            return cand
    return None


def is_walnut_folder(folder: Path) -> bool:
    return (folder / "Projections").is_dir() or any(folder.glob("tubeV*")) or (folder / GEOM_NAME).is_file()


class WalnutSource:
    """A walnut-layout folder opened lazily (geometry and flats now, projection files on demand)."""

    layout = "walnut"

    def __init__(self, folder: str | Path, orbit: int = 2):
        from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

        self.folder = Path(folder)
        if orbit not in (1, 2, 3):
            raise UserError(f"--orbit must be 1, 2 or 3, got {orbit}")
        od = find_orbit_folder(self.folder, orbit)
        if od is None:
            found = sorted(p.name for p in (self.folder / "Projections").glob("tubeV*")) \
                if (self.folder / "Projections").is_dir() else []
            raise UserError(f"no walnut projections for orbit {orbit} (expected Projections/tubeV{orbit}/"
                            f"scan_NNNNNN.tif{'; found ' + ', '.join(found) if found else ''})", path=self.folder)
        self.orbit_dir = od
        self.orbit = orbit
        files = {int(m.group(1)): p for p in od.glob("scan_*.tif") if (m := re.fullmatch(r"scan_(\d+)\.tif", p.name))}
        if not files:
            raise UserError("no scan_NNNNNN.tif projection files", path=od)
        n_files = max(files) + 1
        missing = sorted(set(range(n_files)) - set(files))
        if missing:
            raise UserError(f"projection file(s) missing: scan_{missing[0]:06}.tif"
                            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}", path=od)
        self.files = files
        self.n_views = n_files - 1  # the last file repeats the first angle
        if self.n_views < 1:
            raise UserError("need at least two scan files (the last repeats the first angle)", path=od)
        gpath = od / GEOM_NAME
        if not gpath.is_file():
            raise UserError(f"missing {GEOM_NAME}", path=od)
        # the 1201 projection files set the image shape; a dark or flat of another shape is the odd one
        first_shape = tuple(tiff_info(files[0])[0][-2:])
        check_dtype(tiff_dtype(files[0]), files[0], has_flats=True)
        dpath = od / DARK_NAME
        flat_paths = [od / fn for fn in FLAT_NAMES if (od / fn).is_file()]
        if not flat_paths:
            raise UserError(f"missing flat fields {FLAT_NAMES[0]}/{FLAT_NAMES[1]}", path=od)
        calib = {fp: tuple(tiff_info(fp)[0][-2:]) for fp in [dpath, *flat_paths]}
        odd = [fp for fp, sh in calib.items() if sh != first_shape]
        if odd and len(set(calib.values())) == 1:  # dark and flats agree: the projections are the odd ones
            sh = calib[dpath]
            raise UserError(f"projection images are {first_shape[0]}x{first_shape[1]} but the dark and flat "
                            f"fields ({', '.join(p.name for p in calib)}) are {sh[0]}x{sh[1]}", path=files[0])
        if odd:
            sh = calib[odd[0]]
            raise UserError(f"image is {sh[0]}x{sh[1]} but the projections (scan_000000.tif ...) are "
                            f"{first_shape[0]}x{first_shape[1]}", path=odd[0])
        self.flat_path = flat_paths[0]
        self.dark = mean_frame(_read_image(dpath), "dark", dpath)
        self.flat = mean_frame(np.stack([_read_image(fp) for fp in flat_paths]), "flats", self.flat_path)
        check_flat(self.flat, self.dark, self.flat_path)
        rows, cols = self.flat.shape
        try:
            vec = np.loadtxt(gpath, ndmin=2) if gpath.stat().st_size else np.zeros((0, 12))
        except ValueError as e:
            raise UserError(f"not a table of numbers (12 per row): {str(e).splitlines()[0]}", path=gpath) from None
        if vec.shape[0] != n_files:
            raise UserError(f"{vec.shape[0]} geometry vectors for {n_files} scan files (expected one per file, "
                            "the last repeating the first)", path=gpath)
        self.geometry = ProjectionGeometry.from_geom_file(gpath, beam="cone", det_shape=(rows, cols)).select(
            np.arange(self.n_views))
        self.geometry_path = gpath
        self.warnings: list[str] = []
        vpath = self.folder / "volume.yaml"
        if vpath.is_file():
            from ctdip.core.data.ctdip_layout import volume_from_mapping

            self.volume = volume_from_mapping(read_yaml(vpath), vpath, default_voxel_mm=WALNUT_VOXEL_MM)
        else:
            self.volume = VolumeGeometry((WALNUT_GRID,) * 3, WALNUT_VOXEL_MM)
        self.ref_dir = self.folder / "Reconstructions"
        self.ref_files = sorted(self.ref_dir.glob("full_AGD_50_*.tiff")) if self.ref_dir.is_dir() else []
        if self.ref_files and len(self.ref_files) != self.volume.shape[0]:
            raise UserError(f"{len(self.ref_files)} reference slices for a volume of {self.volume.shape[0]} "
                            "slices", path=self.ref_dir)
        self.info = {"orbit": orbit, "raw_counts": True}

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    def file_index(self, view: int) -> int:
        """File number of view ``view`` (reverse read order of GroundTruthReconstruction.py)."""
        return self.n_views - int(view)

    def read(self, views: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        out = []
        flat = self.flat if rows is None else self.flat[rows]
        dark = self.dark if rows is None else self.dark[rows]
        for j in np.asarray(views, dtype=np.int64):
            f = self.files[self.file_index(j)]
            img = _read_image(f)
            if rows is not None:
                img = img[rows]
            out.append(flat_dark_log(img, flat, dark, self.flat_path, f))
        return np.stack(out)

    def read_reference(self, z: int | None = None) -> np.ndarray | None:
        if self.ref_files:
            if z is not None:
                p = self.ref_files[int(z)]
                return check_reference(read_tiff(p).reshape(1, *self.volume.shape[1:]), p)
            return check_reference(np.stack([read_tiff(p) for p in self.ref_files]).reshape(self.volume.shape),
                                   self.ref_dir)
        rp = self.folder / "reference.tif"
        if rp.is_file():
            r = check_reference(read_tiff(rp).reshape(self.volume.shape), rp)
            return r if z is None else r[int(z)][None]
        return None


def write_walnut(folder: str | Path, counts: np.ndarray, flats: np.ndarray, dark: np.ndarray, geometry,
                 volume, reference: np.ndarray | None = None, orbit: int = 2,
                 dtype=np.float64) -> list[Path]:
    """Write raw ``counts`` (views, rows, cols) as a walnut-layout folder that :class:`WalnutSource`
    reads back to ``-log((counts - dark) / (mean(flats) - dark))`` view for view.

    View ``j`` goes to ``scan_{n - j:06}.tif`` and view 0 also to ``scan_000000.tif`` (the repeated
    angle); the geometry file gets n + 1 rows (the last repeating the first); images are stored as
    ``flipud(transpose(image))`` (the inverse of the reader's ``trafo``). The reference goes to
    ``Reconstructions/full_AGD_50_NNNNNN.tiff`` slices and ``reference.tif``; ``volume.yaml``
    records the grid. ``dtype`` float64 makes the round trip exact to float32 precision.
    """
    from ctdip.core.io import atomic_write_text, write_tiff

    folder = Path(folder)
    od = folder / "Projections" / f"tubeV{orbit}"
    od.mkdir(parents=True, exist_ok=True)
    n = counts.shape[0]
    written = []
    for j in range(n):
        p = od / f"scan_{n - j:06}.tif"
        write_tiff_image(p, inverse_trafo(counts[j]), dtype=dtype)
        written.append(p)
    p0 = od / "scan_000000.tif"
    write_tiff_image(p0, inverse_trafo(counts[0]), dtype=dtype)
    written.append(p0)
    write_tiff_image(od / DARK_NAME, inverse_trafo(dark), dtype=dtype)
    for fn, fl in zip(FLAT_NAMES, flats):
        write_tiff_image(od / fn, inverse_trafo(fl), dtype=dtype)
    written += [od / DARK_NAME, *(od / fn for fn in FLAT_NAMES[: len(flats)])]
    vec = np.concatenate([geometry.vectors, geometry.vectors[:1]])
    lines = "\n".join(" ".join(f"{x:.17g}" for x in row) for row in vec) + "\n"
    atomic_write_text(od / GEOM_NAME, lines)
    written.append(od / GEOM_NAME)
    write_yaml(folder / "volume.yaml", {"shape": list(volume.shape), "voxel_mm": list(volume.voxel_mm),
                                        "center_mm": list(volume.center_mm)})
    written.append(folder / "volume.yaml")
    if reference is not None:
        rd = folder / "Reconstructions"
        rd.mkdir(exist_ok=True)
        for k in range(reference.shape[0]):
            write_tiff_image(rd / REF_PATTERN.format(k), reference[k])
        write_tiff(folder / "reference.tif", reference, volume.voxel_mm)
        written += [rd, folder / "reference.tif"]
    return written


class WalnutLayout:
    """The walnut layout in the layout registry; scan option ``orbit`` (1..3, default 2) picks the
    source position."""

    name = "walnut"
    description = "Projections/tubeV*/scan_NNNNNN.tif"

    def detect(self, folder: Path) -> bool:
        return is_walnut_folder(folder)

    def open(self, folder: Path, options: Mapping[str, Any]) -> WalnutSource:
        orbit = options.get("orbit")
        return WalnutSource(folder, orbit=2 if orbit is None else int(orbit))


register_layout(WalnutLayout())
