"""The EDIP warm-start cache: pretrained U-Net weights per geometry and architecture.

:func:`ensure_warm_start` looks for ``<cache>/warmstarts/<geometry_key>_<archhash>.pt``
(:func:`warm_start_path`; the cache folder is ``$CTDIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/ctdip``
or ``~/.cache/ctdip``) and, when it is missing, announces and runs a short pretraining
(:data:`WARM_START_DEFAULTS`, :func:`ctdip.training.pretrain.pretrain_for_problem`) and caches the
result. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctdip.core.io import cache_dir
from ctdip.training.pretrain import PretrainConfig, pretrain_for_problem, problem_geometry
from ctdip.training.trainer import checkpoint_dir

#: Short pretraining run by :func:`ensure_warm_start` when no cached warm start exists.
WARM_START_DEFAULTS: dict[str, Any] = {"steps": 300, "batch_size": 8, "lr": 1e-3, "val_every": 100,
                                       "checkpoint_every": 0}


def arch_hash(arch: dict) -> str:
    """Stable short hash of an architecture dict."""
    return hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()[:12]


def warm_start_path(geometry, volume, arch: dict) -> Path:
    """The cache file of the warm start for ``(geometry, volume)`` and ``arch``."""
    from ctdip.networks import weights as W

    return cache_dir() / "warmstarts" / f"{W.geometry_key(geometry, volume)}_{arch_hash(arch)}.pt"


def ensure_warm_start(problem, arch: dict, quiet: bool = False, **opts: Any) -> Path:
    """Path of cached EDIP weights for ``problem``'s geometry and ``arch``; pretrain them if missing.

    ``opts`` override :data:`WARM_START_DEFAULTS` / :class:`PretrainConfig` fields (``steps``,
    ``batch_size``, ``lr``, ``seed`` ...); ``progress=`` and ``log=`` callables are passed on.
    The announcement goes to stderr unless ``quiet``.
    """
    geometry, volume = problem_geometry(problem)
    path = warm_start_path(geometry, volume, arch)
    if path.exists():
        return path
    progress = opts.pop("progress", None)
    log = opts.pop("log", None)
    fields = set(PretrainConfig.__dataclass_fields__)
    unknown = set(opts) - fields
    if unknown:
        raise TypeError(f"unknown pretraining options: {', '.join(sorted(unknown))}")
    cfg = replace(PretrainConfig(), **{**WARM_START_DEFAULTS, **opts})
    if not quiet:
        sys.stderr.write(f"no cached EDIP warm start for this geometry and network; pretraining one "
                         f"({cfg.total_steps} steps x {cfg.batch_size} ellipse phantoms), cached as {path}\n")
        sys.stderr.flush()
        from ctdip.core.estimate import StepEstimate

        estimate, shown = StepEstimate("warm-start pretraining steps", "step"), progress or _line_progress

        def progress(step: int, total: int, row: dict) -> None:  # the lines, and one estimate
            shown(step, total, row)
            estimate(step, total)
    pretrain_for_problem(problem, arch, path, cfg, progress=progress, log=log)
    shutil.rmtree(checkpoint_dir(path), ignore_errors=True)
    return path


def _line_progress(step: int, total: int, row: dict) -> None:
    """One stderr line per validation (used by :func:`ensure_warm_start` inside ``reconstruct``)."""
    if row.get("val_psnr") is not None:
        sys.stderr.write(f"  warm start step {step}/{total}: Shepp-Logan PSNR {row['val_psnr']:.2f} dB, "
                         f"{row.get('samples_per_s', 0):.1f} samples/s\n")
        sys.stderr.flush()
