"""Method registry: maps ``--method`` names to classes (imported lazily)."""

from __future__ import annotations

import importlib

from ctdip.errors import UserError

# name -> "module:Class"
REGISTRY: dict[str, str] = {
    # classical
    "fbp": "ctdip.methods.classical:FBP",
    "cgls": "ctdip.methods.classical:CGLS",
    "pdhg-tv": "ctdip.methods.classical:PDHGTV",
    # deep image prior
    "vanilla": "ctdip.methods.vanilla:Vanilla",
    "tv": "ctdip.methods.tv:TVDIP",
    "tv-hqs": "ctdip.methods.tv_hqs:TVHQS",
    "admm": "ctdip.methods.admm:ADMM",
    "hqs-denoiser": "ctdip.methods.hqs:HQSDenoiser",
    "red": "ctdip.methods.red:RED",
    "self-guided": "ctdip.methods.self_guided:SelfGuided",
    "aseq": "ctdip.methods.aseq:ASeq",
    "edip": "ctdip.methods.edip:EDIP",
    "edip-fe": "ctdip.methods.edip:EDIPFrozenEncoder",
    "subspace-dip": "ctdip.methods.subspace_dip:SubspaceDIP",
    # the quality recommendations: DIP + learned denoiser by ADMM at a reference-free strength
    # (presets/methods/recommended.yaml) and TV-DIP at a reference-free weight (recommended-tv.yaml)
    "recommended": "ctdip.methods.admm:Recommended",
    "recommended-tv": "ctdip.methods.tv:RecommendedTV",
}
ALIASES = {"hqs": "hqs-denoiser", "sg-dip": "self-guided", "fdk": "fbp"}


def method_names() -> list[str]:
    return list(REGISTRY)


def method_groups() -> dict[str, list[str]]:
    """``{"classical": [...], "dip": [...]}``: the registered names by family (classical methods
    live in ``ctdip.methods.classical``), without importing any method module."""
    out: dict[str, list[str]] = {"classical": [], "dip": []}
    for name, target in REGISTRY.items():
        out["classical" if target.startswith("ctdip.methods.classical:") else "dip"].append(name)
    return out


def get_method(name: str):
    """The class registered for ``name``; a UserError naming the known methods otherwise."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)
