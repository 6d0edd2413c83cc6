"""What every reconstruction method implements, classical or DIP.

The driver (``ctdip.workflows.reconstruct``) builds a :class:`~ctdip.core.problem.Problem`, resolves the method's
parameters (preset YAML, then CLI overrides), makes the run folder, and calls::

    method = cls(**params)
    result = method.run(problem, ctx)

``ctx`` carries the run folder, seed, progress reporting and stop/resume settings; the method
returns a :class:`MethodResult` with images in the problem's *scaled* units (the driver unscales,
writes ``recon.tif``/``recon_es.tif``/``recon_best.tif``, ``summary.json`` and the previews).
Metrics rows (``ctdip.dip.runs.METRIC_COLUMNS``) are appended to ``metrics.csv`` by the method (the
engine does it as it goes, so a killed run keeps its log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch


@dataclass
class RunContext:
    run: Any = None  # ctdip.dip.runs.RunFolder or None (library use without a folder)
    seed: int = 0
    resume: bool = False
    quiet: bool = False
    progress: Callable[[int, int, dict], None] | None = None  # (iteration, total, latest metrics)
    time_limit_s: float | None = None
    stop_early: bool = False
    extra: dict = field(default_factory=dict)

    def report(self, it: int, total: int, metrics: dict | None = None) -> None:
        if self.progress is not None:
            self.progress(it, total, metrics or {})


@dataclass
class MethodResult:
    recon: torch.Tensor  # (z, y, x), scaled units
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. {"es": ..., "best": ...}
    summary: dict = field(default_factory=dict)  # iterations, es_iter, peak_iter, ...
    history: list[dict] = field(default_factory=list)  # metrics rows


class Method:
    """Base class: subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "dip"  # "classical" or "dip"

    def __init__(self, **params: Any):
        self.params = params

    def preflight(self, problem) -> None:
        """Everything that can fail on the user's input before the first iteration (network name,
        weights and denoiser files, ...); the driver calls it before it creates the run folder."""

    def run(self, problem, ctx: RunContext) -> MethodResult:  # pragma: no cover - interface
        raise NotImplementedError
