import numpy as np
import torch

from ctdip.core.data.phantoms import random_ellipses, shepp_logan, walnut


def test_shepp_logan_values_and_shapes():
    a = shepp_logan((64, 64))
    b = shepp_logan((16, 32, 32))
    assert a.shape == (64, 64) and a.dtype == np.float32 and b.shape == (16, 32, 32)
    assert a.max() == np.float32(1.0) and a.min() == 0.0
    # the modified Shepp-Logan brain matter is 1 - 0.8 = 0.2
    assert abs(float(np.median(a[a > 0])) - 0.2) < 1e-6


def test_walnut_is_seeded_and_in_attenuation_units():
    w0, w1 = walnut((64, 64), seed=0), walnut((64, 64), seed=1)
    assert np.array_equal(w0, walnut((64, 64), seed=0)) and not np.array_equal(w0, w1)
    assert 0.05 < float(w0.max()) < 0.08  # shell ~0.055 /mm (+texture)
    kernel = w0[(w0 > 0.02) & (w0 < 0.04)]
    assert kernel.size > 0.1 * w0.size  # kernel lobes fill a good part of the slice
    w3 = walnut((16, 32, 32))
    assert w3.shape == (16, 32, 32) and w3.max() > 0.04


def test_random_ellipses_distribution_and_determinism():
    g = torch.Generator().manual_seed(0)
    x = random_ellipses(8, (48, 48), generator=g)
    assert x.shape == (8, 48, 48) and x.dtype == torch.float32
    assert torch.allclose(x.amax(dim=(1, 2)), torch.ones(8)) and float(x.min()) == 0.0
    x2 = random_ellipses(8, (48, 48), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    v = random_ellipses(2, (16, 16, 16), generator=g, n_ellipses=10)
    assert v.shape == (2, 16, 16, 16) and float(v.max()) == 1.0
