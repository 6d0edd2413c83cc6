"""DRUNet-style Gaussian denoiser ``D(x, sigma)`` (after Zhang et al. 2021, "Plug-and-play image
restoration with deep denoiser prior").

The noise level enters as a constant extra input channel (a noise-level map), so one network
covers a range of noise levels::

    D(x, sigma) = f_theta([x, sigma * 1])          x: (N, C, H, W) or (N, C, D, H, W)

As in the original, ``in_channels`` counts the noise-level map (``in_channels = C + 1``,
``out_channels = C``), so ``forward(x, sigma)`` appends the map itself and ``forward(xs)`` accepts
an input that already carries it as its last channel (what ``ctdip.priors.denoisers`` does for
any ``kind: denoiser`` network with ``in_channels == out_channels + 1``).

With ``residual=True`` (the default here) the network predicts the noise,
``D(x, sigma) = x - f_theta([x, sigma])`` (residual learning as in DnCNN), which makes small noise
levels, where ``D`` is close to the identity, easy to learn for small networks.
``f_theta`` is a U-Net without normalisation layers: a head convolution, ``len(channels) - 1``
encoder levels of ``blocks`` residual blocks ``r -> r + conv(relu(conv(r)))`` followed by a
stride-2 convolution, a body of residual blocks, and a mirrored decoder (transposed stride-2
convolutions, residual blocks) with *additive* skip connections, then a tail convolution.
Like the original, convolutions are bias-free, which keeps ``D`` scale-equivariant in ``x`` and
``sigma`` jointly. Inputs whose size is not a multiple of ``2^(levels-1)`` are padded
(replicate) and cropped back.

Images are in ctdip's O(1) intensity convention (a Problem's scaled units; ellipses in [0, 1]),
and ``sigma`` is the standard deviation of the Gaussian noise in those units: a float, a 0-d
tensor or a (N,) tensor (one level per batch item).

Build it through ``ctdip.networks.build_network({"name": "drunet", ...})`` or directly::

    DRUNet(in_channels=2, out_channels=1, channels=(32, 64, 128, 256), blocks=2, dim=2)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Named sizes: ``tiny`` for tests and CPU, ``small`` the CPU default, ``base`` the paper's widths.
DRUNET_PRESETS: dict[str, dict] = {
    "tiny": {"channels": [8, 16, 32], "blocks": 1},
    "small": {"channels": [16, 32, 64, 128], "blocks": 2},
    "base": {"channels": [64, 128, 256, 512], "blocks": 4},
}


def drunet_arch(size: str = "small", dim: int = 2, image_channels: int = 1) -> dict:
    """Architecture dict (as stored in weight files) for a named DRUNet size."""
    if size not in DRUNET_PRESETS:
        from ctdip.errors import UserError

        raise UserError(f"unknown denoiser size '{size}'; choose one of: {', '.join(DRUNET_PRESETS)}")
    return {"name": "drunet", "in_channels": image_channels + 1, "out_channels": image_channels, "dim": dim,
            "residual": True, **DRUNET_PRESETS[size]}


class _ResBlock(nn.Module):
    def __init__(self, c: int, conv: type) -> None:
        super().__init__()
        self.c1 = conv(c, c, 3, padding=1, bias=False)
        self.c2 = conv(c, c, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.relu(self.c1(x)))


class DRUNet(nn.Module):
    """Noise-level-conditioned residual U-Net denoiser; ``forward(x, sigma)``."""

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: int = 2,
        dim: int = 2,
        residual: bool = True,
        name: str = "drunet",
    ) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError("dim must be 2 or 3")
        if in_channels != out_channels + 1:
            raise ValueError("DRUNet needs in_channels == out_channels + 1 (the noise-level map)")
        if len(channels) < 1 or blocks < 1:
            raise ValueError("DRUNet needs at least one level and one block per level")
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        convT = nn.ConvTranspose2d if dim == 2 else nn.ConvTranspose3d
        ch = [int(c) for c in channels]
        self.dim, self.channels, self.blocks, self.residual = dim, ch, blocks, bool(residual)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.head = conv(in_channels, ch[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        for a, b in zip(ch[:-1], ch[1:]):
            self.down.append(nn.Sequential(*[_ResBlock(a, conv) for _ in range(blocks)],
                                           conv(a, b, 2, stride=2, bias=False)))
        self.body = nn.Sequential(*[_ResBlock(ch[-1], conv) for _ in range(blocks)])
        self.up = nn.ModuleList()
        for a, b in zip(ch[::-1][:-1], ch[::-1][1:]):
            self.up.append(nn.Sequential(convT(a, b, 2, stride=2, bias=False),
                                         *[_ResBlock(b, conv) for _ in range(blocks)]))
        self.tail = conv(ch[0], out_channels, 3, padding=1, bias=False)

    @property
    def multiple(self) -> int:
        """Spatial sizes are padded to a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    def arch(self) -> dict:
        return {"name": "drunet", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "channels": list(self.channels), "blocks": self.blocks, "dim": self.dim,
                "residual": self.residual}

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """Denoise ``x`` (N, C, ...) at noise level ``sigma``; with ``sigma=None`` the last channel
        of ``x`` is taken as the noise-level map."""
        if sigma is None:
            if x.shape[1] != self.in_channels:
                raise ValueError(f"DRUNet without sigma expects {self.in_channels} channels "
                                 f"(image + noise map), got {x.shape[1]}")
            sigma = x[:, -1].flatten(1).mean(1)
            x = x[:, :-1]
        if x.shape[1] != self.out_channels:
            raise ValueError(f"DRUNet expects {self.out_channels} image channel(s), got {x.shape[1]}")
        n = x.shape[0]
        spatial = x.shape[2:]
        if len(spatial) != self.dim:
            raise ValueError(f"DRUNet(dim={self.dim}) expects (N, C, {'D, ' if self.dim == 3 else ''}H, W), "
                             f"got {tuple(x.shape)}")
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(n)
        elif s.numel() != n:
            raise ValueError(f"sigma has {s.numel()} values for a batch of {n}")
        m = self.multiple
        pad = []
        for size in reversed(spatial):
            pad += [0, (-size) % m]
        xp = F.pad(x, pad, mode="replicate") if any(pad) else x
        smap = s.reshape(n, 1, *([1] * self.dim)).expand(n, 1, *xp.shape[2:])
        h = self.head(torch.cat([xp, smap], dim=1))
        skips = [h]
        for d in self.down:
            h = d(h)
            skips.append(h)
        h = self.body(h)
        for u in self.up:
            h = u(h + skips.pop())
        out = self.tail(h + skips.pop())
        crop = tuple(slice(0, k) for k in spatial)
        out = out[(slice(None), slice(None), *crop)]
        return x - out if self.residual else out
