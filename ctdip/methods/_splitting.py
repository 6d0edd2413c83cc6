"""Helpers shared by the splitting methods (admm, hqs-denoiser, red, tv-hqs).

Their splitting period, the number of network (theta) steps between two updates of the auxiliary
image u, is the parameter ``u_every``; it was called ``inner`` in admm, hqs-denoiser and red,
and that name still works (:data:`SPLIT_ALIASES`)."""

from __future__ import annotations

from ctdip.errors import UserError
from ctdip.priors.denoisers import Denoiser, load_denoiser

#: old name -> current name of the splitting methods' parameters (mapped by ctdip.methods.params)
SPLIT_ALIASES = {"inner": "u_every"}


def make_denoiser(method) -> Denoiser:
    """The denoiser named by the method's ``denoiser`` parameter (``learned``, ``tv``, ``bm3d`` or a file)."""
    spec = method.params.get("denoiser") or "tv"
    try:
        return load_denoiser(str(spec), device=method.problem.device)
    except UserError as e:
        if e.path is not None:  # the file is named first: "error: FILE: problem"
            raise
        raise UserError(f"--denoiser (method '{method.name}'): {e.message}") from None
