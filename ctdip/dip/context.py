"""What a run hands a method and the engine: its folder, seed, progress and stop/resume settings.

:class:`RunContext` is built by the driver (``ctdip.workflows.reconstruct``) or by a library
caller and passed to ``Method.run(problem, ctx)``, which hands it on to
:class:`ctdip.dip.engine.Engine`. :func:`seed_everything` is the one place the global random
generators are seeded for a run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from ctdip.dip.runs import RunFolder


@dataclass
class RunContext:
    """Settings of one run that are not method parameters."""

    run: RunFolder | None = None  # None: library use without a run folder
    seed: int = 0
    resume: bool = False
    quiet: bool = False
    progress: Callable[[int, int, dict], None] | None = None  # (iteration, total, latest metrics)
    time_limit_s: float | None = None
    stop_early: bool = False

    def report(self, it: int, total: int, metrics: dict | None = None) -> None:
        if self.progress is not None:
            self.progress(it, total, metrics or {})


def seed_everything(seed: int) -> None:
    """Seed the global generators a run may draw from: Python's ``random`` (``seed``), NumPy's
    global generator (``seed mod 2^32``) and torch's default generators (CPU and CUDA, ``seed``)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
