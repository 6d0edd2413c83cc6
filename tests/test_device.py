"""Device-agnostic checks: operators, networks, FBP and short DIP runs on ``$CTDIP_TEST_DEVICE``
(default ``cpu``) agree with the same computation on CPU, for the ``torch`` and ``matrix`` backends.

On a GPU machine ``benchmarks/gpu_check.sh`` runs this file with ``CTDIP_TEST_DEVICE=cuda``; without
astra-toolbox there, the matrix backend loads the matrices that ``benchmarks/gpu_payload.py`` built
on CPU (by running this file) into ``$CTDIP_CACHE_DIR``. On CPU every comparison is CPU vs CPU and
must hold exactly or to float rounding; on CUDA the tolerances allow for TF32 convolutions (cuDNN's
default on Ampere and later) and another summation order in the sparse and reduction kernels.
"""

import os

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("CTDIP_TEST_DEVICE", "cpu")
BACKENDS = [b for b in os.environ.get("CTDIP_TEST_BACKENDS", "torch,matrix").split(",") if b]
ON_CPU = torch.device(DEVICE).type == "cpu"
# relative tolerances: float32 rounding on CPU; TF32 convolutions / atomics on CUDA
TOL_OP = 1e-6 if ON_CPU else 1e-4
TOL_NET = 1e-6 if ON_CPU else 2e-2


def fan_case(n: int = 32, views: int = 20):
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

    g = ProjectionGeometry.circular("fan", np.linspace(0, 2 * np.pi, views, endpoint=False), det_cols=int(1.5 * n),
                                    pixel_mm=1.0, source_origin_mm=4.0 * n, source_detector_mm=6.0 * n)
    return g, VolumeGeometry.fov(g, n)


def cone_case(n: int = 16, views: int = 12):
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

    g = ProjectionGeometry.circular("cone", np.linspace(0, 2 * np.pi, views, endpoint=False), det_cols=int(1.5 * n),
                                    det_rows=int(1.5 * n), pixel_mm=1.0, source_origin_mm=4.0 * n,
                                    source_detector_mm=6.0 * n)
    return g, VolumeGeometry.fov(g, n)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().cpu().double() - b.detach().cpu().double()).norm() / b.detach().cpu().double().norm())


def make_scan(n: int = 32, views: int = 20):
    """A walnut scan projected with the torch backend on CPU (needs no ASTRA, no cache)."""
    from ctdip.core.data import Scan
    from ctdip.core.data.noise import gaussian_noise
    from ctdip.core.data.phantoms import walnut
    from ctdip.core.operators import RayTransform

    g, vol = fan_case(n, views)
    ref = walnut((n, n), seed=0)[None].astype(np.float32)
    y = RayTransform(g, vol, backend="torch")(torch.as_tensor(ref)).numpy()
    yn, _ = gaussian_noise(y, 0.05, np.random.default_rng(1))
    return Scan(projections=yn, geometry=g, volume=vol, reference=ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["fan", "cone"])
def test_operator_on_device_matches_cpu(backend, case):
    from ctdip.core.operators import RayTransform

    g, v = fan_case() if case == "fan" else cone_case()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(v.shape, generator=gen)
    y = torch.rand((g.n_views, *g.det_shape), generator=gen)
    A_cpu = RayTransform(g, v, backend=backend, device="cpu")
    A = RayTransform(g, v, backend=backend, device=DEVICE)
    assert A.backend == backend
    Ax, ATy = A(x.to(DEVICE)), A.T(y.to(DEVICE))
    assert Ax.device.type == torch.device(DEVICE).type and ATy.shape == tuple(v.shape)
    assert rel(Ax, A_cpu(x)) < TOL_OP and rel(ATy, A_cpu.T(y)) < TOL_OP
    lhs, rhs = float((Ax.double() * y.to(DEVICE)).sum()), float((x.to(DEVICE).double() * ATy).sum())
    assert abs(lhs - rhs) / abs(lhs) < (1e-5 if backend == "matrix" else 2e-3), (lhs, rhs)


@pytest.mark.parametrize("preset,shape", [("light", (1, 1, 48, 40)), ("paper", (1, 1, 32, 32)),
                                          ("3d", (1, 1, 16, 16, 16))])
def test_network_step_on_device_matches_cpu(preset, shape):
    """Forward output and the gradient of one loss agree with CPU (same weights, same input)."""
    from ctdip.networks import build_network, network_preset

    torch.manual_seed(0)
    arch = network_preset(preset, len(shape) - 2, **({"channels": [16] * 6} if preset == "paper" else {}))
    net_cpu = build_network(arch)
    net = build_network(arch)
    net.load_state_dict(net_cpu.state_dict())
    net.to(DEVICE)
    z = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for m, inp in ((net_cpu, z), (net, z.to(DEVICE))):
        out = m(inp)
        (out.square().mean()).backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten().cpu() for p in m.parameters()]))
    assert outs[1].shape == shape and outs[1].device.type == torch.device(DEVICE).type
    assert rel(outs[1], outs[0]) < TOL_NET
    assert rel(grads[1], grads[0]) < 5 * TOL_NET


@pytest.mark.parametrize("backend", BACKENDS)
def test_problem_fbp_on_device_matches_cpu(backend):
    from ctdip.core.problem import Problem

    scan = make_scan()
    p_cpu = Problem.from_scan(scan, backend=backend, device="cpu")
    p = Problem.from_scan(scan, backend=backend, device=DEVICE)
    assert p.device.type == torch.device(DEVICE).type
    assert rel(p.x_init, p_cpu.x_init) < 10 * TOL_OP
    assert abs(p.intensity_scale - p_cpu.intensity_scale) < 1e-6 * abs(p_cpu.intensity_scale)


#: the short seeded DIP run of the device comparison (also run by benchmarks/tf32_sensitivity.py)
DIP_KW = {"network": "tiny", "iterations": 30, "lr": 0.01, "log_every": 10, "checkpoint_every": 0,
          "es_window": 10}


def run_dip(scan, method: str, backend: str, device: str, **overrides):
    """One seeded (seed 0) DIP run of ``scan`` on ``device``: ``(result, returned PSNR in dB)``."""
    from ctdip.core.metrics import psnr
    from ctdip.core.problem import Problem
    from ctdip.methods import get_method
    from ctdip.methods.base import RunContext

    prob = Problem.from_scan(scan, backend=backend, device=device)
    res = get_method(method)(**{**DIP_KW, **overrides}).run(prob, RunContext(seed=0, quiet=True))
    ref = prob.reference.detach().cpu().numpy()
    return res, psnr(res.recon.detach().cpu().numpy().reshape(ref.shape), ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["vanilla", "tv"])
def test_dip_run_on_device_close_to_cpu(backend, method):
    """30 iterations of a tiny-U-Net DIP on the device: finite, better than its start, and within
    0.5 dB of the same seeded run on CPU (the device's random streams differ from CPU's)."""
    scan = make_scan()
    out = {}
    for dev in ("cpu", DEVICE):
        res, out[dev] = run_dip(scan, method, backend, dev)
        assert res.recon.device.type == torch.device(dev).type and torch.isfinite(res.recon).all()
        h = res.history
        assert h[-1]["loss"] < h[0]["loss"]
    assert abs(out[DEVICE] - out["cpu"]) < (1e-9 if ON_CPU else 0.5), out
