"""Randomised Jacobian SVD (EDIP Alg. 1) against numpy's SVD, NTK eigenimages, derived numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctdip.errors import UserError
from ctdip.workflows.spectrum import (
    analyse_network,
    hoyer,
    network_function,
    parameter_shares,
    plot_eigenimages,
    plot_spectrum,
    randomized_jacobian_svd,
    save_npz,
    summary_lines,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny JVPs/VJPs: one thread is fastest (and fair on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _linear_net(n=6, h=8, m=40, seed=0):
    """f(W1, W2) = W2 W1 z: linear in the input, bilinear in the weights. Its Jacobian is known:
    d out_i / d W1[j, k] = W2[i, j] z_k and d out_i / d W2[a, j] = delta_ia (W1 z)_j."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(n, h, bias=False), torch.nn.Linear(h, m, bias=False)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    z = torch.randn(n, generator=g, dtype=torch.float64)
    W1, W2, zz = net[0].weight.detach().numpy(), net[1].weight.detach().numpy(), z.numpy()
    J1 = np.einsum("ij,k->ijk", W2, zz).reshape(m, -1)
    J2 = np.einsum("ab,j->abj", np.eye(m), W1 @ zz).reshape(m, -1)
    return net, z, np.concatenate([J1, J2], axis=1)


def test_linear_network_matches_numpy_svd():
    net, z, Jf = _linear_net()
    A = torch.randn(30, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    J = A.numpy() @ Jf
    U, s_true, Vt = np.linalg.svd(J)
    f, params = network_function(net, z)
    for adj in (None, lambda y: y @ A):  # adjoint by autograd, and given explicitly
        res = randomized_jacobian_svd(f, params, rank=6, op=lambda x: x @ A.T, op_adjoint=adj, power_iters=2)
        np.testing.assert_allclose(res.singular_values, s_true[:6], rtol=1e-3)
    # singular vectors agree up to sign
    for i in range(3):
        assert abs(float(res.right[i].double() @ torch.from_numpy(Vt[i]))) > 0.999
        assert abs(float(res.left[i] @ U[:, i])) > 0.999
    assert res.names == ["0.weight", "1.weight"] and res.sizes == [48, 320]
    assert res.vectorised


def test_identity_operator_and_exact_when_probes_span_the_range():
    net, z, Jf = _linear_net(m=12)
    s_true = np.linalg.svd(Jf, compute_uv=False)
    f, params = network_function(net, z)
    # l = k + p >= M = 12: the range finder captures the whole range, no power iteration needed
    res = randomized_jacobian_svd(f, params, rank=5, oversample=10, power_iters=0)
    np.testing.assert_allclose(res.singular_values, s_true[:5], rtol=1e-9)


def test_derived_numbers():
    assert hoyer(np.r_[1.0, np.zeros(99)]) == pytest.approx(1.0)
    assert hoyer(np.ones(100) * -3) == pytest.approx(0.0)
    v = np.r_[3.0, 4.0, 0.0, 0.0]  # |v|_1/|v|_2 = 7/5
    assert hoyer(v) == pytest.approx((2 - 1.4) / (2 - 1))
    right = torch.tensor([[1.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    names, shares = parameter_shares(right, ["a.weight", "a.bias", "b.weight"], [1, 1, 2])
    assert names == ["a", "b"]
    np.testing.assert_allclose(shares, [[2 / 6, 4 / 6], [0.0, 1.0]])
    with pytest.raises(UserError, match="rank"):
        randomized_jacobian_svd(lambda p: p["w"] * 2, {"w": torch.ones(3)}, rank=0)


def test_unet_ntk_eigenvalues_match_explicit_jacobian(tmp_path):
    from ctdip.networks import build_network, network_preset

    torch.manual_seed(0)
    net = build_network(network_preset("tiny")).eval()
    z = torch.randn(1, 1, 12, 12)
    f, params = network_function(net, z)
    theta = torch.cat([p.reshape(-1) for p in params.values()])
    names, shapes = list(params), [p.shape for p in params.values()]

    def flat_f(t):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            out[n] = t[i:i + k].view(s)
            i += k
        return f(out).reshape(-1)

    Jf = torch.func.jacrev(flat_f)(theta).double().numpy()  # (144, P)
    ev_true = np.linalg.eigvalsh(Jf @ Jf.T)[::-1]
    A = torch.randn(64, 144, generator=torch.Generator().manual_seed(1)) / 12
    s_true = np.linalg.svd(A.double().numpy() @ Jf, compute_uv=False)
    res = analyse_network(net, z, op=lambda x: x.reshape(x.shape[0], -1) @ A.T, rank=8, ntk_rank=4, power_iters=2)
    np.testing.assert_allclose(res["singular_values"][:4], s_true[:4], rtol=1e-3)  # top of the spectrum
    np.testing.assert_allclose(res["singular_values"], s_true[:8], rtol=1e-2)
    np.testing.assert_allclose(res["ntk_eigenvalues"], ev_true[:4], rtol=2e-3)  # lambda = sigma^2: twice the error
    eig = res["ntk_eigenimages"].reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(eig @ eig.T, np.eye(4), atol=1e-4)
    assert res["ntk_eigenimages"].shape == (4, 12, 12)
    np.testing.assert_allclose(res["group_shares"].sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(res["layer_shares"].sum(1), 1.0, atol=1e-9)
    assert res["layer_names"][0] == "inc.0" and res["n_params"] == theta.numel()
    assert 0 < res["hoyer"].min() and res["hoyer"].max() < 1
    text = "\n".join(summary_lines(res))
    assert "Hoyer" in text and "encoder share" in text
    save_npz(res, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as d:
        np.testing.assert_allclose(d["singular_values"], res["singular_values"])
        assert d["right_leading"].shape == (4, theta.numel())
    plot_spectrum(res, tmp_path / "spectrum.png")
    plot_eigenimages(res, tmp_path / "eig.png")
    assert (tmp_path / "spectrum.png").stat().st_size > 5000 and (tmp_path / "eig.png").stat().st_size > 5000


@pytest.fixture(scope="module")
def scan32(tmp_path_factory):
    from ctdip.core.data.simulate import simulate

    root = tmp_path_factory.mktemp("scan")
    simulate(root / "s", phantom="walnut", geometry="fan", angles=16, size=24, noise=0.0, seed=0)
    return root / "s"


def test_cli_on_run_checkpoint_and_weights_file(scan32, tmp_path, run_cli, capsys):
    from ctdip.dip.runs import RunFolder
    from ctdip.networks import build_network, network_preset
    from ctdip.networks.weights import save_weights

    torch.manual_seed(0)
    arch = network_preset("tiny")
    net = build_network(arch)
    run = RunFolder(tmp_path / "run").create()
    run.write_config({"method": "vanilla", "scan": {"folder": str(scan32), "options": {}}, "holdout": 0.0})
    z = 0.1 * torch.randn(1, 1, 24, 24)
    run.save_checkpoint({"network_arch": arch, "network": net.state_dict(), "z": z, "iteration": 10})
    assert run_cli("spectrum", run.path, "--rank", "4", "--ntk-rank", "2", "--oversample", "4") == 0
    out = capsys.readouterr().out
    assert "Hoyer sparsity" in out and "encoder share" in out
    with np.load(run.path / "spectrum" / "spectrum.npz") as d:
        s = d["singular_values"]
        assert s.shape == (4,) and np.all(np.diff(s) <= 1e-9 * s[0])
        assert d["ntk_eigenimages"].shape == (2, 24, 24) and d["left_vectors"].shape == (4, 16 * d["measurement_shape"][-1])
        # sigma_1 of J = A J_f is at most ||A|| sigma_1(J_f) = ||A|| sqrt(lambda_1(NTK))
        from ctdip.core.data.loader import load_scan
        from ctdip.core.problem import Problem

        opnorm = Problem.from_scan(load_scan(scan32)).opnorm
        assert s[0] <= 1.01 * opnorm * np.sqrt(d["ntk_eigenvalues"][0])
    for f in ("spectrum.png", "eigenimages.png", "spectrum.txt"):
        assert (run.path / "spectrum" / f).stat().st_size > 100

    save_weights(tmp_path / "w.pt", net.state_dict(), arch)
    assert run_cli("spectrum", tmp_path / "w.pt", "--rank", "3", "--ntk-rank", "0") == 2
    assert "--scan is required" in capsys.readouterr().err
    assert run_cli("spectrum", tmp_path / "w.pt", "--scan", scan32, "--rank", "2", "--ntk-rank", "0",
                   "--oversample", "2", "--power-iters", "0") == 0
    assert (tmp_path / "w_spectrum" / "spectrum.npz").exists()
    classical = RunFolder(tmp_path / "fbp").create()
    classical.write_config({"method": "fbp", "scan": {"folder": str(scan32)}})
    assert run_cli("spectrum", classical.path) == 2
    assert "no network checkpoint" in capsys.readouterr().err
