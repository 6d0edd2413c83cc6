"""Classical reconstructions: FBP/FDK, CGLS and TV by the primal-dual hybrid gradient.

All work on the problem's scaled data ``y = A x`` (images O(1), see :mod:`ctdip.core.problem`).

**fbp** (registered ``fbp``, alias ``fdk``): ctdip's weighted filtered backprojection
(parallel/fan FBP, cone FDK), ``x = FBP_filter(y)``. Default filter: Hann-windowed ramp, measured
2.5-3.3 dB above Ram-Lak on sparse (20-60 views), 5 %-noise walnut scans (see the preset); the
Problem's initial reconstruction (DIP inputs) stays Ram-Lak.

**cgls** (conjugate gradients on the normal equations ``A^T A x = A^T y``, Hestenes–Stiefel)::

    x_0 = 0, r_0 = y, s_0 = p_0 = A^T y, gamma_0 = ||s_0||^2
    q_k = A p_k,  alpha_k = gamma_k / ||q_k||^2
    x_{k+1} = x_k + alpha_k p_k,   r_{k+1} = r_k - alpha_k q_k
    s_{k+1} = A^T r_{k+1},  gamma_{k+1} = ||s_{k+1}||^2,  p_{k+1} = s_{k+1} + (gamma_{k+1}/gamma_k) p_k

The iteration count is the regulariser (semi-convergence); with a reference the peak-PSNR iterate
is kept as ``recon_best``.

**pdhg-tv** (Chambolle & Pock 2011, Alg. 1) solves the normalised problem

    min_{x >= 0}  1/2 ||A~ x - y~||^2 + lambda TV(x),   A~ = A / ||A||,  y~ = y / ||A||,
    TV(x) = sum_i |(grad x)_i|_2   (isotropic, forward differences, Neumann boundary)

with ``K = [A~; grad]``, ``||K||^2 <= 1 + 8`` (2D) or ``1 + 12`` (3D) and
``tau = sigma = 0.99 / ||K||``::

    p <- (p + sigma (A~ xb - y~)) / (1 + sigma)                 prox of the data term's conjugate
    q <- q_hat / max(1, |q_hat|_2 / lambda),  q_hat = q + sigma grad xb     projection on |q_i| <= lambda
    x_new <- max(0, x - tau (A~^T p - div q))                    (grad^T = -div), nonnegativity
    xb <- 2 x_new - x,  x <- x_new

``lambda`` is ``tv_weight``: dividing A and y by ||A|| makes it independent of the geometry's
scale; the images are O(1) (the Problem's intensity scale). The default ``tv_weight: auto`` chooses
lambda without a reference by K-fold cross-validation on held-out views (:mod:`ctdip.methods.selection`):
the same solver with a view mask M (``1/2 ||M (A~ x - y~)||^2``, all folds as one batch), the
held-out residual of each weight of ``cv_grid``, then all views at the minimiser. A number fixes
lambda (see ``presets/methods/pdhg-tv.yaml``).

Each iteration of cgls and pdhg-tv appends a metrics row (iter, data_fit = ||A x - y||^2 / ||y||^2,
reg = 2 lambda TV(x) / ||y~||^2 (pdhg-tv), loss = data_fit + reg, PSNR every iteration and SSIM every ``log_every`` iterations when a
reference exists, time_s).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ctdip.dip.context import RunContext
from ctdip.errors import UserError
from ctdip.methods.base import Method, MethodResult
from ctdip.priors.tv import grad, grad_adjoint, tv  # noqa: F401  (grad, grad_adjoint re-exported)

if TYPE_CHECKING:
    from ctdip.core.problem import Problem


class ClassicalMethod(Method):
    """A classical method: its ``defaults`` < preset YAML < explicit params (``Method``), and the
    per-iteration loop with its metrics rows (:meth:`_iterate`)."""

    kind: ClassVar[str] = "classical"

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _metrics(problem, x: torch.Tensor, it: int, log_ssim: bool) -> dict:
        from ctdip.core import metrics

        row: dict[str, Any] = {"iter": it}
        if problem.reference is not None:
            ref = problem.reference
            row["psnr"] = metrics.psnr(x, ref)
            if log_ssim:
                row["ssim"] = metrics.ssim(x, ref)
        return row

    def _iterate(self, problem: Problem, ctx: RunContext, n_iter: int, step, x0: torch.Tensor) -> MethodResult:
        """Run ``step(k) -> (x, data_fit, reg)`` for k = 1..n_iter, logging a row per iteration."""
        log_every = int(self.params.get("log_every", 10))
        y_norm2 = float(problem.y.pow(2).sum())
        rows: list[dict] = []
        best = (-float("inf"), 0, None)
        t0 = time.perf_counter()
        x = x0
        from ctdip.core.estimate import StepEstimate

        estimate = StepEstimate("iterations", "it", enabled=not ctx.quiet)
        for k in range(1, n_iter + 1):
            x, fit, reg = step(k)
            log_ssim = k % log_every == 0 or k == n_iter
            row = self._metrics(problem, x, k, log_ssim)
            row.update(loss=fit / max(y_norm2, 1e-30) + reg, data_fit=fit / max(y_norm2, 1e-30), reg=reg,
                       time_s=time.perf_counter() - t0)
            rows.append(row)
            if ctx.run is not None:
                ctx.run.append_metrics([row])
            if "psnr" in row and row["psnr"] > best[0]:
                best = (row["psnr"], k, x.detach().clone())
            ctx.report(k, n_iter, row)
            estimate(k, n_iter)
            if ctx.time_limit_s is not None and time.perf_counter() - t0 > ctx.time_limit_s and k < n_iter:
                from ctdip.errors import TimeLimitReached

                raise TimeLimitReached(f"time limit of {ctx.time_limit_s:g} s reached at iteration {k} of "
                                       f"{n_iter} ({self.name} keeps no checkpoint; rerun with more time)")
        extras = {}
        summary: dict[str, Any] = {"iterations": n_iter}
        if best[2] is not None:
            extras["best"] = best[2]
            summary.update(peak_iter=best[1], peak_psnr=best[0])
        return MethodResult(recon=x.detach(), extras=extras, summary=summary, history=rows)


class FBP(ClassicalMethod):
    """Filtered backprojection (parallel/fan) or FDK (cone), ctdip's own torch implementation."""

    name = "fbp"
    defaults = {"filter": "hann"}

    def run(self, problem: Problem, ctx: RunContext) -> MethodResult:
        from ctdip.core import metrics
        from ctdip.core.operators import fbp

        t0 = time.perf_counter()
        filt = str(self.params["filter"])
        if filt == "ram-lak" and problem.x_init is not None:
            x = problem.x_init
        else:
            x = fbp(problem.y, problem.A.geometry, problem.volume, filter=filt).to(problem.device)
        ctx.report(1, 1, {})
        with torch.no_grad():
            fit = float((problem.A(x) - problem.y).pow(2).sum() / problem.y.pow(2).sum().clamp_min(1e-30))
        row: dict[str, Any] = {"iter": 1, "loss": fit, "data_fit": fit, "reg": 0.0,
                               "time_s": time.perf_counter() - t0}
        if problem.reference is not None:
            row["psnr"] = metrics.psnr(x, problem.reference)
            row["ssim"] = metrics.ssim(x, problem.reference)
        if ctx.run is not None:
            ctx.run.append_metrics([row])
        return MethodResult(recon=x, summary={"iterations": 1, "filter": filt}, history=[row])


class CGLS(ClassicalMethod):
    """Conjugate gradients on the normal equations (module docstring)."""

    name = "cgls"
    defaults = {"iterations": 30, "log_every": 10}

    def run(self, problem: Problem, ctx: RunContext) -> MethodResult:
        A, y = problem.A, problem.y
        x = torch.zeros(problem.volume.shape, device=problem.device)
        st: dict[str, Any] = {}
        with torch.no_grad():
            st["r"] = y.clone()
            st["s"] = A.T(y)
            st["p"] = st["s"].clone()
            st["gamma"] = float(st["s"].pow(2).sum())
            st["x"] = x

            def step(k: int):
                if st["gamma"] == 0.0:  # exact solution reached
                    return st["x"], float(st["r"].pow(2).sum()), 0.0
                q = A(st["p"])
                alpha = st["gamma"] / max(float(q.pow(2).sum()), 1e-30)
                st["x"] = st["x"] + alpha * st["p"]
                st["r"] = st["r"] - alpha * q
                s = A.T(st["r"])
                g_new = float(s.pow(2).sum())
                st["p"] = s + (g_new / st["gamma"]) * st["p"]
                st["gamma"] = g_new
                return st["x"], float(st["r"].pow(2).sum()), 0.0

            return self._iterate(problem, ctx, int(self.params["iterations"]), step, x)


class TVSolver:
    """Chambolle–Pock PDHG for ``min_{x>=0} 1/2 ||M (A~ x - y~)||^2 + lambda TV(x)`` (module docstring),
    stepped one iteration at a time.

    ``x0`` may carry leading batch dimensions (one problem per leading index, e.g. one per
    cross-validation fold); ``view_mask`` (broadcastable to ``A(x0)``, entries 0/1) selects the
    views M that enter the data term. On a masked-out view the data term is zero, so its
    conjugate is the indicator of ``p = 0``: the dual update becomes
    ``p <- M (p + sigma (A~ xb - y~)) / (1 + sigma)``. ``lam`` is a float or a tensor
    broadcastable to ``x0`` (one weight per batch entry).
    """

    def __init__(self, A, y: torch.Tensor, nrm: float, lam, x0: torch.Tensor, dims: tuple[int, ...],
                 view_mask: torch.Tensor | None = None):
        self.A, self.nrm, self.dims, self.mask = A, float(nrm) or 1.0, dims, view_mask
        self.yt = y / self.nrm
        self.lam = lam
        n_spatial = len(dims)
        L = (1.0 + (8.0 if n_spatial == 2 else 12.0)) ** 0.5
        self.tau = self.sigma = 0.99 / L
        self.x = x0.clone()
        self.xb = x0.clone()
        self.p = torch.zeros_like(A(x0))
        self.q = torch.zeros((n_spatial, *x0.shape), device=x0.device, dtype=x0.dtype)

    def step(self) -> torch.Tensor:
        sigma, tau = self.sigma, self.tau
        p = (self.p + sigma * (self.A(self.xb) / self.nrm - self.yt)) / (1.0 + sigma)
        self.p = p if self.mask is None else p * self.mask
        qh = self.q + sigma * grad(self.xb, self.dims)
        mag = qh.pow(2).sum(0).sqrt()
        lam = self.lam
        if isinstance(lam, torch.Tensor):
            self.q = qh / torch.clamp(mag / lam.clamp_min(1e-30), min=1.0) * (lam > 0)
        else:
            self.q = qh / torch.clamp(mag / max(lam, 1e-30), min=1.0) if lam > 0 else torch.zeros_like(qh)
        x_new = (self.x - tau * (self.A.T(self.p) / self.nrm + grad_adjoint(self.q, self.dims))).clamp_min(0)
        self.xb = 2 * x_new - self.x
        self.x = x_new
        return x_new


def tv_start(problem, init: str = "fbp") -> torch.Tensor:
    """PDHG-TV's starting image: the Problem's FBP/FDK clipped at 0 (``init='fbp'``) or zero."""
    if init == "fbp" and problem.x_init is not None:
        return problem.x_init.clamp_min(0).reshape(problem.volume.shape).clone()
    return torch.zeros(problem.volume.shape, device=problem.device)


def tv_dims(problem) -> tuple[int, ...]:
    """The axes TV differences run along: (y, x) for one slice, (z, y, x) for a volume."""
    return (1, 2) if problem.volume.shape[0] == 1 else (0, 1, 2)


class PDHGTV(ClassicalMethod):
    """Isotropic-TV reconstruction with nonnegativity by Chambolle–Pock PDHG (module docstring).

    ``tv_weight: auto`` (the preset default) chooses lambda without a reference by K-fold
    cross-validation over held-out views (:func:`ctdip.methods.selection.cv_tv_weight`), then
    reconstructs from all views at the chosen weight; grid, residuals and choice go into the
    summary (``tv_weight_choice``).
    """

    name = "pdhg-tv"
    defaults = {"iterations": 300, "tv_weight": "auto", "init": "fbp", "log_every": 10,
                "cv_folds": 5, "cv_grid": "1e-4:0.1:2"}

    def check(self, p: dict) -> None:
        if p["init"] not in ("fbp", "zero"):
            raise UserError(f"method 'pdhg-tv': init must be 'fbp' or 'zero', got '{p['init']}'")
        if int(p["cv_folds"]) < 2:
            raise UserError(f"method 'pdhg-tv': cv_folds must be at least 2, got {p['cv_folds']}")
        from ctdip.methods.selection import parse_grid

        parse_grid(p["cv_grid"], "pdhg-tv")

    def run(self, problem: Problem, ctx: RunContext) -> MethodResult:
        from ctdip.methods.selection import cv_tv_weight, parse_grid

        choice = None
        lam = self.params["tv_weight"]
        if lam == "auto":
            choice = cv_tv_weight(problem, parse_grid(self.params["cv_grid"], "pdhg-tv"), folds=int(self.params["cv_folds"]),
                                  iterations=int(self.params["iterations"]), init=str(self.params["init"]), ctx=ctx)
            lam = choice.chosen
        lam = float(lam)
        with torch.no_grad():
            x = tv_start(problem, str(self.params["init"]))
            solver = TVSolver(problem.A, problem.y, float(problem.opnorm), lam, x, tv_dims(problem))
            y_tilde2 = max(float(solver.yt.pow(2).sum()), 1e-30)

            def step(k: int):
                x_new = solver.step()
                fit = float((problem.A(x_new) - problem.y).pow(2).sum())
                # reg in the units of data_fit: loss = data_fit + reg = 2 * objective / ||y~||^2
                return x_new, fit, 2 * lam * tv(x_new, solver.dims) / y_tilde2

            res = self._iterate(problem, ctx, int(self.params["iterations"]), step, x)
        res.summary["tv_weight"] = lam
        if choice is not None:
            res.summary["tv_weight_choice"] = choice.as_dict()
        return res
