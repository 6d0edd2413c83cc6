"""Filtered backprojection (parallel, flat-detector fan) and FDK (cone), in torch (CPU or CUDA).

One weighted filtered backprojection covers all three beams of a vector geometry (Kak & Slaney,
ch. 3; Feldkamp, Davis & Kress 1984). For view i with source s (or ray direction), detector
centre d, steps u, v and detector normal n = u x v / |u x v|:

* cone/fan: D_i = |(0 - s) . n| (source to the parallel plane through the origin), S_i = |(d - s) . n|
  (source to detector). Each pixel p is pre-weighted by the cosine of its ray to the normal,
  ``S_i / |p - s|`` (= D / sqrt(D^2 + a^2 + b^2) on the virtual detector through the origin),
  and filtered with pixel size tau_i = |u| D_i / S_i (the detector scaled to the origin plane).
  Parallel beams: no pre-weight, tau_i = |u|.
* ramp filter along detector rows (zero-padded FFT of the band-limited spatial ramp
  h(0) = 1/(4 tau^2), h(k) = -1/(pi k tau)^2 for odd k, 0 for even k, times a window W(f)):
  ``Q_i = tau_i * (p_i * h) `` with window ``ram-lak`` (1), ``shepp-logan`` (sinc(f/2)),
  ``cosine`` (cos(pi f / 2)), ``hamming`` (0.54 + 0.46 cos(pi f)), ``hann`` (0.5 + 0.5 cos(pi f)),
  f in [0, 1] the frequency relative to Nyquist.
* voxel-driven backprojection with linear interpolation on the detector::

      f(x) = sum_i w_i * Q_i(col_i(x), row_i(x)) / U_i(x)^2,   U_i(x) = ((x - s) . n) / ((0 - s) . n)

  (U = 1 for parallel beams). The angular weights w_i are half the angular interval each view
  covers on the full circle for fan/cone (sum w = pi over 2 pi), and the interval covered modulo
  pi for parallel beams (sum w = pi over 180 or 360 degrees).

Full scans only: fan/cone short scans (Parker weights) are refused with a clear error.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
from ctdip.core.operators._torch import detector_coords
from ctdip.errors import UserError

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann", "hamming")
_SAMPLES_PER_CHUNK = 2**22


def ramp_filter(n_cols: int, window: str = "ram-lak", dtype=torch.float32, device=None) -> tuple[torch.Tensor, int]:
    """Frequency response (rfft layout) of the windowed discrete ramp for ``n_cols`` pixels
    (tau = 1), and the padded length it applies to."""
    if window not in FILTERS:
        raise UserError(f"unknown FBP filter {window!r}; expected one of {', '.join(FILTERS)}")
    P = max(64, 1 << int(np.ceil(np.log2(2 * n_cols))))
    k = np.arange(P)
    k = np.where(k > P // 2, k - P, k)
    h = np.zeros(P)
    h[0] = 0.25
    odd = (k % 2) != 0
    h[odd] = -1.0 / (np.pi * k[odd]) ** 2
    H = np.real(np.fft.rfft(h))
    f = np.arange(P // 2 + 1) / (P // 2)
    W = {"ram-lak": np.ones_like(f), "shepp-logan": np.sinc(f / 2), "cosine": np.cos(np.pi * f / 2),
         "hamming": 0.54 + 0.46 * np.cos(np.pi * f), "hann": 0.5 + 0.5 * np.cos(np.pi * f)}[window]
    return torch.as_tensor(H * W, dtype=dtype, device=device), P


def angular_weights(geometry: ProjectionGeometry) -> np.ndarray:
    """Per-view backprojection weights w_i (see the module docstring); refuses short scans."""
    beta = geometry.view_angles()
    n = len(beta)
    period = np.pi if geometry.beam == "parallel" else 2 * np.pi
    b = np.mod(beta, period)
    order = np.argsort(b, kind="stable")
    sb = b[order]
    after = np.diff(np.concatenate([sb, [sb[0] + period]]))
    before = np.roll(after, 1)
    delta = (after + before) / 2
    if n > 2:
        nominal = period / n
        # the largest gap, once duplicate (opposite) views are merged, must be a regular step
        distinct = after[after > 1e-6 * nominal]
        if distinct.size and distinct.max() > 3.5 * np.median(distinct):
            cover = np.degrees(period - distinct.max())
            raise UserError(
                f"FBP/FDK needs a full scan; these {n} views cover only about {cover:.0f} of "
                f"{np.degrees(period):.0f} degrees (short scans / limited angles are not supported)")
    w = np.empty(n)
    w[order] = delta if geometry.beam == "parallel" else delta / 2
    return w


def fbp(y, geometry: ProjectionGeometry, volume: VolumeGeometry, filter: str = "ram-lak",
        device: str | torch.device | None = None) -> torch.Tensor:
    """FBP (parallel / fan) or FDK (cone) of projections y (..., angles, rows, cols) -> (..., z, y, x).

    ``y`` holds line integrals (numpy or torch); the result is on ``device`` (default: y's device)
    in the units of the attenuation (per mm), oriented as every ctdip volume.
    """
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    dev = torch.device(device) if device is not None else yt.device
    yt = yt.to(device=dev, dtype=torch.float32)
    shape = (geometry.n_views, *geometry.det_shape)
    if tuple(yt.shape[-3:]) != shape:
        raise UserError(f"projections of shape {tuple(yt.shape)} do not match the geometry's "
                        f"(angles, rows, cols) = {shape}")
    lead = tuple(yt.shape[:-3])
    yb = yt.reshape(-1, *shape)  # (B, nv, R, C)
    B = yb.shape[0]
    R, C = geometry.det_shape
    vec = torch.as_tensor(geometry.vectors, dtype=torch.float64, device=dev)
    s, d, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
    n = torch.cross(u, v, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True)
    pix_u = u.norm(dim=-1)
    if geometry.beam == "cone":
        D = ((-s) * n).sum(-1).abs()
        S = ((d - s) * n).sum(-1).abs()
        cc = torch.arange(C, dtype=torch.float64, device=dev) - (C - 1) / 2
        rr = torch.arange(R, dtype=torch.float64, device=dev) - (R - 1) / 2
        pix = d[:, None, None] + cc[None, None, :, None] * u[:, None, None] + rr[None, :, None, None] * v[:, None, None]
        cosw = S[:, None, None] / (pix - s[:, None, None]).norm(dim=-1)  # (nv, R, C)
        yb = yb * cosw.to(torch.float32)
        tau = pix_u * D / S
    else:
        tau = pix_u
    # ramp filter along columns
    H, P = ramp_filter(C, filter, device=dev)
    q = torch.fft.irfft(torch.fft.rfft(yb, n=P, dim=-1) * H, n=P, dim=-1)[..., :C]
    w = torch.as_tensor(angular_weights(geometry), dtype=torch.float64, device=dev)
    q = q / tau.to(torch.float32)[:, None, None]  # Q = tau * (p * h_tau), h_tau = h / tau^2
    # voxel-driven backprojection
    zc = torch.as_tensor(volume.voxel_centers(0), dtype=torch.float64, device=dev)
    yc = torch.as_tensor(volume.voxel_centers(1), dtype=torch.float64, device=dev)
    xc = torch.as_tensor(volume.voxel_centers(2), dtype=torch.float64, device=dev)
    Z, Y, X = torch.meshgrid(zc, yc, xc, indexing="ij")
    # float32 is plenty for detector coordinates (~1e-5 pixel) and much faster than float64
    pts = torch.stack([X.reshape(-1), Y.reshape(-1), Z.reshape(-1)], dim=-1).to(torch.float32)  # (M, 3)
    M = pts.shape[0]
    out = torch.zeros((B, M), dtype=torch.float32, device=dev)
    nv_chunk = max(1, min(geometry.n_views, _SAMPLES_PER_CHUNK // max(1, M * B)))
    m_chunk = M if M * B <= _SAMPLES_PER_CHUNK else max(1, _SAMPLES_PER_CHUNK // B)
    qv = q.permute(1, 0, 2, 3)  # (nv, B, R, C)
    for m0 in range(0, M, m_chunk):
        p = pts[m0:m0 + m_chunk]
        for i0 in range(0, geometry.n_views, nv_chunk):
            sl = slice(i0, min(i0 + nv_chunk, geometry.n_views))
            col, row, depth = detector_coords(geometry, vec[sl], p)
            grid = torch.stack([(col + 0.5) * (2.0 / C) - 1, (row + 0.5) * (2.0 / R) - 1], dim=-1)
            smp = F.grid_sample(qv[sl], grid[:, None], mode="bilinear",
                                padding_mode="zeros", align_corners=False)[:, :, 0]  # (nv, B, m)
            wt = w[sl, None].to(torch.float32) / depth**2  # (nv, m)
            out[:, m0:m0 + m_chunk] += (smp * wt[:, None]).sum(0)
    return out.reshape(*lead, *volume.shape)
