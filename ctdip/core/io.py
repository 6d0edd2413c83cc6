"""ctdip's bottom layer for files: atomic writes, TIFF/NPY/YAML reading and writing (unreadable input
becomes a one-line :class:`~ctdip.errors.UserError`), plain-Python conversion for YAML/JSON, and
the cache folder. It imports nothing of ctdip but :mod:`ctdip.errors`, so every layer may use it."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import yaml

from ctdip.errors import UserError

TMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<random>.tmp" in the same folder


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    The file ends with the mode a plain ``open(path, "w")`` gives (0o666 & ~umask, e.g. 0644 under
    umask 022), not mkstemp's private 0600, so colleagues sharing the folder can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_tiff(path: str | Path, volume: np.ndarray, voxel_mm: Iterable[float] | float | None = None) -> None:
    """Write a float32 (z, y, x) volume as an ImageJ hyperstack with its voxel size in mm.

    Fiji and napari read the spacing from the ImageJ metadata (``spacing`` = z step) and the
    X/YResolution tags (pixels per mm).
    """
    import tifffile

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    kwargs: dict[str, Any] = {"imagej": True, "metadata": {"axes": "ZYX", "unit": "mm"}}
    if voxel_mm is not None:
        v = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
        kwargs["resolution"] = (1.0 / v[2], 1.0 / v[1])
        kwargs["metadata"]["spacing"] = float(v[0])
    buf = io.BytesIO()
    tifffile.imwrite(buf, vol, **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def read_tiff_voxel_mm(path: str | Path) -> tuple[float, float, float] | None:
    """Voxel size (z, y, x) in mm from a TIFF written by :func:`write_tiff` (None if absent)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        ij = tf.imagej_metadata or {}
        page = tf.pages[0]
        xr = page.tags.get("XResolution")
        yr = page.tags.get("YResolution")
        if xr is None or yr is None:
            return None
        dx = xr.value[1] / xr.value[0]
        dy = yr.value[1] / yr.value[0]
        return (float(ij.get("spacing", dx)), float(dy), float(dx))


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log messages and Python warnings (a truncated file would print several
    lines before ours); the failure itself still raises and becomes one UserError line."""
    logger = logging.getLogger("tifffile")
    was = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = was


def tiff_info(path: str | Path) -> tuple[tuple[int, ...], int]:
    """(shape of the first series, number of pages) of a TIFF, without reading the pixels."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path=path)
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tf:
            return tuple(int(s) for s in tf.series[0].shape), len(tf.pages)
    except UserError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise UserError(f"unreadable TIFF ({type(e).__name__}: {e})", path=path) from None


def tiff_dtype(path: str | Path) -> np.dtype:
    """The pixel dtype of a TIFF's first series, without reading the pixels."""
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tf:
            return np.dtype(tf.series[0].dtype)
    except Exception as e:
        raise UserError(f"unreadable TIFF ({type(e).__name__}: {e})", path=path) from None


def read_tiff(path: str | Path, pages: Sequence[int] | int | None = None, dtype=np.float32) -> np.ndarray:
    """Read a TIFF (all pages, or the given page indices) as ``dtype``; UserError if unreadable."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path=path)
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tf:
            if pages is None:
                arr = tf.asarray()
            elif isinstance(pages, (int, np.integer)):
                arr = tf.pages[int(pages)].asarray()
            else:
                arr = np.stack([tf.pages[int(i)].asarray() for i in pages]) if len(pages) else np.zeros((0,))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"unreadable TIFF ({type(e).__name__}: {e})", path=path) from None
    return np.asarray(arr, dtype=dtype)


def write_tiff_stack(path: str | Path, array: np.ndarray, dtype=np.float32) -> None:
    """Write (pages, rows, cols) as a plain multi-page TIFF (one page per leading index), atomically."""
    import tifffile

    arr = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack")
    atomic_write_bytes(path, buf.getvalue())


def write_tiff_image(path: str | Path, image: np.ndarray, dtype=np.float32) -> None:
    """Write one 2D image as a single-page TIFF, atomically."""
    write_tiff_stack(path, np.asarray(image)[None] if np.ndim(image) == 2 else image, dtype)


def read_npy(path: str | Path) -> np.ndarray:
    """A ``.npy`` array (no pickles); UserError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path=path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise UserError("not a .npy file (no NumPy header; write it with numpy.save)", path=path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        msg = "holds Python objects, not a numeric array" if "pickled" in str(e) else str(e).splitlines()[0]
        raise UserError(f"unreadable .npy: {msg}", path=path) from None
    except Exception as e:
        raise UserError(f"unreadable .npy ({type(e).__name__}: {e})", path=path) from None


def read_yaml(path: str | Path) -> dict:
    """``yaml.safe_load`` of a mapping; UserError naming the file for missing files, bad YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path=path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"bad YAML{where}: {problem}", path=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read ({e})", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"expected a YAML mapping (key: value), found {type(data).__name__}", path=path)
    return data


def write_yaml(path: str | Path, data: dict) -> None:
    atomic_write_bytes(path, yaml.safe_dump(plain(data), sort_keys=False).encode())


def plain(obj):
    """Convert numpy/torch/Path values to YAML/JSON-safe plain Python."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "item") and hasattr(obj, "numel") and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def cache_dir() -> Path:
    """ctdip's cache folder (operator matrices, warm starts): ``$CTDIP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ctdip``, else ``~/.cache/ctdip`` (``~`` expanded in each)."""
    if os.environ.get("CTDIP_CACHE_DIR"):
        return Path(os.environ["CTDIP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ctdip"


def preset_dir(kind: str) -> Path:
    """The folder of the shipped presets of one kind: ``methods``, ``networks`` or ``setups``.

    They live at the repository's top level, ``presets/<kind>/`` beside ``ctdip/`` (a source checkout,
    ``pip install -e .``); a wheel installs them as the package data ``ctdip/presets/<kind>/``
    (``package-dir`` in pyproject.toml maps the one to the other)."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "presets" / kind
    return installed if installed.is_dir() else package.parent / "presets" / kind


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG, atomically (a killed run never leaves half an image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
