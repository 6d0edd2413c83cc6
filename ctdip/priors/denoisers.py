"""Denoisers with one interface ``D(x, sigma)`` for ADMM / HQS / RED.

``x`` is network-shaped, (N, 1, H, W) or (N, 1, D, H, W), in the problem's scaled units (images
O(1)); ``sigma`` is the noise standard deviation in the same units (float or 0-dim tensor).

* ``tv``: the proximal map of isotropic total variation, ``D(x, sigma) = prox_{sigma^2 TV}(x)
  = argmin_u 1/2 ||u - x||^2 + sigma^2 TV(u)`` (the MAP denoiser for noise variance sigma^2 and
  prior exp(-TV)), :func:`ctdip.priors.tv.tv_prox` (FGP on the dual, Beck & Teboulle 2009).

* a trained CNN from a local weight file (``kind: denoiser``, built with ``build_network``); when
  its ``arch`` has ``in_channels == out_channels + 1`` a constant noise-level map ``sigma`` is
  appended to the input (DRUNet convention), otherwise it is called on ``x`` alone. A 2D network
  given a volume (N, 1, D, H, W) denoises it slice by slice along D.
* ``learned``: the DRUNet shipped inside ctdip (``ctdip/weights/drunet_ct.pt``, trained by
  ``ctdip pretrain denoiser`` on ellipses, procedural walnuts and head-CT slices; its training
  command, data and validation gains are in the file's ``extra["training"]``), found through
  :func:`shipped_denoiser_path`.
* ``bm3d``: BM3D of Makinen et al. 2020, slice by slice, when the optional ``bm3d`` package is
  installed (``pip install ctdip[bm3d]``).

``load_denoiser(spec)`` builds one from "tv", "learned", "bm3d" or a weight-file path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Protocol

import torch

from ctdip.errors import UserError
from ctdip.priors.tv import tv_prox

#: Denoisers shipped inside the package: name -> file in ``ctdip/weights/``.
SHIPPED = {"learned": "drunet_ct.pt"}


def shipped_denoiser_path(name: str = "learned") -> Path:
    """Path of a packaged denoiser weight file (``importlib.resources``, works from a wheel)."""
    if name not in SHIPPED:
        raise UserError(f"no shipped denoiser '{name}'; shipped: {', '.join(SHIPPED)}")
    path = Path(str(resources.files("ctdip") / "weights" / SHIPPED[name]))
    if not path.is_file():
        raise UserError("the shipped denoiser weights are missing from this installation", path=path)
    return path


class Denoiser(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor: ...


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

    #: slices per network call when a 2D network denoises a volume
    chunk = 16

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", name: str | None = None):
        from ctdip.networks.weights import build_from_weights, load_weights

        self.path = Path(path)
        obj = load_weights(self.path, kind="denoiser")
        self.arch = obj["arch"]
        self.net = build_from_weights(obj, self.path).to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.noise_map = int(self.arch.get("in_channels", 1)) == int(self.arch.get("out_channels", 1)) + 1
        self.net_dim = int(self.arch.get("dim", 2))
        self.name = name or f"cnn:{self.path.name}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        net_dev = next(self.net.parameters()).device
        if net_dev != x.device:
            self.net = self.net.to(x.device)
        if self.net_dim == 2 and x.ndim == 5:  # a volume, slice by slice along D
            n, c, d, h, w = x.shape
            flat = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
            out = torch.cat([self._apply(flat[k:k + self.chunk], sigma) for k in range(0, n * d, self.chunk)])
            return out.reshape(n, d, c, h, w).permute(0, 2, 1, 3, 4).contiguous()
        return self._apply(x, sigma)

    def _apply(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
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
    """``"tv"``, ``"learned"`` (the shipped DRUNet), ``"bm3d"`` or a path to a ``kind: denoiser``
    weight file."""
    spec = str(spec)
    if spec == "tv":
        return TVDenoiser(**options)
    if spec == "bm3d":
        return BM3DDenoiser()
    if spec in SHIPPED:
        return CNNDenoiser(shipped_denoiser_path(spec), device=device, name=spec)
    p = Path(spec)
    if p.suffix in (".pt", ".pth") or p.exists():
        return CNNDenoiser(p, device=device)
    raise UserError(f"unknown denoiser '{spec}'; use 'tv', 'learned', 'bm3d' or a path to a denoiser weights file")
