"""Measurement noise for simulated scans.

* Gaussian (the EDIP paper's model): ``y = A x + sigma * n``, ``n ~ N(0, I)``,
  ``sigma = rel * mean(|A x|)`` over all detector pixels of all views.
* Poisson (photon counting): counts ``I ~ Poisson(I0 * exp(-A x))``; the scan stores the raw
  counts with flat fields so readers go through the flat/dark/log path.
"""

from __future__ import annotations

import numpy as np


def gaussian_noise(y: np.ndarray, rel: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``y + sigma * N(0, 1)`` with ``sigma = rel * mean|y|``; returns (noisy float32, sigma)."""
    y = np.asarray(y, dtype=np.float64)
    sigma = float(rel) * float(np.mean(np.abs(y)))
    noisy = y + sigma * rng.standard_normal(y.shape)
    return noisy.astype(np.float32), sigma


def poisson_counts(y: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Photon counts ``Poisson(photons * exp(-y))`` (float64, integer-valued)."""
    lam = float(photons) * np.exp(-np.asarray(y, dtype=np.float64))
    return rng.poisson(lam).astype(np.float64)
