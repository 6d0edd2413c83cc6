"""Spectrum of a network's Jacobian: randomised SVD of ``J = d(A f_theta(z)) / d theta`` and the
NTK eigenimages (EDIP paper, Barbano et al. 2022, Alg. 1; handbook Fig. 3).

``A`` is linear and needs no autodiff: ``J w = A (J_f w)`` and ``J^T q = J_f^T (A^T q)`` with
``J_f = d f_theta(z) / d theta`` (image space), so every backend of ``RayTransform`` works. The
neural tangent kernel in image space is ``K = J_f J_f^T``; its eigenvectors (the *eigenimages*) and
eigenvalues come out of the same routine without ``A``.

Modules (the names below are re-exported here):

* :mod:`.rsvd` -- the randomised range finder and small SVD from JVPs/VJPs (the algorithm);
* :mod:`.analysis` -- a network at its parameters: spectrum, NTK eigenimages, Hoyer sparsity,
  per-layer and encoder/decoder shares, summary lines;
* :mod:`.plots` -- the two figures;
* :mod:`.subject` -- network, input and Problem from a run folder or a weights file;
* :mod:`.outputs` -- ``spectrum.npz``/``.png``/``.txt`` of ``ctdip spectrum``.
"""

from ctdip.workflows.spectrum.analysis import (
    analyse_network,
    encoder_decoder_groups,
    hoyer,
    layer_of,
    network_function,
    parameter_shares,
    summary_lines,
)
from ctdip.workflows.spectrum.outputs import run_spectrum, save_npz
from ctdip.workflows.spectrum.plots import plot_eigenimages, plot_spectrum
from ctdip.workflows.spectrum.rsvd import JacobianSVD, Params, randomized_jacobian_svd
from ctdip.workflows.spectrum.subject import Subject, load_subject

__all__ = ["JacobianSVD", "Params", "Subject", "analyse_network", "encoder_decoder_groups", "hoyer", "layer_of",
           "load_subject", "network_function", "parameter_shares", "plot_eigenimages", "plot_spectrum",
           "randomized_jacobian_svd", "run_spectrum", "save_npz", "summary_lines"]
