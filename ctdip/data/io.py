"""TIFF and YAML helpers that turn unreadable input into a one-line :class:`~ctdip.errors.UserError`."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import yaml

from ctdip.errors import UserError
from ctdip.runs import atomic_write_bytes


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
    from ctdip.runs import _plain

    atomic_write_bytes(path, yaml.safe_dump(_plain(data), sort_keys=False).encode())
