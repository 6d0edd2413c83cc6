"""U-Net for Deep Image Prior, 2D and 3D (the architecture of Baguer et al. 2020 / Barbano et al. 2022).

Layout, for ``S = len(channels)`` scales (c_i channels, s_i skip channels at scale i)::

    inc:      conv3x3(in -> c_0) - GN - LeakyReLU(0.2)
    down_i:   conv3x3 stride 2 (c_{i-1} -> c_i) - GN - LReLU - conv3x3 (c_i -> c_i) - GN - LReLU   (i = 1..S-1)
    up_i:     (scale i -> i-1, i = S-1..1) GN(input) - nearest upsampling x2 - concat(skip) - conv3x3
              - GN - LReLU - conv1x1 - GN - LReLU, with skip = conv1x1(enc_{i-1} -> s_i) - GN - LReLU
              (left out when s_i = 0)
    outc:     conv1x1 (c_0 -> out), optional sigmoid

``skip_channels[i]`` is the width of the skip used by the up block leaving scale i (entry 0 is
unused), the convention of the published configs: the paper preset (handbook / EDIP) is 6 scales x
128 channels with skips [0, 0, 0, 0, 4, 4], i.e. skips only into the two coarsest up blocks.
GroupNorm replaces BatchNorm (batch size 1), upsampling is nearest (deterministic on GPU).
Inputs whose spatial size is not a multiple of 2^(S-1) are reflect-padded and the output cropped.

``channels_last: true`` (opt-in, off by default) keeps weights and activations in the
channels-last memory layout (NHWC / NDHWC) and returns a contiguous output. The maths is the
same, but oneDNN / cuDNN pick other convolution kernels, so the numbers agree with the default
layout only to float rounding, not bit for bit (``benchmarks/results/step.md`` has its speed).

``precision: bfloat16`` (opt-in, default ``float32``) runs the forward pass under
``torch.autocast`` with bfloat16: convolutions take bfloat16 inputs and weights (8-bit mantissa)
and accumulate in float32; normalisations and the last 1x1 convolution run in float32, the
weights and Adam's state stay float32, so the output has float32 resolution. Faster where the CPU
has bfloat16 dot products (AVX512-BF16, AMX) and on GPUs, but the image changes by more than
rounding: on the tuning objects ``recommended`` returned 0.15-1.17 dB less in five runs
(``benchmarks/results/precision.md``), so it is not a default.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("float32", "bfloat16")


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(ch, max(1, groups))
    return nn.GroupNorm(g, ch)


class _Ops:
    def __init__(self, dim: int):
        if dim not in (2, 3):
            raise ValueError(f"U-Net dim must be 2 or 3, got {dim}")
        self.dim = dim
        self.conv = nn.Conv2d if dim == 2 else nn.Conv3d


class UNet(nn.Module):
    """Encoder-decoder with optional skip connections (see module docstring).

    ``encoder_parameters()`` yields the parameters of ``inc`` and every ``down`` block: the part
    EDIP-FE freezes.
    """

    def __init__(
        self,
        dim: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 32, 64, 64, 128),
        skip_channels: Sequence[int] = (4, 4, 4, 4, 4),
        sigmoid: bool = False,
        norm_groups: int = 4,
        negative_slope: float = 0.2,
        channels_last: bool = False,
        precision: str = "float32",
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        skip_channels = [int(s) for s in skip_channels]
        if len(channels) < 1:
            raise ValueError("U-Net needs at least one scale")
        if len(skip_channels) != len(channels):
            raise ValueError(
                f"skip_channels has {len(skip_channels)} entries, channels has {len(channels)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        ops = _Ops(dim)
        conv = ops.conv
        self.dim, self.scales, self.sigmoid = dim, len(channels), bool(sigmoid)
        act = lambda: nn.LeakyReLU(negative_slope, inplace=True)  # noqa: E731
        self.inc = nn.Sequential(conv(in_channels, channels[0], 3, padding=1), _norm(channels[0], norm_groups), act())
        self.down = nn.ModuleList()
        for i in range(1, len(channels)):
            cin, cout = channels[i - 1], channels[i]
            self.down.append(nn.Sequential(
                conv(cin, cout, 3, stride=2, padding=1), _norm(cout, norm_groups), act(),
                conv(cout, cout, 3, padding=1), _norm(cout, norm_groups), act()))
        self.skip = nn.ModuleList()
        self.up = nn.ModuleList()
        self.up_norm = nn.ModuleList()
        # up[j] goes from scale i = S-1-j to scale i-1 and takes the skip of scale i-1
        for j in range(len(channels) - 1):
            i = len(channels) - 1 - j
            cin, cout, s = channels[i], channels[i - 1], skip_channels[i]
            self.up_norm.append(_norm(cin, norm_groups))
            self.skip.append(nn.Sequential(conv(channels[i - 1], s, 1), _norm(s, norm_groups), act())
                             if s > 0 else nn.Identity())
            self.up.append(nn.Sequential(
                conv(cin + s, cout, 3, padding=1), _norm(cout, norm_groups), act(),
                conv(cout, cout, 1), _norm(cout, norm_groups), act()))
        self._skip_ch = skip_channels
        self.outc = conv(channels[0], out_channels, 1)
        self.channels_last = bool(channels_last)
        self._memory_format = torch.channels_last if dim == 2 else torch.channels_last_3d
        if self.channels_last:
            self.to(memory_format=self._memory_format)

    def encoder_parameters(self):
        """Parameters of the encoder (``inc`` and ``down.*``), frozen by EDIP-FE."""
        yield from self.inc.parameters()
        yield from self.down.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "bfloat16":
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return self._forward(x).float()
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        m = 2 ** (self.scales - 1)
        pads = [(-n) % m for n in spatial]
        if any(pads):
            pad_arg: list[int] = []
            for p in reversed(pads):
                pad_arg += [p // 2, p - p // 2]
            mode = "reflect" if all(p < n for p, n in zip(pads, spatial)) else "replicate"
            x = F.pad(x, pad_arg, mode=mode)
        if self.channels_last:
            x = x.contiguous(memory_format=self._memory_format)
        feats = [self.inc(x)]
        for blk in self.down:
            feats.append(blk(feats[-1]))
        h = feats[-1]
        for j, blk in enumerate(self.up):
            i = self.scales - 1 - j
            h = F.interpolate(self.up_norm[j](h), size=feats[i - 1].shape[2:], mode="nearest")
            if self._skip_ch[i] > 0:
                h = torch.cat([h, self.skip[j](feats[i - 1])], dim=1)
            h = blk(h)
        if self.precision == "bfloat16":  # the last 1x1 convolution in float32: no bfloat16 output steps
            with torch.autocast(device_type=h.device.type, enabled=False):
                out = self.outc(h.float())
        else:
            out = self.outc(h)
        if any(pads):
            sl = [slice(None), slice(None)] + [slice(p // 2, p // 2 + n) for p, n in zip(pads, spatial)]
            out = out[tuple(sl)]
        if self.channels_last:
            out = out.contiguous()
        return torch.sigmoid(out) if self.sigmoid else out
