"""Denoisers with one interface ``D(x, sigma)`` for ADMM / HQS / RED, and differentiable TV.

``x`` is network-shaped, (N, 1, H, W) or (N, 1, D, H, W), in the problem's scaled units (images
O(1)); ``sigma`` is the noise standard deviation in the same units (float or 0-dim tensor).

* ``tv``: the proximal map of isotropic total variation, ``D(x, sigma) = prox_{sigma^2 TV}(x)
  = argmin_u 1/2 ||u - x||^2 + sigma^2 TV(u)`` (the MAP denoiser for noise variance sigma^2 and
  prior exp(-TV)), computed with the fast gradient projection (FGP) on the dual of
  Beck & Teboulle 2009: with ``u(p) = x + lam div p`` and ``L = 4 d`` (d spatial dims),

      p_k = Proj_{|p|<=1}( r_k + 1/(L lam) grad u(r_k) ),
      t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,  r_{k+1} = p_k + (t_k - 1)/t_{k+1} (p_k - p_{k-1}).

* a trained CNN from a local weight file (``kind: denoiser``, built with ``build_network``); when
  its ``arch`` has ``in_channels == out_channels + 1`` a constant noise-level map ``sigma`` is
  appended to the input (DRUNet convention), otherwise it is called on ``x`` alone.
* ``bm3d``: BM3D of Makinen et al. 2020, slice by slice, when the optional ``bm3d`` package is
  installed (``pip install ctdip[bm3d]``).

``load_denoiser(spec)`` builds one from "tv", "bm3d" or a weight-file path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from ctdip import tv
from ctdip.errors import UserError


class Denoiser(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor: ...


# --------------------------------------------------------------------------- finite differences
def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences over the spatial dims (2..) with zero at the far boundary
    (:func:`ctdip.tv.grad`). (N, C, *S) -> (d, N, C, *S)."""
    return tv.grad(x, _spatial(x))


def div(p: torch.Tensor) -> torch.Tensor:
    """Divergence, the negative adjoint of :func:`grad`: ``<grad x, p> = -<x, div p>``."""
    return tv.div(p, _spatial(p[0]))


def tv_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Isotropic total variation, averaged over voxels: ``mean_i sqrt(sum_k (D_k x)_i^2 + eps)``.

    Averaging (not summing) keeps a TV weight meaningful across image sizes."""
    g = grad(x)
    return torch.sqrt((g * g).sum(0) + eps).mean()


def tv_prox(x: torch.Tensor, lam: float | torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """``argmin_u 1/2 ||u - x||^2 + lam * sum_i |grad u|_i`` by FGP (see module docstring)."""
    lam_f = float(lam)
    if lam_f <= 0:
        return x.clone()
    d = x.ndim - 2
    L = 4.0 * d
    p = torch.zeros((d, *x.shape), dtype=x.dtype, device=x.device)
    r = p.clone()
    t = 1.0
    for _ in range(iterations):
        u = x + lam_f * div(r)
        p_new = r + grad(u) / (L * lam_f)
        nrm = torch.sqrt((p_new * p_new).sum(0, keepdim=True)).clamp_min(1.0)
        p_new = p_new / nrm
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        r = p_new + ((t - 1) / t_new) * (p_new - p)
        p, t = p_new, t_new
    return x + lam_f * div(p)


# --------------------------------------------------------------------------- denoisers
class TVDenoiser:
    """``D(x, sigma) = prox_{sigma^2 TV}(x)`` (FGP, ``iterations`` steps)."""

    name = "tv"

    def __init__(self, iterations: int = 50):
        self.iterations = int(iterations)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        return tv_prox(x, float(sigma) ** 2, self.iterations)


class CNNDenoiser:
    """A trained denoising network from a ``kind: denoiser`` weight file."""

    name = "cnn"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from ctdip.networks.weights import build_from_weights, load_weights

        self.path = Path(path)
        obj = load_weights(self.path, kind="denoiser")
        self.arch = obj["arch"]
        self.net = build_from_weights(obj, self.path).to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.noise_map = int(self.arch.get("in_channels", 1)) == int(self.arch.get("out_channels", 1)) + 1
        self.name = f"cnn:{self.path.name}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        net_dev = next(self.net.parameters()).device
        if net_dev != x.device:
            self.net = self.net.to(x.device)
        inp = x
        if self.noise_map:
            inp = torch.cat([x, torch.full_like(x, float(sigma))], dim=1)
        return self.net(inp)


class BM3DDenoiser:
    """BM3D (optional ``bm3d`` package), applied slice by slice on CPU."""

    name = "bm3d"

    def __init__(self):
        try:
            import bm3d  # noqa: F401
        except ImportError:
            raise UserError("the 'bm3d' denoiser needs the optional package: pip install 'ctdip[bm3d]'") from None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        import bm3d

        arr = x.detach().cpu().double().numpy()
        out = arr.copy()
        flat = arr.reshape(-1, *arr.shape[-2:])
        res = out.reshape(-1, *arr.shape[-2:])
        for k in range(flat.shape[0]):
            res[k] = bm3d.bm3d(flat[k], sigma_psd=float(sigma))
        return torch.as_tensor(out, dtype=x.dtype, device=x.device)


def load_denoiser(spec: str, device: str | torch.device = "cpu", **options) -> Denoiser:
    """``"tv"``, ``"bm3d"`` or a path to a ``kind: denoiser`` weight file."""
    spec = str(spec)
    if spec == "tv":
        return TVDenoiser(**options)
    if spec == "bm3d":
        return BM3DDenoiser()
    p = Path(spec)
    if p.suffix in (".pt", ".pth") or p.exists():
        return CNNDenoiser(p, device=device)
    raise UserError(f"unknown denoiser '{spec}'; use 'tv', 'bm3d' or a path to a denoiser weights file")
