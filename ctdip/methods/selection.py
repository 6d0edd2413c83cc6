"""Reference-free choice of a regularisation weight: cross-validation on held-out views.

A user has no ground truth, so nothing a run returns may depend on a reference image. The
projections themselves can still judge a weight: a reconstruction that generalises predicts views
it was not fitted to. **K-fold view cross-validation** (the CT analogue of Wahba's held-out
prediction error): the views ``{0..V-1}`` are dealt into K interleaved folds
``H_j = {v : v mod K = j}``; for every weight ``lambda`` of a log grid and every fold j,

    x_j(lambda) = PDHG-TV on the views not in H_j  (same iterations, start and ||A|| as the final run)
    CV(lambda)  = sum_j ||A_{H_j} x_j(lambda) - y_{H_j}||^2 / ||y||^2

(every view is held out exactly once, so the denominators add up to ``||y||^2``). The chosen
weight minimises CV; the final image is then reconstructed from **all** views at that weight.
The data term is a sum over views, so the MAP weight of ``1/2 ||A x - y||^2 + lambda' TV`` does
not depend on the number of views and ``lambda`` carries over from the (K-1)/K fits to the full
one unchanged (both normalised by the full operator's ``||A||``).

The grid is scanned upwards and stops once CV has risen on two consecutive weights past its
minimum (CV is unimodal in practice: too small a weight fits noise, too large smooths edges
away). All folds are solved at once as a batch (one operator application per PDHG iteration).

:func:`cv_from_params` runs this CV with a method's ``cv_folds``, ``cv_grid`` and ``cv_iterations``.

**Denoiser strength** (``sigma: auto`` of ``admm``, :func:`denoiser_sigma`): the minimum of the CV
curve is the relative squared error with which the best TV reconstruction predicts views it did not
see, i.e. the noise level of the data plus what TV cannot represent. Its root
``eta = sqrt(min_lambda CV(lambda))`` is a reference-free noise level on the scale of the data, and
the denoiser is run at ``sigma = sigma_factor * eta`` (images are O(1) in the Problem's scaled
units, so a relative data noise maps to a relative image noise; the factor was chosen on the tuning
objects, see ``presets/methods/recommended.yaml``).

:func:`dip_tv_weight` carries a CV-chosen PDHG weight over to the TV-DIP loss of
:mod:`ctdip.methods._dip` (``||A x - y||^2 / ||y||^2 + w mean_i |grad x|_i``): multiplying the
PDHG objective by ``2 ||A||^2 / ||y||^2`` gives the same data term and ``w = 2 lambda N ||A||^2 /
||y||^2`` (N voxels), times a factor for the network's own regularisation (tuned on the tuning
slices, see the ``recommended`` preset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ctdip.errors import UserError


def parse_grid(spec, method: str = "pdhg-tv") -> list[float]:
    """``"lo:hi:factor"`` (a geometric grid lo, lo*factor, ... <= hi) or a list of weights."""
    if isinstance(spec, (list, tuple)):
        vals = [float(v) for v in spec]
    else:
        try:
            lo, hi, fac = (float(v) for v in str(spec).split(":"))
        except ValueError:
            raise UserError(f"method '{method}': cv_grid must be 'lo:hi:factor' (e.g. 1e-4:0.1:2), got '{spec}'") from None
        if not (lo > 0 and hi >= lo and fac > 1):
            raise UserError(f"method '{method}': cv_grid needs 0 < lo <= hi and factor > 1, got '{spec}'")
        n = int(math.floor(math.log(hi / lo) / math.log(fac) + 1e-9)) + 1
        vals = [lo * fac**k for k in range(n)]
    if not vals or any(v <= 0 for v in vals):
        raise UserError(f"method '{method}': cv_grid weights must be positive, got '{spec}'")
    return sorted(vals)


def view_folds(n_views: int, k: int) -> list[np.ndarray]:
    """K interleaved folds of view indices, ``H_j = {v : v mod K = j}`` (each spread over the scan)."""
    if not 2 <= k <= n_views:
        raise UserError(f"cv_folds must be between 2 and the number of views ({n_views}), got {k}")
    return [np.arange(j, n_views, k) for j in range(k)]


@dataclass
class WeightChoice:
    """The evidence behind a reference-free weight choice (written to summary.json)."""

    rule: str
    weights: list[float]
    residuals: list[float]
    chosen: float
    folds: int
    iterations: int
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rule": self.rule, "weights": self.weights, "cv_residuals": self.residuals,
                "chosen": self.chosen, "folds": self.folds, "iterations": self.iterations,
                "wall_s": round(self.wall_s, 3), **self.extra}



def choice_text(choice: dict) -> str:
    """One console line for a ``tv_weight_choice`` summary entry."""
    w, r = choice["weights"], choice["cv_residuals"]
    grid = " ".join(f"{a:.2g}:{b:.3g}" for a, b in zip(w, r))
    line = (f"tv_weight {choice['chosen']:.3g} by {choice['folds']}-fold held-out-view CV "
            f"(weight:residual {grid})")
    if "dip_tv_weight" in choice:
        line += f"; DIP tv_weight {choice['dip_tv_weight']:.3g} (x{choice['tv_factor']:g})"
    return line


def cv_tv_weight(problem, grid: list[float], *, folds: int = 5, iterations: int = 300, init: str = "fbp",
                 ctx=None) -> WeightChoice:
    """K-fold held-out-view cross-validation of the PDHG-TV weight (module docstring)."""
    import time

    from ctdip.methods.classical import TVSolver, tv_dims, tv_start

    t0 = time.perf_counter()
    A, y = problem.A, problem.y
    n_views = int(y.shape[0])
    held = view_folds(n_views, int(folds))
    mask = torch.ones((len(held), n_views, 1, 1), device=y.device, dtype=y.dtype)
    for j, h in enumerate(held):
        mask[j, torch.as_tensor(h, device=y.device)] = 0.0
    x0 = tv_start(problem, init)
    xb = x0.expand(len(held), *x0.shape).clone()
    dims = tuple(d + 1 for d in tv_dims(problem))  # batch dimension in front
    y2 = float(y.pow(2).sum().clamp_min(1e-30))
    weights: list[float] = []
    res: list[float] = []
    total = len(grid) * iterations
    with torch.no_grad():
        for lam in sorted(grid):
            solver = TVSolver(A, y, float(problem.opnorm), float(lam), xb, dims, view_mask=mask)
            for k in range(iterations):
                x = solver.step()
                if ctx is not None and k % 10 == 0:
                    ctx.report(len(weights) * iterations + k, total, {})
                    limit = getattr(ctx, "time_limit_s", None)
                    if limit is not None and time.perf_counter() - t0 > limit:
                        from ctdip.errors import TimeLimitReached

                        raise TimeLimitReached(f"time limit of {limit:g} s reached during the cross-validation "
                                               f"of tv_weight (weight {len(weights) + 1} of up to {len(grid)}); "
                                               "rerun with more time or a fixed tv_weight")
            r = (A(x) - y) * (1.0 - mask)
            weights.append(float(lam))
            res.append(float(r.pow(2).sum()) / y2)
            i_min = int(np.argmin(res))
            if len(res) - 1 - i_min >= 2 and res[-1] > res[-2] > res[i_min]:
                break  # risen twice past the minimum
    chosen = weights[int(np.argmin(res))]
    return WeightChoice(rule="K-fold held-out-view cross-validation (argmin of the held-out residual)",
                        weights=weights, residuals=res, chosen=chosen, folds=len(held), iterations=iterations,
                        wall_s=time.perf_counter() - t0)


def cv_from_params(problem, params: dict, method: str, ctx=None) -> WeightChoice:
    """:func:`cv_tv_weight` with a method's ``cv_grid``, ``cv_folds`` and ``cv_iterations``."""
    return cv_tv_weight(problem, parse_grid(params["cv_grid"], method), folds=int(params["cv_folds"]),
                        iterations=int(params["cv_iterations"]), ctx=ctx)


def noise_level2(choice: WeightChoice) -> float:
    """``eta^2 = min_lambda CV(lambda)``, the squared reference-free noise level (module docstring)."""
    return max(min(choice.residuals), 0.0)


def denoiser_sigma(choice: WeightChoice, factor: float) -> float:
    """``sigma = factor * sqrt(min CV residual)`` (module docstring); records the evidence in ``choice``."""
    eta = math.sqrt(noise_level2(choice))
    sigma = float(factor) * eta
    choice.extra.update(noise_level=eta, sigma_factor=float(factor), sigma=sigma)
    return sigma


def sigma_text(choice: dict) -> str:
    """One console line for a ``sigma_choice`` summary entry (with ``recommended``'s family switch)."""
    level = (f"noise level {choice['noise_level']:.3g} (root of the minimum {choice['folds']}-fold held-out-view "
             f"residual of PDHG-TV, at weight {choice['chosen']:.2g})")
    if choice.get("family") == "tv":
        return (f"{level} is above {choice['switch_noise']:g}: TV-DIP with tv_weight {choice['dip_tv_weight']:.3g} "
                "instead of the learned denoiser")
    return f"sigma {choice['sigma']:.3g} = {choice['sigma_factor']:g} x {level}"


def carry_tv_weight(problem, choice: WeightChoice, factor: float) -> float:
    """:func:`dip_tv_weight` of the CV-chosen PDHG weight, recorded in the choice's evidence."""
    weight = dip_tv_weight(problem, choice.chosen, factor)
    choice.extra.update(pdhg_weight=choice.chosen, tv_factor=float(factor), dip_tv_weight=weight)
    return weight


#: the parameters of a cross-validated weight, shared by every DIP method with ``tv_weight: auto``
#: or ``sigma: auto`` (tv, tv-hqs, edip, edip-fe, self-guided, aseq, admm, recommended)
CV_PARAMS = {"tv_factor": 1.0, "cv_folds": 5, "cv_grid": "1e-4:0.1:2", "cv_iterations": 300}


class CrossValidated:
    """Mixin of the DIP methods whose parameters include :data:`CV_PARAMS` (put it before the
    method's base class): checks ``cv_grid`` with the method's other parameters, and runs the
    held-out-view CV at most once per run (:meth:`cross_validate`), whichever of the method's
    ``auto`` parameters asks first; its evidence is ``self.choice``."""

    choice: WeightChoice | None = None

    def check(self, params: dict) -> None:
        super().check(params)
        parse_grid(params["cv_grid"], self.name)

    def cross_validate(self, problem) -> WeightChoice:
        """:func:`cv_from_params` with this method's parameters, once (later calls return it)."""
        if self.choice is None:
            self.choice = cv_from_params(problem, self.params, self.name, getattr(self, "ctx", None))
        return self.choice

    def auto_sigma(self, problem) -> float:
        """``sigma_factor`` times the CV noise level (:func:`denoiser_sigma`), evidence in ``self.choice``."""
        return denoiser_sigma(self.cross_validate(problem), float(self.params["sigma_factor"]))


class AutoTVWeight(CrossValidated):
    """Mixin of the DIP methods with a ``tv_weight`` in their loss (tv, tv-hqs, edip, edip-fe,
    self-guided, aseq): the weight is a number, or ``auto``, the K-fold held-out-view CV weight of
    PDHG-TV carried over to the DIP loss times ``tv_factor`` (:func:`cv_from_params`,
    :func:`carry_tv_weight`). The method calls :meth:`resolve_tv_weight` in its ``setup`` and merges
    :meth:`tv_weight_summary` into its summary; the evidence goes to ``summary.json`` as
    ``tv_weight_choice``. Methods whose TV term is optional add it with :meth:`plus_tv`."""

    weight: float = 0.0

    def resolve_tv_weight(self, problem) -> float:
        weight = self.params["tv_weight"]
        if weight == "auto":
            weight = carry_tv_weight(problem, self.cross_validate(problem), float(self.params["tv_factor"]))
        self.weight = float(weight)
        return self.weight

    def plus_tv(self, reg, image):
        """``reg + tv_weight TV(image)``; ``reg`` itself at weight 0 (the method without its TV
        term: nothing computed, the loss unchanged)."""
        return reg + self.weight * self.tv(image) if self.weight > 0 else reg

    def tv_weight_summary(self) -> dict:
        out = {"tv_weight": self.weight}
        if self.choice is not None and "dip_tv_weight" in self.choice.extra:  # the CV chose the weight
            out["tv_weight_choice"] = self.choice.as_dict()
        return out


def dip_tv_weight(problem, pdhg_weight: float, factor: float = 1.0) -> float:
    """The TV-DIP ``tv_weight`` equivalent to a PDHG-TV ``lambda`` (module docstring), times ``factor``."""
    n = int(np.prod(problem.volume.shape))
    y2 = float(problem.y.pow(2).sum().clamp_min(1e-30))
    return float(factor) * 2.0 * float(pdhg_weight) * n * float(problem.opnorm) ** 2 / y2
