"""Image quality metrics: PSNR, SSIM (optionally masked), rise time, steady PSNR.

Conventions (used everywhere in ctdip, and reproduced by scikit-image for checking):

* ``psnr(x, ref) = 10 log10(data_range^2 / MSE)``, where ``data_range = ref.max() - ref.min()``
  unless given. MSE is over the mask when a mask is given.
* ``ssim`` is the Gaussian-window SSIM of Wang et al. 2004 (sigma 1.5, K1 0.01, K2 0.03, window
  truncated at 3.5 sigma) with the same ``data_range``; 2D images are treated slice-wise (mean over
  z), as scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)`` does for each 2D slice.
* The three numbers a run reports, with one meaning everywhere (console, ``summary.json``,
  ``ctdip evaluate``; :func:`curve_numbers`): ``returned`` = PSNR/SSIM of the returned image
  (``recon.tif``); ``final`` = the last logged iterate (the last ``metrics.csv`` row); ``peak`` =
  the maximum PSNR over the logged iterates, with its iteration (the first one on ties).
* ``rise_time`` (EDIP paper): the first iteration at which a PSNR curve reaches
  ``steady_psnr - 0.1`` dB; ``steady_psnr`` is the median PSNR over the last ``tail`` fraction of a
  (long) reference curve.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
from scipy import ndimage


def _as_np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def circle_mask(shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the inscribed disc (per slice for 3D shapes (z, y, x))."""
    ny, nx = shape[-2], shape[-1]
    yy, xx = np.mgrid[:ny, :nx]
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    r = min(ny, nx) / 2
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return np.broadcast_to(m, shape).copy()


def psnr(x, ref, data_range: float | None = None, mask=None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / mean((x - ref)^2))``."""
    x, ref = _as_np(x), _as_np(ref)
    if x.shape != ref.shape:
        x, ref = np.squeeze(x), np.squeeze(ref)
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {ref.shape}")
    if data_range is None:
        data_range = float(ref.max() - ref.min())
    err = (x - ref) ** 2
    mse = float(err[np.asarray(mask, bool)].mean()) if mask is not None else float(err.mean())
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / mse))


def _ssim_2d(x: np.ndarray, y: np.ndarray, data_range: float, mask=None) -> float:
    sigma, trunc = 1.5, 3.5
    k1, k2 = 0.01, 0.03

    def filt(a):
        return ndimage.gaussian_filter(a, sigma=sigma, truncate=trunc, mode="reflect")

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = int(trunc * sigma + 0.5)  # scikit-image crops the border where the window is truncated
    if mask is not None:
        return float(s[np.asarray(mask, bool)].mean())
    return float(s[pad:-pad, pad:-pad].mean()) if min(s.shape) > 2 * pad else float(s.mean())


def ssim(x, ref, data_range: float | None = None, mask=None) -> float:
    """Structural similarity (Gaussian window, sigma 1.5); mean over slices for volumes."""
    x, ref = np.squeeze(_as_np(x)), np.squeeze(_as_np(ref))
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {ref.shape}")
    if data_range is None:
        data_range = float(ref.max() - ref.min())
    if mask is not None:
        mask = np.squeeze(np.asarray(mask, bool))
    if x.ndim == 2:
        return _ssim_2d(x, ref, data_range, mask)
    vals = [_ssim_2d(x[k], ref[k], data_range, None if mask is None else mask[k]) for k in range(x.shape[0])]
    return float(np.mean(vals))


def steady_psnr(psnrs, tail: float = 0.1) -> float:
    """Median PSNR over the last ``tail`` fraction of a curve (the EDIP paper's steady value)."""
    p = np.asarray(psnrs, dtype=np.float64)
    n = max(1, int(round(len(p) * tail)))
    return float(np.median(p[-n:]))


def rise_time(iters, psnrs, target: float, tol: float = 0.1) -> int | None:
    """First iteration whose PSNR reaches ``target - tol`` dB, or None if never reached."""
    for it, p in zip(iters, psnrs):
        if p >= target - tol:
            return int(it)
    return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve_numbers(rows: Iterable[Mapping[str, Any]], min_points_steady: int = 10) -> dict[str, Any]:
    """``final``, ``peak``, ``steady_psnr`` and ``rise_time`` of a logged PSNR curve.

    ``rows`` are metrics.csv rows (``iter``, ``psnr``, optionally ``ssim``); rows without a finite
    PSNR are ignored. ``final`` is the last logged iterate, ``peak`` the first row of maximum PSNR
    (each ``{"iter", "psnr"}`` plus ``"ssim"`` when that row logged one); ``steady_psnr`` and
    ``rise_time`` (EDIP paper) need at least ``min_points_steady`` points. Empty dict: no curve.
    """
    pts = [r for r in rows if _finite(r.get("psnr")) and r.get("iter") is not None]
    if not pts:
        return {}

    def point(r: Mapping[str, Any]) -> dict[str, Any]:
        d: dict[str, Any] = {"iter": int(r["iter"]), "psnr": float(r["psnr"])}
        if _finite(r.get("ssim")):
            d["ssim"] = float(r["ssim"])
        return d

    ps = [float(r["psnr"]) for r in pts]
    out: dict[str, Any] = {"final": point(pts[-1]), "peak": point(pts[int(np.argmax(ps))])}
    if len(ps) >= min_points_steady:
        out["steady_psnr"] = steady_psnr(ps)
        out["rise_time"] = rise_time([int(r["iter"]) for r in pts], ps, out["steady_psnr"])
    return out
