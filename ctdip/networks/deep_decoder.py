"""Deep decoder (Heckel & Hand 2019, "Deep Decoder: Concise image representations from untrained
non-convolutional networks", ICLR; handbook §3.2), 2D and 3D.

An under-parametrised image generator without spatial convolutions. With ``d = layers`` blocks of
``k`` channels, a fixed random input ``B_0`` of spatial size ``max(2, ceil(n / 2^(d-1)))`` per axis and
``U_i`` a fixed (parameter-free) bilinear / trilinear upsampling::

    B_{i+1} = cn( ReLU( U_i ( B_i C_i ) ) ),   i = 0 .. d-1     (no U on the last block)
    x       = B_d c_out                                          (linear output)

``C_i`` are 1x1 convolutions (k x k weights plus a bias, the mixing across channels), ``cn`` is the
channel normalisation of the paper (each channel standardised over its pixels, then a learned scale
and shift: ``GroupNorm(k, k)`` for a batch of one) and ``c_out`` is a final 1x1 convolution to one
channel. The output is linear, not the paper's sigmoid: CT attenuation is not bounded to [0, 1].

All spatial structure comes from the upsampling: with nearest-neighbour upsampling the output would
be constant on blocks of ``2^(d-1)`` pixels, so the upsampling is bilinear (trilinear in 3D), as
in the paper. Its backward on CUDA uses atomic adds, so GPU runs are not bit-reproducible (CPU runs
are).

Parameters: ``d (k^2 + 3k) + k + 1`` (convolutions, biases, scale/shift, output). ``channels:
auto`` (the preset) picks the largest ``k <= max_channels`` with at most ``pixels / compression``
parameters, so the network is under-parametrised on every image size (Heckel & Hand's argument:
fewer parameters than pixels regularise by themselves, so no early stopping should be needed).
Measured for CT in ``benchmarks/results/handbook_methods.md`` (Adam lr 0.01): within 0.3 dB of its
peak at the end of every run, no decline over 6000 iterations on the 128² walnut.

The random input ``B_0 ~ N(0, 1)`` is drawn from ``input_seed`` and kept as a buffer (it is in the
state dict, so checkpoints and weight files carry it); the method's network input only fixes the
output shape (the deep decoder's own input replaces it).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def parameter_count(channels: int, layers: int, out_channels: int = 1) -> int:
    """Parameters of a deep decoder with ``layers`` blocks of ``channels`` channels."""
    k = int(channels)
    return layers * (k * k + 3 * k) + out_channels * (k + 1)


def _sizes(image_shape: Sequence[int], layers: int) -> list[tuple[int, ...]]:
    """Spatial size of B_0 .. B_{d-1}: ceil(n / 2^(d-1-i)) per axis but at least 2 (the channel
    normalisation needs more than one value), the last one the image's."""
    ups = layers - 1
    return [tuple(max(min(2, n), math.ceil(n / 2 ** (ups - i))) for n in image_shape) for i in range(layers)]


class DeepDecoder(nn.Module):
    """The deep decoder of the module docstring; ``forward(z)`` ignores z's values (own input)."""

    def __init__(self, dim: int = 2, image_shape: Sequence[int] | None = None, channels: int | str = 64,
                 layers: int = 6, in_channels: int = 1, out_channels: int = 1, upsample: str = "bilinear",
                 input_seed: int = 0, compression: float = 4.0, max_channels: int = 128):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"deep-decoder dim must be 2 or 3, got {dim}")
        if image_shape is None or len(image_shape) != dim:
            raise ValueError(f"deep-decoder needs the {dim}D image_shape (a DIP method fills it in from the problem)")
        if upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        if int(layers) < 1:
            raise ValueError("layers must be at least 1")
        if channels == "auto":
            channels = auto_channels(image_shape, int(layers), float(compression), int(max_channels), out_channels)
        k, d = int(channels), int(layers)
        self.dim, self.k, self.layers = dim, k, d
        self.image_shape = tuple(int(n) for n in image_shape)
        self.sizes = _sizes(self.image_shape, d)
        self.mode = ("bilinear" if dim == 2 else "trilinear") if upsample == "bilinear" else "nearest"
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        gen = torch.Generator().manual_seed(int(input_seed))
        self.register_buffer("b0", torch.randn((1, k, *self.sizes[0]), generator=gen))
        self.convs = nn.ModuleList(conv(k, k, 1) for _ in range(d))
        self.norms = nn.ModuleList(nn.GroupNorm(k, k) for _ in range(d))
        self.outc = conv(k, out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if tuple(z.shape[2:]) != self.image_shape:
            raise ValueError(f"deep-decoder was built for images {self.image_shape}, got input {tuple(z.shape[2:])}")
        h = self.b0
        for i, (c, nrm) in enumerate(zip(self.convs, self.norms)):
            h = c(h)
            if i + 1 < self.layers:
                kw = {"align_corners": False} if self.mode != "nearest" else {}
                h = F.interpolate(h, size=self.sizes[i + 1], mode=self.mode, **kw)
            h = nrm(torch.relu(h))
        out = self.outc(h)
        return out.expand(z.shape[0], *out.shape[1:]) if z.shape[0] != 1 else out

    @staticmethod
    def resolve_arch(arch: dict, image_shape: Sequence[int]) -> dict:
        """Fill in the problem's ``image_shape`` and resolve ``channels: auto`` (plain data stays plain)."""
        arch = dict(arch)
        arch["image_shape"] = [int(n) for n in image_shape]
        if arch.get("channels", "auto") == "auto":
            arch["channels"] = auto_channels(image_shape, int(arch.get("layers", 6)),
                                             float(arch.get("compression", 4.0)),
                                             int(arch.get("max_channels", 128)), int(arch.get("out_channels", 1)))
        return arch


def auto_channels(image_shape: Sequence[int], layers: int, compression: float, max_channels: int,
                  out_channels: int = 1) -> int:
    """Largest k <= max_channels with parameter_count(k, layers) <= pixels / compression (at least 2)."""
    budget = math.prod(int(n) for n in image_shape) / max(float(compression), 1e-9)
    k = 2
    while k < max_channels and parameter_count(k + 1, layers, out_channels) <= budget:
        k += 1
    return k
