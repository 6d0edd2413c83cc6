"""Helpers shared by the denoiser-based splitting methods (admm, hqs, red)."""

from __future__ import annotations

from ctdip.errors import UserError
from ctdip.priors.denoisers import Denoiser, load_denoiser


def make_denoiser(method) -> Denoiser:
    """The denoiser named by the method's ``denoiser`` parameter (``learned``, ``tv``, ``bm3d`` or a file)."""
    spec = method.p.get("denoiser") or "tv"
    try:
        return load_denoiser(str(spec), device=method.problem.device)
    except UserError as e:
        if e.path is not None:  # the file is named first: "error: FILE: problem"
            raise
        raise UserError(f"--denoiser (method '{method.name}'): {e.message}") from None
