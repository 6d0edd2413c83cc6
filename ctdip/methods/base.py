"""What every reconstruction method implements, classical or DIP.

The driver (``ctdip.workflows.reconstruct``) builds a :class:`~ctdip.core.problem.Problem`, builds
the method from the caller's parameters (resolved over the method's defaults and preset by
:func:`ctdip.methods.params.resolve`), makes the run folder, and calls::

    method = cls(**params)                 # method.params: the resolved parameters
    result = method.run(problem, ctx)

``ctx`` (:class:`~ctdip.dip.context.RunContext`) carries the run folder, seed, progress reporting
and stop/resume settings; the method returns a :class:`MethodResult` with images in the problem's
*scaled* units (the driver unscales, writes ``recon.tif``/``recon_es.tif``/``recon_best.tif``,
``summary.json`` and the previews). Metrics rows (``ctdip.dip.runs.METRIC_COLUMNS``) are appended
to ``metrics.csv`` by the method (the engine does it as it goes, so a killed run keeps its log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ctdip.dip.context import RunContext
from ctdip.methods.params import canonical, resolve

if TYPE_CHECKING:
    from ctdip.core.problem import Problem


@dataclass
class MethodResult:
    recon: torch.Tensor  # (z, y, x), scaled units
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. {"es": ..., "best": ...}
    summary: dict = field(default_factory=dict)  # iterations, es_iter, peak_iter, ...
    history: list[dict] = field(default_factory=list)  # metrics rows


class Method:
    """Base class: subclasses set ``name`` and ``defaults`` and implement :meth:`run`.

    ``Method(**params)`` resolves ``params`` over :meth:`param_defaults` and the method's preset
    (:func:`ctdip.methods.params.resolve`: unknown names refused, strings coerced, numbers
    checked), then runs :meth:`check`; the result is ``self.params``, the sources of its
    defaults ``self.sources``, the names the caller gave ``self.given``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "dip"  # "classical" or "dip"
    #: the method's own parameters and their defaults
    defaults: ClassVar[dict[str, Any]] = {}
    #: old parameter names that still work (old -> current), mapped by the resolver
    param_aliases: ClassVar[dict[str, str]] = {}

    def __init__(self, **params: Any):
        self.params, self.sources = resolve(self.name, self.param_defaults(), params,
                                            aliases=self.param_aliases, sources=self.param_sources())
        #: the parameters the caller gave (current names); a dimension preset never replaces them
        given = canonical(params, self.param_aliases, self.name)[0]
        self.given = {k for k, v in given.items() if v is not None}
        self.check(self.params)

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Every parameter the method accepts, with its default (before the preset)."""
        return dict(cls.defaults)

    @classmethod
    def param_sources(cls) -> dict[str, str]:
        """Sources of the defaults that the preset does not cite."""
        return {}

    def check(self, params: dict) -> None:
        """Method-specific checks of the resolved parameters (a UserError for a bad value)."""

    def preflight(self, problem: Problem) -> None:
        """Everything that can fail on the user's input before the first iteration (network name,
        weights and denoiser files, ...); the driver calls it before it creates the run folder."""

    def run(self, problem: Problem, ctx: RunContext) -> MethodResult:  # pragma: no cover - interface
        raise NotImplementedError
