"""Helpers shared by the splitting methods (admm, hqs-denoiser, red, tv-hqs): the splitting
period's old name, the denoiser they name, and the reference-free divergence guard of admm and red
(:class:`GuardedOutput`).

Their splitting period, the number of network (theta) steps between two updates of the auxiliary
image u, is the parameter ``u_every``; it was called ``inner`` in admm, hqs-denoiser and red,
and that name still works (:data:`SPLIT_ALIASES`)."""

from __future__ import annotations

import torch

from ctdip.errors import UserError
from ctdip.priors.denoisers import Denoiser, load_denoiser

#: old name -> current name of the splitting methods' parameters (mapped by ctdip.methods.params)
SPLIT_ALIASES = {"inner": "u_every"}

#: the guard's parameters (:class:`GuardedOutput`): ``guard`` F (0: off), checked every ``guard_every``
GUARD_PARAMS = {"guard": 0.0, "guard_every": 10}


def make_denoiser(method) -> Denoiser:
    """The denoiser named by the method's ``denoiser`` parameter (``learned``, ``tv``, ``bm3d`` or a file)."""
    spec = method.params.get("denoiser") or "tv"
    try:
        return load_denoiser(str(spec), device=method.problem.device)
    except UserError as e:
        if e.path is not None:  # the file is named first: "error: FILE: problem"
            raise
        raise UserError(f"--denoiser (method '{method.name}'): {e.message}") from None


class GuardedOutput:
    """Mixin of a DIP method with the reference-free divergence guard (``guard`` F > 0; the rule is
    in :mod:`ctdip.methods.admm`'s docstring): every ``guard_every`` iterations :meth:`watch` offers
    the candidate the run would return (the output EMA with ``output: ema``, else the iterate) with its
    data residual, and :meth:`returned_image` returns the candidate of least residual instead of the
    final one when that has grown more than F times. The method calls :meth:`start_guard` in
    ``setup``, :meth:`watch` in ``after_step``, and adds :meth:`guard_state` / :meth:`guard_summary`
    to its checkpoint state and summary."""

    def start_guard(self) -> None:
        self.guard = ResidualGuard(float(self.params["guard"]), int(self.params["guard_every"]))

    def watch(self, it: int, image: torch.Tensor) -> None:
        if not self.guard.on or it % self.guard.every:
            return
        if self.params["output"] == "ema":
            ema = self.engine.ema
            if not ema.ready(it):
                return
            candidate = ema.value
        else:
            candidate = image
        self.guard.offer(it, candidate, self.full_data_fit(candidate))

    def returned_image(self, res) -> torch.Tensor:
        image = super().returned_image(res)
        if self.guard.on:
            image = self.guard.choose(image, self.full_data_fit(image))
        return image

    def guard_state(self) -> dict:
        return {"guard": self.guard.state_dict()}

    def load_guard_state(self, state: dict) -> None:
        if "guard" in state:
            self.guard.load_state_dict(state["guard"], self.problem.device)

    def guard_summary(self) -> dict:
        return {"divergence_guard": self.guard.evidence()} if self.guard.on else {}


class ResidualGuard:
    """The divergence guard of :class:`GuardedOutput`: the candidate of least data
    residual, returned instead of the final one when that has grown more than ``factor`` times."""

    def __init__(self, factor: float, every: int):
        self.factor, self.every = float(factor), max(1, int(every))
        self.best, self.best_iter, self.image = float("inf"), None, None
        self.final: float | None = None
        self.used = False

    @property
    def on(self) -> bool:
        return self.factor > 0

    def offer(self, it: int, candidate: torch.Tensor, residual: float) -> None:
        if residual < self.best:
            self.best, self.best_iter, self.image = residual, it, candidate.detach().clone()

    def choose(self, final: torch.Tensor, residual: float) -> torch.Tensor:
        self.final = residual
        self.used = self.image is not None and residual > self.factor * self.best
        return self.image if self.used else final

    def evidence(self) -> dict:
        return {"rule": f"return the candidate of least data residual ||A x - y||^2/||y||^2 (checked every "
                        f"{self.every} iterations) if the final one's is > {self.factor:g} x that",
                "factor": self.factor, "min_residual": None if self.image is None else self.best,
                "min_iter": self.best_iter, "final_residual": self.final, "used": self.used}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_iter": self.best_iter, "image": self.image}

    def load_state_dict(self, state: dict, device) -> None:
        self.best, self.best_iter = float(state["best"]), state["best_iter"]
        self.image = None if state["image"] is None else state["image"].to(device)
