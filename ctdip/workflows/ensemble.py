"""``--set ensemble=N``: one DIP reconstruction from N network seeds, their mean and spread.

A DIP's returned image depends on the network's random initialisation: on the tuning walnut
(128², 5 % Gaussian noise) the shipped ``recommended`` default returned 21.29-21.49 dB at 20 views
and 21.20-21.91 dB at 30 views over seeds 0-2 (``benchmarks/results/quality_tuning_seeds.md``).
Each member's error is partly its own; the pixel-wise mean of the members' returned images keeps
what they share (the image the data and the architecture agree on)::

    x_ens = (1/N) sum_k x_k,      s = sqrt( sum_k (x_k - x_ens)^2 / (N - 1) )

with x_k the returned image of the member of seed ``seed + k``. ``recon.tif`` is x_ens and
``recon_std.tif`` the per-voxel spread s, a map of where the reconstruction is uncertain (large
where the seeds disagree: fine structure the views do not pin down). On the tuning walnut three
members returned 21.54 and 22.06 dB (20, 30 views) against 21.38 and 21.51 for one member on
average. An ensemble costs one run per member.

Layout of an ensemble's run folder ``RUN``::

    RUN/config.yaml, summary.json, recon.tif, recon_std.tif, preview.png   (as any run)
    RUN/members/seed<S>/    one run folder per member (config.yaml, metrics.csv, checkpoint.pt,
                            recon.tif, summary.json), S = seed, seed + 1, ..., seed + N - 1

Members run one after another behind one progress bar; a reference-free choice by held-out-view
cross-validation (``tv_weight: auto``, ``sigma: auto``) is made once, by the first member, and
reused by the others (the same parameters and data give the same choice). A killed or time-limited ensemble
continues with ``--resume RUN`` at the member it was in, from that member's checkpoint; finished
members are read back, not rerun. ``--time-limit`` bounds the whole ensemble.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ctdip.errors import TimeLimitReached

MEMBERS = "members"


def member_path(run_path: Path, seed: int) -> Path:
    return Path(run_path) / MEMBERS / f"seed{int(seed)}"


def run_ensemble(make_member: Callable[[], object], n: int, problem, ctx, config: dict, *,
                 write_member: Callable) -> "object":
    """Run ``n`` members (``make_member()`` -> a DIP method with ``ensemble: 1``) with seeds
    ``ctx.seed + k`` into ``ctx.run``'s ``members/`` folder and return their mean as a
    :class:`~ctdip.methods.base.MethodResult` (``extras['std']``: the spread; module docstring).

    ``write_member(problem, result, member_run, wall_s)`` writes a finished member's recon.tif and
    summary.json (the driver's own writer, so a member folder is an ordinary run folder)."""
    from ctdip.dip.runs import RunFolder
    from ctdip.methods.base import MethodResult

    t0 = time.perf_counter()
    images, members = [], []
    shared_cv = None  # the members' parameters are the same: one held-out-view CV serves them all
    for k in range(int(n)):
        seed = int(ctx.seed) + k
        run = RunFolder(member_path(ctx.run.path, seed))
        if run.is_finished():  # a resumed ensemble: this member is done
            images.append(read_member(run, problem))
            members.append(member_entry(seed, run, run.read_summary()))
            continue
        run.create(exist_ok=True)
        resume = run.file("checkpoint.pt").exists()
        run.write_config(member_config(config, seed, k, int(n), ctx.run.path))
        limit = None
        if ctx.time_limit_s is not None:
            limit = float(ctx.time_limit_s) - (time.perf_counter() - t0)
            if limit <= 0:
                raise TimeLimitReached(f"time limit of {ctx.time_limit_s:g} s reached before ensemble member "
                                       f"{k + 1} of {n}; continue with --resume")
        method = make_member()
        method.preflight(problem)
        if shared_cv is not None and hasattr(method, "cross_validate"):
            method.choice = shared_cv
        sub = dataclasses.replace(ctx, run=run, seed=seed, resume=resume, time_limit_s=limit,
                                  progress=_offset_progress(ctx, k, int(n)))
        t_member = time.perf_counter()
        try:
            result = method.run(problem, sub)
        except KeyboardInterrupt as e:  # the command that continues is --resume of the ensemble
            if hasattr(e, "run_path"):
                e.run_path = ctx.run.path
            raise
        shared_cv = getattr(method, "choice", None) or shared_cv
        summary = write_member(problem, result, run, time.perf_counter() - t_member)
        images.append(result.recon.detach().float().cpu().reshape(problem.volume.shape))
        members.append(member_entry(seed, run, summary))
    stack = torch.stack(images).to(problem.device)
    mean = stack.mean(dim=0)
    std = stack.std(dim=0, unbiased=True)
    spread = float(std.mean() / mean.abs().mean().clamp_min(1e-12))
    summary = {"iterations": members[0].get("iterations"),
               "ensemble": {"members": members, "n": int(n),
                            "rule": "recon.tif = mean of the members' returned images, recon_std.tif = their "
                                    "standard deviation (ddof 1) per voxel; relative_spread = mean std / mean |recon|",
                            "relative_spread": spread}}
    return MethodResult(recon=mean, extras={"std": std}, summary=summary, history=[])


def member_config(config: dict, seed: int, index: int, n: int, ensemble_path: Path) -> dict:
    """The ensemble's config.yaml as a member's: its seed, ``ensemble: 1`` (so ``--resume`` of the
    member folder alone continues that one run) and where it belongs."""
    out = {**config, "seed": int(seed), "ensemble_member": {"index": index, "of": n, "ensemble": str(ensemble_path)}}
    out["params"] = {**(config.get("params") or {}), "ensemble": 1}
    out["overrides"] = {k: v for k, v in (config.get("overrides") or {}).items() if k != "ensemble"}
    return out


def read_member(run, problem) -> torch.Tensor:
    """A finished member's recon.tif back in the problem's scaled units."""
    from ctdip.core.io import read_tiff

    arr = read_tiff(run.file("recon.tif"))
    return torch.from_numpy(arr.reshape(problem.volume.shape) * np.float32(problem.intensity_scale))


def member_entry(seed: int, run, summary: dict) -> dict:
    entry = {"seed": int(seed), "run": str(run.path), "iterations": summary.get("iterations"),
             "wall_time_s": summary.get("wall_time_s")}
    if "returned" in summary:  # scored against the reference (never used to choose anything)
        entry["returned"] = summary["returned"]
    return entry


def _offset_progress(ctx, k: int, n: int):
    """Member k's progress on the ensemble's bar: iteration ``k * total + it`` of ``n * total``."""
    if ctx.progress is None:
        return None

    def progress(it: int, total: int, metrics: dict) -> None:
        ctx.progress(k * total + it, n * total, {**metrics, "member": f"{k + 1}/{n}"})

    return progress
