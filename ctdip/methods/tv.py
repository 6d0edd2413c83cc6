"""TV-regularised DIP, joint formulation (Liu et al. 2019 "DIP-TV"; Baguer et al. 2020; handbook Alg. 3).

    L(theta) = ||A f_theta(z) - y||^2 / ||y||^2 + lambda TV(f_theta(z)),
    TV(x) = mean_i sqrt(|(grad x)_i|^2 + eps)   (isotropic, forward differences, mean over voxels)
    theta_{t+1} = Adam(theta_t, grad_theta L(theta_t))

With ``input_skip: true`` the iterate is ``x = z + f_theta(z)`` (the network learns the correction of
its input image, the FBP/FDK with ``input: fbp``) instead of ``f_theta(z)``; it is ignored for a noise
or learnable input.

In 3D (``--mode 3d``) the ``params_3d:`` defaults of ``presets/methods/tv.yaml`` replace the 2D
ones for every parameter the caller does not give (FDK input with ``input_skip``, the ``3d-skip``
network), chosen on a tuning scan of ``benchmarks/bench_3d.py``; the console prints what the
benchmark measured (:func:`note_3d`), since a 3D run needs minutes to beat the FDK.

``lambda`` is ``tv_weight``. The TV term removes the late-iteration noise that vanilla DIP fits;
what it does not remove are the Adam oscillations of a constant step size (on the tuning CT slice
z = 50, 30 views, the constant-lr final iterate ended 2.35 dB below its peak), so the 2D preset
decays the learning rate (``lr_schedule: cosine``) and returns the output EMA (``output: ema``).

``tv_weight: auto`` chooses lambda without a reference: K-fold held-out-view cross-validation of
the convex PDHG-TV weight (:func:`ctdip.methods.selection.cv_tv_weight`), carried over to this loss by
:func:`ctdip.methods.selection.dip_tv_weight` times ``tv_factor`` (the network regularises too, so it wants
less TV than TV alone). ``output`` picks the returned image (:meth:`DIPMethod.returned_image`).

**recommended-tv** (``--method recommended-tv``) is this method with the preset chosen on the tuning
slices for quality per CPU-minute (``presets/methods/recommended-tv.yaml``); it was ``recommended``
before the learned-denoiser configuration of :mod:`ctdip.methods.admm` took that name.
"""

from __future__ import annotations

import sys

from ctdip.methods._dip import DIPMethod
from ctdip.methods.selection import CV_PARAMS, AutoTVWeight

#: what ``benchmarks/results/3d.md`` measured for the 3D defaults (64^3 walnut, 60 cone views, 2 %
#: noise, 2 CPU threads): iterations and training seconds until FDK + 3 dB, seconds per iteration
BENCH_3D = {"iterations_to_fdk3": 455, "seconds_to_fdk3": 305, "s_per_iteration": 0.68}


def note_3d(iterations: int) -> str:
    """The console note of a 3D TV-DIP run: what the 3D benchmark measured, and whether
    ``iterations`` are fewer than it needed to beat the FDK by 3 dB."""
    b = BENCH_3D
    msg = (f"note: at 64\N{SUPERSCRIPT THREE} from 60 cone views a 3D TV-DIP with the 3D defaults needed ~{b['iterations_to_fdk3']} iterations "
           f"(~{b['seconds_to_fdk3'] / 60:.0f} min on 2 CPU threads, {b['s_per_iteration']} s each) to beat FDK by 3 dB "
           "(benchmarks/results/3d.md)")
    if iterations < b["iterations_to_fdk3"]:
        msg += f"; {iterations} iterations are likely too few"
    return msg


class TVDIP(AutoTVWeight, DIPMethod):
    name = "tv"
    defaults = {"tv_weight": 0.02, **CV_PARAMS, "output": "final", "input_skip": False}

    def setup(self, problem, gen) -> None:
        ctx = getattr(self, "ctx", None)
        if problem.dim == 3 and ctx is not None and not ctx.quiet:
            sys.stderr.write(note_3d(int(self.params["iterations"])) + "\n")
        self.resolve_tv_weight(problem)

    def objective(self, it, gen):
        step = super().objective(it, gen)
        return step.plus(self.weight * self.tv(step.image))

    def extra_summary(self) -> dict:
        return {**self.tv_weight_summary(), "output": self.params["output"]}


class RecommendedTV(TVDIP):
    """TV-DIP with a CV-chosen weight, noise input, cosine learning rate and EMA output."""

    name = "recommended-tv"
