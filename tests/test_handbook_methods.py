"""The handbook's remaining methods: deep decoder, stochastic view subsets, subspace DIP (64², CPU)."""

import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_methods import make_problem  # noqa: E402

from ctdip.dip.context import RunContext
from ctdip.dip.runs import RunFolder
from ctdip.errors import UserError
from ctdip.methods import get_method


@pytest.fixture(scope="module")
def problem():
    return make_problem(n=64, views=40)


def _run(name, problem, folder=None, resume=False, progress=None, seed=3, **kw):
    run = RunFolder(folder).create(exist_ok=True) if folder is not None else None
    m = get_method(name)(**kw)
    return m, m.run(problem, RunContext(run=run, seed=seed, resume=resume, progress=progress, quiet=True))


def _interrupt_at(n):
    def cb(it, total, row):
        if it == n:
            os.kill(os.getpid(), signal.SIGINT)
    return cb


def _rows(folder):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in RunFolder(folder).read_metrics()]


def _assert_resume_identical(name, problem, tmp_path, cut_at=13, **kw):
    _, full = _run(name, problem, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        _run(name, problem, tmp_path / "cut", progress=_interrupt_at(cut_at), **kw)
    assert RunFolder(tmp_path / "cut").load_checkpoint()["iteration"] == cut_at
    _, resumed = _run(name, problem, tmp_path / "cut", resume=True, **kw)
    assert torch.equal(full.recon, resumed.recon)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    return full


# ---------------------------------------------------------------------------- deep decoder
def test_deep_decoder_is_under_parametrised_and_fits(problem, one_thread):
    m, res = _run("vanilla", problem, network="deep-decoder", iterations=60, lr=0.01, log_every=10)
    n_par = res.summary["network"]["parameters"]
    assert n_par == sum(p.numel() for p in m.network.parameters())
    assert n_par < 64 * 64 / 4  # compression 4: fewer parameters than a quarter of the pixels
    assert res.summary["network"]["arch"]["image_shape"] == [64, 64]
    h = res.history
    assert h[-1]["loss"] < 0.1 * h[0]["loss"]
    assert h[-1]["psnr"] > h[0]["psnr"] + 5


def test_deep_decoder_3d_shapes_and_determinism():
    from ctdip.networks import build_network, network_preset, resolve_arch
    from ctdip.networks.deep_decoder import parameter_count

    arch = resolve_arch(network_preset("deep-decoder", 3), (6, 20, 24))
    net = build_network(arch)
    z = torch.zeros(1, 1, 6, 20, 24)
    out = net(z)
    assert out.shape == (1, 1, 6, 20, 24)
    assert sum(p.numel() for p in net.parameters()) == parameter_count(arch["channels"], 6) < 6 * 20 * 24 / 4
    assert torch.equal(build_network(arch).b0, net.b0)  # the fixed input is a function of the arch
    with pytest.raises(UserError, match="image_shape"):
        build_network({"name": "deep-decoder", "dim": 3})


# ---------------------------------------------------------------------------- view subsets
@pytest.mark.parametrize("backend", ["matrix", "torch"])
def test_view_subset_operator_is_the_selected_rows(problem, backend):
    from ctdip.core.operators import RayTransform
    from ctdip.methods._view_subsets import ViewSubset, draw_views

    A = problem.A if backend == "matrix" else RayTransform(problem.A.geometry, problem.volume, backend="torch")
    op = ViewSubset(A)
    assert op.mode == {"matrix": "rows", "torch": "march"}[backend]
    views = draw_views(40, 7, torch.Generator().manual_seed(0))
    assert len(set(views.tolist())) == 7 and list(views) == sorted(views)
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    sub = op(problem.to_volume(x), views)
    ref = A(problem.to_volume(x))[..., torch.as_tensor(views), :, :]
    assert torch.allclose(sub, ref, rtol=1e-5, atol=1e-5 * float(ref.detach().abs().max()))
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    (g1,) = torch.autograd.grad((sub * w).sum(), x)
    (g2,) = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-5 * float(g2.abs().max()))


def test_view_subset_loss_is_unbiased(problem):
    m = get_method("vanilla")(view_batch=8)
    m.problem, m._ynorm2 = problem, float((problem.y ** 2).sum())
    m._setup_view_subsets(problem)
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(5)
    est = []
    for i in range(600):
        m.before_step(i, gen)
        est.append(float(m.data_fit(x)))
    m._views = None
    full = float(m.data_fit(x))
    assert abs(np.mean(est) - full) < 4 * np.std(est) / np.sqrt(len(est))
    assert np.std(est) > 0.01 * full  # the subsets really differ from step to step


def test_view_batch_lowers_loss_logs_full_fit_and_resumes_identically(problem, tmp_path, one_thread):
    kw = dict(network="tiny", iterations=24, lr=0.01, log_every=4, checkpoint_every=8, es_window=5, view_batch=10)
    full = _assert_resume_identical("tv", problem, tmp_path, **kw)
    rows = _rows(tmp_path / "full")
    assert rows[-1]["data_fit"] < 0.2 * rows[0]["data_fit"]
    assert full.summary["loss_normalisation"]["view_batch"] == 10
    # the logged data_fit is the full one, not the subset estimate the loss used
    first = rows[0]
    assert first["loss"] != pytest.approx(first["data_fit"] + first["reg"], rel=1e-6)
    # another seed draws other subsets
    _, other = _run("tv", problem, seed=4, **kw)
    assert not torch.equal(other.recon, full.recon)
    with pytest.raises(UserError, match="view_batch"):
        _run("vanilla", problem, view_batch=-2, iterations=1)


# ---------------------------------------------------------------------------- subspace DIP
@pytest.fixture(scope="module")
def trajectory(problem, tmp_path_factory):
    from ctdip.networks import network_preset
    from ctdip.training.pretrain import PretrainConfig, pretrain_for_problem

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("traj") / "w.pt"
    pretrain_for_problem(problem, network_preset("tiny", 2), out,
                         PretrainConfig(steps=30, batch_size=2, val_every=30, val_samples=2, checkpoint_every=3))
    torch.set_num_threads(n)
    return out


SUB = dict(iterations=30, log_every=5, checkpoint_every=10, es_window=5, subspace_dim=6, keep=0.5)


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("lbfgs", 1.0)])
def test_subspace_dip_lowers_loss_inside_the_subspace(problem, trajectory, one_thread, optimizer, lr):
    m, res = _run("subspace-dip", problem, weights=str(trajectory), optimizer=optimizer, lr=lr, **SUB)
    h = res.history
    assert h[-1]["loss"] < 0.5 * h[0]["loss"]
    assert res.summary["trajectory_checkpoints"] == 10 and res.summary["subspace_dim"] == 6
    P = m.theta0.numel()
    assert res.summary["masked_parameters"] == int(np.ceil(0.5 * P))
    # theta - theta_0 lies in span(M U): zero outside the mask, and its projection residual ~ 0
    d = (m.theta() - m.theta0).detach().double()
    assert float(d.norm()) > 1e-3
    assert torch.all(d[~m.mask] == 0)
    Q, _ = torch.linalg.qr(m.B.double())
    resid = d - Q @ (Q.T @ d)
    assert float(resid.norm()) < 1e-5 * float(d.norm())
    # the network itself keeps theta_0
    flat = torch.cat([p.detach().reshape(-1) for p in m.network.parameters()])
    assert torch.equal(flat, m.theta0)


def test_subspace_basis_is_orthonormal_on_the_trajectory():
    from ctdip.methods.subspace_dip import subspace_basis

    g = torch.Generator().manual_seed(0)
    dirs = torch.linalg.qr(torch.randn(200, 3, generator=g))[0]
    thetas = (torch.randn(12, 3, generator=g) * torch.tensor([5.0, 2.0, 1.0])) @ dirs.T + 1.0
    B, mask, s = subspace_basis(thetas, 3, keep=1.0)
    assert mask.all() and torch.allclose(B.T @ B, torch.eye(3), atol=1e-5)
    X = (thetas - thetas.mean(0)).T
    assert float((X - B @ (B.T @ X)).norm()) < 1e-4 * float(X.norm())  # the trajectory lies in span(U)
    B2, mask2, _ = subspace_basis(thetas, 2, keep=0.25)
    assert int(mask2.sum()) == 50 and torch.all(B2[~mask2] == 0)
    with pytest.raises(UserError, match="subspace_dim"):
        subspace_basis(thetas, 12, keep=1.0)


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("lbfgs", 1.0)])
def test_subspace_dip_resume_is_bit_identical(problem, trajectory, tmp_path, one_thread, optimizer, lr):
    _assert_resume_identical("subspace-dip", problem, tmp_path, weights=str(trajectory), optimizer=optimizer,
                             lr=lr, **SUB)


def test_subspace_dip_user_errors(problem, trajectory, tmp_path, one_thread):
    with pytest.raises(UserError, match="needs --weights"):
        _run("subspace-dip", problem, iterations=1)
    lone = tmp_path / "lone.pt"
    shutil.copy(trajectory, lone)
    with pytest.raises(UserError, match="trajectory"):
        _run("subspace-dip", problem, weights=str(lone), iterations=1)
    # a trajectory that changes under a run stops its resume
    traj = tmp_path / "t.pt"
    shutil.copy(trajectory, traj)
    shutil.copytree(trajectory.with_name("w.ckpt"), tmp_path / "t.ckpt")
    with pytest.raises(KeyboardInterrupt):
        _run("subspace-dip", problem, tmp_path / "run", weights=str(traj), progress=_interrupt_at(4), lr=0.05, **SUB)
    sorted((tmp_path / "t.ckpt").glob("step_*.pt"))[0].unlink()
    (tmp_path / "t.ckpt" / "step_000099.pt").write_bytes((tmp_path / "t.ckpt" / "step_000030.pt").read_bytes())
    with pytest.raises(UserError, match="trajectory changed"):
        _run("subspace-dip", problem, tmp_path / "run", resume=True, weights=str(traj), lr=0.05, **SUB)


def test_subspace_preset_has_sources_and_is_registered():
    import yaml

    from ctdip.methods import method_names
    from ctdip.methods.params import PRESET_DIR

    assert "subspace-dip" in method_names()
    data = yaml.safe_load((PRESET_DIR / "subspace-dip.yaml").read_text())
    assert set(data["sources"]) <= set(data["params"])
    m = get_method("subspace-dip")()
    assert (m.params["input"], m.params["optimizer"], m.params["view_batch"]) == ("fbp", "adam", 0)


def test_cli_deep_decoder_view_batch_and_subspace(run_cli, tmp_path, capsys, one_thread, monkeypatch):
    import json

    monkeypatch.setenv("CTDIP_CACHE_DIR", str(tmp_path / "cache"))
    scan = tmp_path / "scan32"
    assert run_cli("simulate", scan, "--phantom", "walnut", "--geometry", "fan", "--angles", "24",
                   "--size", "32", "--noise", "0.05", "-q") == 0
    rec = ["-n", "6", "--device", "cpu", "-q"]
    assert run_cli("reconstruct", scan, "--method", "tv", "--network", "deep-decoder", "--set", "view_batch=6",
                   "-o", tmp_path / "dd", *rec) == 0
    s = json.loads((tmp_path / "dd" / "summary.json").read_text())["result"]
    assert s["network"]["arch"]["name"] == "deep-decoder" and s["loss_normalisation"]["view_batch"] == 6
    w = tmp_path / "w.pt"
    assert run_cli("pretrain", "--scan", scan, "-o", w, "--network", "tiny", "--steps", "6", "--batch-size", "2",
                   "--val-every", "3", "--checkpoint-every", "2", "--device", "cpu", "-q") == 0
    assert run_cli("reconstruct", scan, "--method", "subspace-dip", "--weights", w, "--set", "optimizer=lbfgs",
                   "--lr", "1", "-o", tmp_path / "sub", *rec) == 0
    s = json.loads((tmp_path / "sub" / "summary.json").read_text())["result"]
    assert s["trajectory_checkpoints"] == 3 and s["subspace_dim"] == 2
    capsys.readouterr()
    assert run_cli("reconstruct", scan, "--method", "subspace-dip", "-o", tmp_path / "none", *rec) == 2
    err = capsys.readouterr().err
    assert "needs --weights" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "none" / "recon.tif").exists()
