"""Network weight files: one plain dict, saved atomically, loaded with ``weights_only=True``.

Format ``ctdip-weights/1``::

    {"format": "ctdip-weights/1", "kind": "unet" | "denoiser", "arch": {...}, "state_dict": {...},
     "geometry_key": str | None, "data_spec": dict | None, "ctdip_version": str, "extra": dict}

``arch`` rebuilds the network with :func:`ctdip.networks.build_network`. ``geometry_key`` ties a
warm start (EDIP) to the acquisition geometry and volume grid it was trained for.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from ctdip.core.io import atomic_write_bytes
from ctdip.errors import UserError

FORMAT = "ctdip-weights/1"
KINDS = ("unet", "denoiser")


def geometry_key(geometry: Any, volume: Any) -> str:
    """A stable 16-hex-digit key of an acquisition geometry and a volume grid."""
    g = geometry.hash() if hasattr(geometry, "hash") else str(geometry)
    v = volume.hash() if hasattr(volume, "hash") else str(volume)
    return hashlib.sha256(f"{g}|{v}".encode()).hexdigest()[:16]


def problem_geometry_key(problem: Any) -> str | None:
    """The geometry key of a Problem: ``problem.info['geometry_key']`` if the driver set one,
    else computed from the operator's geometry (``problem.A.geometry``) and ``problem.volume``."""
    info = getattr(problem, "info", None) or {}
    if info.get("geometry_key"):
        return str(info["geometry_key"])
    geom = getattr(getattr(problem, "A", None), "geometry", None)
    if geom is None:
        return None
    return geometry_key(geom, problem.volume)


def save_weights(
    path: str | Path,
    state_dict: dict,
    arch: dict,
    *,
    kind: str = "unet",
    geometry_key: str | None = None,
    data_spec: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a weight file atomically (tensors moved to CPU)."""
    from ctdip import __version__

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    obj = {
        "format": FORMAT,
        "kind": kind,
        "arch": dict(arch),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "geometry_key": geometry_key,
        "data_spec": data_spec,
        "ctdip_version": __version__,
        "extra": dict(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_weights(path: str | Path, kind: str | None = None) -> dict:
    """Read a weight file written by :func:`save_weights`; UserError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError("weights file not found", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/IO failure is the file's fault
        raise UserError(f"not a readable ctdip weights file ({type(e).__name__})", path=path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"not a ctdip weights file (expected format '{FORMAT}')", path=path)
    for key in ("arch", "state_dict"):
        if not isinstance(obj.get(key), dict):
            raise UserError(f"weights file has no '{key}' mapping", path=path)
    if kind is not None and obj.get("kind") != kind:
        raise UserError(f"weights file holds a '{obj.get('kind')}' network, expected '{kind}'", path=path)
    return obj


def build_from_weights(obj: dict, path: str | Path | None = None) -> torch.nn.Module:
    """Build the network of a loaded weight file and load its state dict."""
    from ctdip.networks import build_network

    net = build_network(obj["arch"])
    try:
        net.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise UserError(f"weights do not match their architecture: {str(e).splitlines()[0]}", path=path) from None
    return net
