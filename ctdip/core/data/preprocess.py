"""Flat/dark correction and the negative log (Beer–Lambert).

For raw counts ``I``, dark ``D`` and open-beam flat ``F`` (means over the given frames)::

    T = (I - D) / (F - D)          transmission
    y = -log(max(T, T_min))        line integral, T_min = 0.5 / (F - D)  (half a count)

Flats must be finite and ``F - D > 0`` everywhere; anything else is a user mistake (a wrong
or corrupted flat/dark file) and raises :class:`~ctdip.errors.UserError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctdip.errors import UserError


def mean_frame(frames: np.ndarray | None, name: str, path: Path | None = None) -> np.ndarray | None:
    """Mean over a (n, rows, cols) stack (or a single (rows, cols) frame); None stays None."""
    if frames is None:
        return None
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim == 3:
        f = f.mean(axis=0)
    if f.ndim != 2:
        raise UserError(f"{name} must be (n, rows, cols) or (rows, cols), got shape {f.shape}", path=path)
    if not np.all(np.isfinite(f)):
        raise UserError(f"{name} contain NaN or infinite values", path=path)
    return f


def check_flat(flat: np.ndarray, dark: np.ndarray | None, flat_path: Path | None = None) -> np.ndarray:
    """Return the dark-corrected flat ``F - D``; UserError if it has NaN, negative or zero pixels."""
    if not np.all(np.isfinite(flat)):
        raise UserError("flat field contains NaN or infinite values", path=flat_path)
    fd = flat - (0.0 if dark is None else dark)
    bad = int(np.count_nonzero(fd <= 0))
    if bad:
        raise UserError(f"flat field minus dark is zero or negative in {bad} pixel(s) "
                        f"(min {float(fd.min()):.4g}); check the flat and dark images", path=flat_path)
    return fd


def flat_dark_log(raw: np.ndarray, flat: np.ndarray, dark: np.ndarray | None = None,
                  flat_path: Path | None = None, raw_path: Path | None = None) -> np.ndarray:
    """Line integrals ``-log((raw - dark) / (flat - dark))`` as float32 (computed in float64).

    ``raw`` is (..., rows, cols); ``flat``/``dark`` are single (rows, cols) frames (use
    :func:`mean_frame` first). Transmissions below half a count are clipped (see module docstring).
    """
    raw = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        raise UserError("projections contain NaN or infinite values", path=raw_path)
    if raw.shape[-2:] != flat.shape:
        raise UserError(f"projection shape {raw.shape[-2:]} does not match the flat field's {flat.shape}",
                        path=raw_path if raw_path is not None else flat_path)
    fd = check_flat(flat, dark, flat_path)
    t = (raw - (0.0 if dark is None else dark)) / fd
    np.maximum(t, 0.5 / fd, out=t)
    return (-np.log(t)).astype(np.float32)
