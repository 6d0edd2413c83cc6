"""Priors that are not networks: total variation (finite differences, prox, PDHG pieces) and the
denoisers ``D(x, sigma)`` of admm / hqs-denoiser / red (TV prox, BM3D, the shipped DRUNet)."""
