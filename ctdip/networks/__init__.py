"""Networks: a registry of architectures built from plain-data ``arch`` dicts, and YAML presets.

An ``arch`` is plain data (it goes into checkpoints and weight files)::

    {"name": "unet", "dim": 2, "in_channels": 1, "out_channels": 1,
     "channels": [32, 32, 64, 64, 128], "skip_channels": [4, 4, 4, 4, 4], "sigmoid": false}

``build_network(arch)`` looks ``arch["name"]`` up in :data:`NETWORKS` ("module:Class", imported
lazily) and calls the class with the remaining keys. ``network_preset(name_or_path, dim)`` reads
``presets/networks/<name>.yaml`` (or a user YAML file) and returns an ``arch``.

Presets: ``paper`` (6 scales x 128 channels, skips [0,0,0,0,4,4]; handbook / EDIP), ``light``
(the CPU default, 5 scales), ``tiny`` (tests), ``3d`` (EDIP's 3D walnut U-Net: 3 scales, no skips),
``deep-decoder`` (Heckel & Hand 2019, 2D or 3D, ``ctdip.networks.deep_decoder``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import yaml

from ctdip.core.io import preset_dir
from ctdip.errors import UserError

NETWORKS: dict[str, str] = {
    "unet": "ctdip.networks.unet:UNet",
    "drunet": "ctdip.networks.drunet:DRUNet",
    "deep-decoder": "ctdip.networks.deep_decoder:DeepDecoder",
}

PRESET_DIR = preset_dir("networks")
DEFAULT_PRESET = "light"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_arch(arch: dict, image_shape) -> dict:
    """``arch`` completed for a problem's image shape: a network class with a ``resolve_arch``
    static method (the deep decoder: its input size and ``channels: auto``) fills in its keys; any
    other arch is returned unchanged."""
    name = arch.get("name") if isinstance(arch, dict) else None
    if name not in NETWORKS:
        return arch
    module, cls_name = NETWORKS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    return cls.resolve_arch(arch, tuple(image_shape)) if hasattr(cls, "resolve_arch") else arch


def build_network(arch: dict) -> torch.nn.Module:
    """Build the network described by the plain-data ``arch`` dict (see module docstring)."""
    if not isinstance(arch, dict) or "name" not in arch:
        raise UserError(f"network architecture must be a mapping with a 'name' key, got {arch!r}")
    name = arch["name"]
    if name not in NETWORKS:
        raise UserError(f"unknown network '{name}'; choose one of: {', '.join(NETWORKS)}")
    module, cls_name = NETWORKS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad parameters for network '{name}': {e}") from None


def network_preset(name_or_path: str | Path, dim: int = 2, **overrides) -> dict:
    """The ``arch`` dict of a preset name (``paper``, ``light``, ``tiny``, ``3d``) or a YAML file.

    ``dim`` sets the spatial dimension (a preset file may pin it, e.g. ``3d``); ``overrides``
    replace keys (e.g. ``in_channels=2``).
    """
    p = Path(str(name_or_path))
    if p.suffix in (".yaml", ".yml"):
        path = p
        if not path.exists():
            raise UserError("network preset file not found", path=path)
    else:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise UserError(
                f"unknown network preset '{name_or_path}'; choose one of: {', '.join(preset_names())} "
                "or give a YAML file")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"bad YAML: {' '.join(str(e).split())}", path=path) from None
    arch = dict(data.get("arch", data))
    arch.pop("description", None)
    arch.setdefault("name", "unet")
    if "dim" not in arch or data.get("dim_fixed") is not True:
        arch["dim"] = int(dim)
    arch.update(overrides)
    return arch


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["NETWORKS", "build_network", "resolve_arch", "network_preset", "preset_names", "count_parameters"]
