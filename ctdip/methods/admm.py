"""DIP with a plug-and-play denoiser by ADMM (handbook Alg. 6; Cascarano et al. 2021,
Fermanian et al. 2021 "Regularizing the deep image prior with a learned denoiser").

Splitting x = f_theta(z) = u with a scaled dual w (objective terms are means over voxels)::

    theta-step (every iteration):  theta <- Adam(theta, grad_theta [ ||A f_theta(z) - y||^2/||y||^2
                                                                     + rho/2 mean (f_theta(z) - u + w)^2
                                                                     + tv_weight TV(f_theta(z)) ])
    every ``u_every`` iterations:  u <- D(x + w, sigma)          (x = f_theta(z), the current iterate)
                                   w <- w + x - u

With ``rho_growth`` gamma > 1 the penalty grows after every u-step and the denoiser strength falls
with it, the fixed-point-convergent schedule of Chan, Wang & Elgendy 2017 ("Plug-and-Play ADMM for
image restoration: fixed-point convergence and applications", IEEE TCI 3(1))::

    rho_{k+1} = min(gamma rho_k, rho_max),   sigma_k = sigma_0 sqrt(rho_0 / rho_k),
    w <- w rho_k / rho_{k+1}                  (the scaled dual is w = dual / rho)

Without it (gamma = 1) a learned denoiser that is not non-expansive lets w drift: on the tuning
walnut (20 views, sigma 0.1) the iterate peaked at 19.4 dB at 560 iterations and fell to -1.4 dB
at 2000 (``benchmarks/results/quality_tuning_runs.md``).

With ``dual_schedule: lr`` the dual step follows the network's learning-rate schedule s_t
(:func:`ctdip.dip.engine.lr_factor`; the relaxed dual step of Glowinski's ADMM, s_t in (0, 1])::

    w <- w + s_t (x - u)

so the dual moves no faster than the primal that answers it: once a cosine rate has decayed the
network can no longer follow u - w, and full dual steps then let w wind up against it.
``recommended`` uses it (chosen on the tuning CT slices, ``benchmarks/results/quality_tuning_runs.md``):
with it the EMA's data residual fell to the last iteration in all three tuning runs, where with
full dual steps it had its least value at iteration 1960 (Poisson, z = 70, 20 views; final 1.29 x)
or left the data (5 % Gaussian: final 350 x, 9.31 dB without the guard); returned 27.96 / 29.72 /
26.66 dB (z = 70 20 views, z = 50 30 views, z = 70 Gaussian) against 27.52 / 29.68 / 25.36 (27.52,
29.68: the same machine, the same run with ``dual_schedule: constant``; 25.36 from an earlier run).

``D(x, sigma)`` is the denoiser (``denoiser``: ``learned`` = the DRUNet shipped with ctdip, the
default; ``tv`` = prox_{sigma^2 TV}; ``bm3d``; or a trained CNN weight file), ``sigma`` its strength
in the image's scaled units (images O(1); for a CNN the Gaussian noise level it removes).
u starts at the network's initial output, w at 0.

``tv_weight`` (default 0: off) adds the TV term of :mod:`ctdip.methods.tv` to the network's loss,
which keeps the DIP from fitting the noise between denoiser updates; ``tv_weight: auto`` is chosen
as in ``tv`` (held-out-view CV of PDHG-TV, carried over times ``tv_factor``).

``guard`` F > 0 (default 0: off; ``recommended``: 3) is a reference-free divergence guard. Every
``guard_every`` iterations it evaluates the data residual ``r_t = ||A c_t - y||^2 / ||y||^2`` of the
candidate ``c_t`` the run returns (the output EMA with ``output: ema``, else the iterate) and keeps the
candidate of least residual, ``c* = c_{t*}``, ``t* = argmin_t r_t``. A fit that only improves keeps
``r_T`` near ``r_{t*}``; if at the end ``r_T > F r_{t*}`` the iterates have left the data they once
explained (ADMM with a learned, non-non-expansive denoiser can drift late) and ``c*`` is returned
instead of ``c_T``. EMA candidates start once the EMA's first iterate weighs < 5 % (``beta^t < 0.05``,
300 iterations at beta 0.99): a shorter run returns its final image. Nothing but the measured data is read; the evidence goes to ``summary.json``
(``divergence_guard``).

``sigma: auto`` chooses the strength without a reference: ``sigma = sigma_factor * eta`` with
``eta`` the noise level of the data estimated by held-out-view cross-validation of PDHG-TV
(:func:`ctdip.methods.selection.denoiser_sigma`; the evidence goes to ``summary.json`` as
``sigma_choice``). ``output: ema`` returns the output EMA instead of the final iterate.

**recommended** (``--method recommended``) is this method with the preset chosen on the tuning
objects for quality (``presets/methods/recommended.yaml``): the learned denoiser, ``sigma: auto``,
cosine learning-rate decay with ``dual_schedule: lr``, the EMA output, ``post_denoise: 0.75`` and
``guard: 3``.
"""

from __future__ import annotations

import torch

from ctdip.core.validate import choice
from ctdip.methods._dip import DIPMethod
from ctdip.methods._splitting import GUARD_PARAMS, SPLIT_ALIASES, GuardedOutput, make_denoiser
from ctdip.methods.selection import CV_PARAMS, CrossValidated, carry_tv_weight

#: ``dual_schedule``: the dual step is 1 (``constant``) or follows the learning-rate schedule (``lr``)
DUAL_SCHEDULES = ("constant", "lr")


class ADMM(GuardedOutput, CrossValidated, DIPMethod):
    name = "admm"
    defaults = {"denoiser": "learned", "sigma": 0.1, "rho": 0.5, "u_every": 5, "output": "final",
                "sigma_factor": 2.0, "rho_growth": 1.0, "rho_max": 50.0, "tv_weight": 0.0, "post_denoise": 0.0,
                "dual_schedule": "constant", **GUARD_PARAMS, **CV_PARAMS}
    param_aliases = SPLIT_ALIASES

    def check(self, params):
        super().check(params)
        choice(str(params["dual_schedule"]), "--set dual_schedule", DUAL_SCHEDULES)

    def dual_step(self, it: int) -> float:
        """The dual step s_t of ``w <- w + s_t (x - u)``: 1, or the learning-rate factor
        with ``dual_schedule: lr`` (module docstring)."""
        if self.params["dual_schedule"] == "lr":
            return self.lr_scale(it)
        return 1.0

    def setup(self, problem, gen):
        self.denoiser = make_denoiser(self)
        self.sigma, self.weight = self.params["sigma"], self.params["tv_weight"]
        if self.sigma == "auto":  # one cross-validation serves both (cross_validate runs it once)
            self.sigma = self.auto_sigma(problem)
        if self.weight == "auto":
            self.weight = carry_tv_weight(problem, self.cross_validate(problem), float(self.params["tv_factor"]))
        self.sigma, self.weight = float(self.sigma), float(self.weight)
        self.sigma0, self.rho = self.sigma, float(self.params["rho"])
        eta = self.sigma0 / float(self.params["sigma_factor"])  # the CV noise level for sigma: auto
        self.sigma_post = float(self.params["post_denoise"]) * eta
        with torch.no_grad():
            self.u = self.network(self.z).detach().clone()
        self.w = torch.zeros_like(self.u)
        self.start_guard()

    def objective(self, it, gen):
        step = super().objective(it, gen)
        reg = 0.5 * self.rho * ((step.image - self.u + self.w) ** 2).mean()
        if self.weight:
            reg = reg + self.weight * self.tv(step.image)
        return step.plus(reg)

    @torch.no_grad()
    def after_step(self, it, image, gen):
        self.watch(it, image)
        if it % int(self.params["u_every"]) == 0:
            self.u = self.denoiser(image + self.w, self.sigma)
            self.w = self.w + self.dual_step(it) * (image - self.u)
            growth = float(self.params["rho_growth"])
            if growth > 1.0:  # Chan et al. 2017 (module docstring)
                rho = min(self.rho * growth, max(float(self.params["rho_max"]), self.rho))
                self.w = self.w * (self.rho / rho)
                self.rho = rho
                self.sigma = self.sigma0 * (float(self.params["rho"]) / rho) ** 0.5

    def returned_image(self, res):
        """The ``output`` image (the guard's pick if the run diverged: :class:`GuardedOutput`),
        through the denoiser at ``sigma_post`` when ``post_denoise`` is on."""
        image = super().returned_image(res)
        if self.sigma_post > 0:
            with torch.no_grad():
                image = self.denoiser(image, self.sigma_post)
        return image

    def method_state(self):
        return {"u": self.u, "w": self.w, "rho": self.rho, "sigma": self.sigma, **self.guard_state()}

    def load_method_state(self, state):
        self.u, self.w = state["u"].to(self.problem.device), state["w"].to(self.problem.device)
        self.load_guard_state(state)
        self.rho = float(state.get("rho", self.params["rho"]))
        self.sigma = float(state.get("sigma", self.sigma0))

    def extra_summary(self):
        out = {"denoiser": getattr(self.denoiser, "name", str(self.params["denoiser"])), "sigma": self.sigma0,
               "output": self.params["output"]}
        if self.sigma_post > 0:
            out["post_denoise"] = {"factor": float(self.params["post_denoise"]), "sigma": self.sigma_post}
        if float(self.params["rho_growth"]) > 1.0:
            out.update(final_rho=self.rho, final_sigma=self.sigma)
        if self.weight:
            out["tv_weight"] = self.weight
        out.update(self.guard_summary())
        if self.choice is not None:  # one CV: the evidence of sigma and/or of the TV weight it gave
            evidence = self.choice.as_dict()
            if self.params["sigma"] == "auto":
                out["sigma_choice"] = evidence
            if "dip_tv_weight" in evidence:
                out["tv_weight_choice"] = evidence
        return out


class Recommended(ADMM):
    """ADMM with the learned denoiser at a CV-chosen strength, cosine learning rate, EMA output and
    one final denoiser pass (``post_denoise`` 0.75: ``D(x_ema, 0.75 eta)``); on noisy data (CV noise
    level above ``switch_noise``) TV-DIP with the CV-chosen weight instead.

    The switch, chosen on the tuning objects: with the noise level ``eta`` of the held-out-view CV
    (:func:`ctdip.methods.selection.denoiser_sigma`) at 0.017-0.026 (head-CT slices, Poisson 1e4
    photons) the learned denoiser by ADMM returned 0.7-0.8 dB more than TV-DIP, while at 0.074-0.123
    (the walnut phantom, 5 % Gaussian noise, sigma = 0.15-0.25) its iterates collapsed late in every
    20-view run (3 of 3) and ended 0.4-0.8 dB below TV-DIP at 30 views
    (``benchmarks/results/quality_tuning_runs.md``, ``stopping.md``). Above ``switch_noise`` (0.05, between the two
    groups) the run is TV-DIP: the denoiser is off (``rho`` 0) and ``tv_weight`` is the CV weight
    carried over times ``tv_factor``, the objective of ``recommended-tv``. The choice and its
    evidence are in ``summary.json`` (``sigma_choice.family``).

    In the denoiser family the divergence guard (``guard`` 3, :class:`ctdip.methods._splitting.GuardedOutput`) returns the
    EMA of least data residual when the final EMA's residual is more than 3 times that: on the
    tuning CT slice z = 70 with 5 % Gaussian noise (eta 0.037, below the switch) the iterates left
    the data after about 1500 iterations (final/least residual 350; 9.31 dB returned without the
    guard, 25.36 with it), while the healthy Poisson runs end within 1.5 times their least
    residual, where the guard changes nothing. Those runs took full dual steps; with the preset's
    ``dual_schedule: lr`` no tuning run needed the guard (least residual at the last iteration), so
    it stays as a safety net."""

    name = "recommended"
    defaults = {**ADMM.defaults, "switch_noise": 0.05, "tv_factor": 0.25}

    def setup(self, problem, gen):
        super().setup(problem, gen)
        self.family = "denoiser"
        if self.choice is not None and self.choice.extra.get("noise_level", 0.0) > float(self.params["switch_noise"]):
            self.family = "tv"
            self.sigma_post = 0.0  # no denoiser in the TV family
            self.guard.factor = 0.0  # nor the ADMM divergence guard
            self.weight = carry_tv_weight(problem, self.choice, float(self.params["tv_factor"]))
        if self.choice is not None:
            self.choice.extra.update(family=self.family, switch_noise=float(self.params["switch_noise"]))

    def objective(self, it, gen):
        if self.family == "denoiser":
            return super().objective(it, gen)
        step = DIPMethod.objective(self, it, gen)
        return step.plus(self.weight * self.tv(step.image))

    @torch.no_grad()
    def after_step(self, it, image, gen):
        if self.family == "denoiser":  # the divergence guard watches the ADMM iterates only
            super().after_step(it, image, gen)

    def extra_summary(self):
        return {**super().extra_summary(), "family": self.family}
