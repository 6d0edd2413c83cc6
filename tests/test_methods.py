"""Every DIP method on a small fan-beam walnut: loss goes down, method-specific invariants hold."""

import numpy as np
import pytest
import torch

from ctdip.dip.context import RunContext
from ctdip.errors import UserError
from ctdip.methods import get_method

FAST = {"network": "tiny", "iterations": 40, "lr": 0.01, "log_every": 5, "checkpoint_every": 0, "es_window": 10}


def make_problem(n=64, views=40, rel=0.05, seed=0, holdout=0.0):
    from ctdip.core.data import Scan
    from ctdip.core.data.noise import gaussian_noise
    from ctdip.core.data.phantoms import walnut
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
    from ctdip.core.operators import RayTransform
    from ctdip.core.problem import Problem

    g = ProjectionGeometry.circular("fan", np.linspace(0, 2 * np.pi, views, endpoint=False), det_cols=int(1.5 * n),
                                    pixel_mm=1.0, source_origin_mm=4.0 * n, source_detector_mm=6.0 * n)
    vol = VolumeGeometry.fov(g, n)
    ref = walnut((n, n), seed=seed)[None].astype(np.float32)
    y = RayTransform(g, vol, backend="matrix")(torch.as_tensor(ref)).numpy()
    yn, _ = gaussian_noise(y, rel, np.random.default_rng(seed + 1))
    return Problem.from_scan(Scan(projections=yn, geometry=g, volume=vol, reference=ref), backend="matrix",
                             holdout=holdout)


@pytest.fixture(scope="module")
def problem():
    return make_problem()


def run(name, problem, seed=0, **kw):
    m = get_method(name)(**{**FAST, **kw})
    return m, m.run(problem, RunContext(seed=seed, quiet=True))


@pytest.mark.parametrize("name", ["vanilla", "tv", "tv-hqs", "admm", "hqs-denoiser", "red", "self-guided", "aseq"])
def test_method_reduces_loss(problem, name):
    kw = {"lr": 0.01} if name != "aseq" else {"lr": 0.01, "iterations": 40, "discrepancy": 0}
    if name == "hqs-denoiser":
        kw.update(cv_iterations=20, cv_grid="1e-4:0.1:4")
    m, res = run(name, problem, **kw)
    h = res.history
    assert h[0]["iter"] == 1 and h[-1]["iter"] == 40
    assert h[-1]["loss"] < 0.5 * h[0]["loss"], (h[0]["loss"], h[-1]["loss"])
    assert h[-1]["data_fit"] < h[0]["data_fit"]
    assert res.recon.shape == (1, 64, 64) and torch.isfinite(res.recon).all()
    assert {"es", "ema", "best"} <= set(res.extras)
    s = res.summary
    assert s["method"] == m.name and s["iterations"] == 40
    assert s["loss_normalisation"]["data_fit"] == "||A x - y||^2 / ||y||^2"


def test_vanilla_beats_fbp_and_picks(problem):
    from ctdip.core.metrics import psnr

    m, res = run("vanilla", problem, iterations=150, lr=0.01, input="fbp", es_window=20)
    fbp = psnr(problem.x_init, problem.reference)
    s = res.summary
    assert s["peak_psnr"] > fbp + 2, (s["peak_psnr"], fbp)
    assert s["es_iter"] is not None and 20 <= s["es_iter"] <= 150
    assert abs(psnr(res.extras["best"], problem.reference) - s["peak_psnr"]) < 1e-3
    assert s["peak_psnr"] >= s["es_psnr"]  # (recon = the network after the last step, not an iterate)


def test_same_seed_same_output_different_seed_differs(problem):
    _, a = run("tv", problem, seed=3, iterations=15)
    _, b = run("tv", problem, seed=3, iterations=15)
    _, c = run("tv", problem, seed=4, iterations=15)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.extras["es"], b.extras["es"])
    assert not torch.equal(a.recon, c.recon)


def test_aseq_updates_z_only_between_blocks_and_never_by_gradient(problem):
    m = get_method("aseq")(**{**FAST, "iterations": 9, "block_steps": 3, "lr": 0.01, "discrepancy": 0})
    snaps = {}

    def progress(it, total, row):
        snaps[it] = m.z.detach().clone()
        assert not m.z.requires_grad and m.z.grad is None
        opt_params = {id(p) for g in m.engine and [] or [] for p in g}
        assert id(m.z) not in opt_params

    z0 = m.make_input  # keep a handle; the input is built inside run
    res = m.run(problem, RunContext(seed=0, progress=progress))
    assert z0 is not None
    changed = [it for it in range(2, 10) if not torch.equal(snaps[it], snaps[it - 1])]
    assert changed == [3, 6, 9]
    assert res.summary["blocks"] == 3
    assert torch.equal(res.recon, m.z[0, 0].unsqueeze(0) if m.z.ndim == 4 else res.recon)


def test_aseq_discrepancy_stop_ends_at_the_first_step_below_tau_eta2(problem):
    """``discrepancy`` tau: the run ends after the first step whose data fit is below tau x the least
    held-out-view CV residual of PDHG-TV (computed from the data alone), and says so."""
    from ctdip.methods.selection import cv_tv_weight, parse_grid

    cv = {"cv_iterations": 20, "cv_grid": "1e-4:0.1:4"}
    _, free = run("aseq", problem, iterations=30, log_every=1, discrepancy=0, **cv)  # the paper: every step
    fits = [row["data_fit"] for row in free.history]
    assert "discrepancy_stop" not in free.summary and "tv_weight_choice" not in free.summary
    eta2 = min(cv_tv_weight(problem, parse_grid(cv["cv_grid"]), iterations=20).residuals)
    target = 1 + int(np.argmax(np.asarray(fits) < fits[14] * 1.000001))  # the first step at or below step 15's fit
    tau = fits[14] * 1.000001 / eta2
    m, res = run("aseq", problem, iterations=30, log_every=1, discrepancy=tau, **cv)
    d = res.summary["discrepancy_stop"]
    assert d["noise_level2"] == pytest.approx(eta2) and d["threshold"] == pytest.approx(tau * eta2)
    assert d["stopped_at"] == target == res.summary["iterations"] <= 15 and res.summary["stopped_early"]
    assert d["data_fit"] == pytest.approx(fits[target - 1]) and d["data_fit"] < d["threshold"]
    assert all(f >= d["threshold"] for f in fits[: target - 1])
    assert "tv_weight_choice" not in res.summary  # the CV gave the noise level only (tv_weight 0)
    _, never = run("aseq", problem, iterations=10, discrepancy=1e-6, **cv)
    assert never.summary["iterations"] == 10 and never.summary["discrepancy_stop"]["stopped_at"] is None


def test_aseq_z_not_in_optimizer(problem):
    m = get_method("aseq")(**{**FAST, "iterations": 2, "discrepancy": 0})
    m.run(problem, RunContext(seed=0))
    assert all(p is not m.z for g in m.param_groups(1e-3) for p in g["params"])


def test_self_guided_z_receives_gradients_and_returns_ema(problem):
    m = get_method("self-guided")(**{**FAST, "iterations": 10, "tv_weight": 0.0})  # no CV progress rows
    grads = []

    def progress(it, total, row):
        grads.append(None if m.z.grad is None else float(m.z.grad.abs().sum()))

    res = m.run(problem, RunContext(seed=0, progress=progress))
    assert m.z.requires_grad and all(g is not None and g > 0 for g in grads)
    z_init = problem.to_image(problem.x_init)
    assert not torch.equal(m.z.detach(), z_init)  # z moved
    assert torch.equal(res.recon, res.extras["ema"])
    assert any(g["lr"] == m.params["z_lr"] for g in m.param_groups(m.params["lr"]))


def test_unknown_parameter_is_a_clear_user_error():
    with pytest.raises(UserError, match=r"method 'vanilla' has no parameter 'tv_weight'.*known parameters: .*iterations"):
        get_method("vanilla")(tv_weight=0.1)
    with pytest.raises(UserError, match="--input: must be one of"):
        get_method("tv")(input="photo")
    with pytest.raises(UserError, match="--tv-weight: must be a finite number >= 0 or 'auto', got 'lots'"):
        get_method("tv")(tv_weight="lots")
    m = get_method("tv")(tv_weight="0.5", iterations="7", input=None)
    assert m.params["tv_weight"] == 0.5 and m.params["iterations"] == 7 and m.params["input"] == "noise"


def test_presets_have_sources_for_every_param():
    import yaml

    from ctdip.methods.params import PRESET_DIR

    for name in ["vanilla", "tv", "tv-hqs", "admm", "hqs-denoiser", "red", "self-guided", "aseq", "edip", "edip-fe"]:
        data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
        assert set(data["params"]) and set(data["sources"]) <= set(data["params"])
        get_method(name)()  # defaults are valid
    aseq = yaml.safe_load((PRESET_DIR / "aseq.yaml").read_text())["params"]
    # lambda and N from Alkhouri et al. 2024; 1000 blocks at lr 2e-3 (cosine) chosen for the light network
    assert (aseq["lam"], aseq["block_steps"], aseq["iterations"] // aseq["block_steps"], aseq["lr"], aseq["discrepancy"]) == (0.1, 2, 2000, 2e-3, 0.5)
    assert get_method("aseq")().params["tv_weight"] == 0.0  # the paper's aSeqDIP
    assert get_method("aseq")().params["tv_factor"] == 0.25  # with --tv-weight auto, as tv
    # self-guided + the CV-weighted TV term for 2000 iterations, chosen on the tuning objects
    sg = get_method("self-guided")().params
    assert (sg["tv_weight"], sg["tv_factor"], sg["iterations"]) == ("auto", 0.25, 2000)


def test_denoiser_methods_accept_cnn_weights(problem, tmp_path):
    from ctdip.networks import build_network
    from ctdip.networks.weights import save_weights

    arch = {"name": "drunet", "dim": 2, "in_channels": 2, "out_channels": 1, "channels": [8, 16], "blocks": 1}
    save_weights(tmp_path / "den.pt", build_network(arch).state_dict(), arch, kind="denoiser")
    _, res = run("admm", problem, iterations=10, denoiser=str(tmp_path / "den.pt"))
    assert res.summary["denoiser"] == "cnn:den.pt"
    with pytest.raises(UserError, match="method 'red'.*unknown denoiser"):
        run("red", problem, iterations=2, denoiser="magic")


# ----------------------------------------------------------------------------- EDIP
def _weights(problem, tmp_path, key=None):
    from ctdip.networks import build_network, network_preset
    from ctdip.networks.weights import problem_geometry_key, save_weights

    arch = network_preset("tiny", 2)
    torch.manual_seed(11)
    net = build_network(arch)
    return save_weights(tmp_path / "warm.pt", net.state_dict(), arch, kind="unet",
                        geometry_key=key or problem_geometry_key(problem)), net


def test_edip_warm_start_min_loss_pick(problem, tmp_path):
    path, net0 = _weights(problem, tmp_path)
    m, res = run("edip", problem, iterations=30, weights=str(path), lr=0.003)
    h = res.history
    assert h[-1]["loss"] < h[0]["loss"]
    s = res.summary
    assert s["returned"] == "min_loss" and s["weights"] == str(path) and s["frozen_parameters"] == 0
    # the returned image is the minimum-loss iterate
    assert s["min_loss"] == pytest.approx(min(r["loss"] for r in h), rel=0, abs=1e-12) or s["min_loss"] <= min(r["loss"] for r in h)
    assert m.engine.picks.min_loss_iter == s["min_loss_iter"]
    assert torch.equal(res.recon, problem.to_volume(m.engine.picks.min_loss_image)[0, 0])


def test_edip_fe_freezes_exactly_the_encoder(problem, tmp_path):
    path, net0 = _weights(problem, tmp_path)
    m, res = run("edip-fe", problem, iterations=10, weights=str(path), lr=0.01)
    before = net0.state_dict()
    after = m.network.state_dict()
    enc = {n for n, _ in m.network.named_parameters() if n.startswith(("inc.", "down."))}
    assert enc and res.summary["frozen_parameters"] == sum(p.numel() for n, p in m.network.named_parameters() if n in enc)
    for n, p in m.network.named_parameters():
        if n in enc:
            assert torch.equal(before[n], after[n]) and not p.requires_grad, n
    assert any(not torch.equal(before[n], after[n]) for n in after if n.startswith(("up.", "outc.")))


def test_edip_geometry_mismatch_refused_unless_forced(problem, tmp_path):
    path, _ = _weights(problem, tmp_path, key="0123456789abcdef")
    with pytest.raises(UserError, match="another geometry.*--force"):
        run("edip", problem, iterations=2, weights=str(path))
    _, res = run("edip", problem, iterations=2, weights=str(path), force=True)
    assert res.summary["weights_geometry_key"] == "0123456789abcdef"
    with pytest.raises(UserError, match="weights file not found"):
        run("edip", problem, iterations=2, weights=str(tmp_path / "missing.pt"))


def test_holdout_residual_logged():
    p = make_problem(n=32, views=30, holdout=0.2)
    assert p.A_held is not None
    _, res = run("vanilla", p, iterations=10)
    vals = [r["holdout"] for r in res.history]
    assert all(v is not None and v > 0 for v in vals) and vals[-1] < vals[0]
    assert "final_holdout" in res.summary


@pytest.mark.parametrize("name", ["tv", "tv-hqs", "edip", "aseq", "self-guided"])
def test_tv_weight_auto_in_every_tv_method(problem, tmp_path, name):
    """``tv_weight: auto`` is one mechanism (selection.AutoTVWeight): tv, tv-hqs, edip, aseq and self-guided use the CV
    weight of PDHG-TV carried over times ``tv_factor``, and record the same evidence."""
    from ctdip.methods.selection import dip_tv_weight

    kw = {"tv_weight": "auto", "tv_factor": 0.5, "cv_iterations": 20, "cv_grid": "1e-4:0.1:4", "iterations": 6}
    if name == "edip":
        kw["weights"] = str(_weights(problem, tmp_path)[0])
    m, res = run(name, problem, **kw)
    ch = res.summary["tv_weight_choice"]
    assert ch["cv_residuals"][ch["weights"].index(ch["chosen"])] == min(ch["cv_residuals"])
    assert res.summary["tv_weight"] == pytest.approx(dip_tv_weight(problem, ch["chosen"], 0.5)) == ch["dip_tv_weight"]
    assert m.weight == res.summary["tv_weight"] > 0


def test_admm_rho_growth_schedule(problem):
    """``rho_growth`` (Chan et al. 2017): rho_k = min(rho_0 gamma^k, rho_max) after k u-steps and
    sigma_k = sigma_0 sqrt(rho_0 / rho_k); without it rho and sigma stay fixed."""
    m, res = run("admm", problem, iterations=40, u_every=5, rho=0.5, sigma=0.1, rho_growth=1.5, rho_max=4.0,
                 denoiser="tv")
    k = 40 // 5
    rho = min(0.5 * 1.5**k, 4.0)
    assert res.summary["final_rho"] == pytest.approx(rho) and rho == 4.0  # capped
    assert res.summary["final_sigma"] == pytest.approx(0.1 * (0.5 / rho) ** 0.5)
    assert res.summary["sigma"] == 0.1 and torch.isfinite(res.recon).all()
    m0, res0 = run("admm", problem, iterations=10, denoiser="tv", sigma=0.1, rho_growth=1.0)
    assert m0.rho == 0.5 and m0.sigma == 0.1 and "final_rho" not in res0.summary


def test_admm_post_denoise_returns_denoised_output(problem):
    """``post_denoise`` f: the returned image is D(final iterate, f * eta), eta = sigma / sigma_factor
    for a numeric sigma, and 0 returns the iterate (the gain is measured in
    benchmarks/results/quality_post_denoise.md)."""
    kw = dict(iterations=40, denoiser="tv", sigma=0.1, sigma_factor=2.0, output="final")
    m0, res0 = run("admm", problem, **kw)
    m1, res1 = run("admm", problem, post_denoise=1.5, **kw)
    assert m0.sigma_post == 0 and "post_denoise" not in res0.summary
    assert m1.sigma_post == pytest.approx(1.5 * 0.1 / 2.0)
    assert res1.summary["post_denoise"] == {"factor": 1.5, "sigma": pytest.approx(0.075)}
    final = problem.to_image(res0.recon)  # same seed: the same iterate
    with torch.no_grad():
        expected = m1.denoiser(final, 0.075)
    assert torch.allclose(problem.to_image(res1.recon), expected, atol=1e-6)
    assert (res1.recon - res0.recon).abs().max() > 1e-3


def test_admm_divergence_guard_returns_the_least_residual_candidate(problem, monkeypatch):
    """``guard`` F: with an expansive 'denoiser' D(v) = 1.6 v the ADMM target u - w grows every
    u-step and the iterates leave the data; the guard returns the candidate of least data residual
    (checked every ``guard_every`` iterations), and leaves a run that keeps fitting alone."""
    import ctdip.methods.admm as admm

    monkeypatch.setattr(admm, "make_denoiser", lambda method: (lambda v, sigma: 1.6 * v))
    kw = dict(iterations=40, rho=20.0, u_every=2, sigma=0.1, output="final", guard_every=5)
    m0, res0 = run("admm", problem, **kw)  # guard off (admm's default): the drifted final iterate
    m1, res1 = run("admm", problem, guard=2.0, **kw)
    g = res1.summary["divergence_guard"]
    residual = m1.full_data_fit
    final_r = residual(problem.to_image(res0.recon))
    assert g["used"] and g["final_residual"] == pytest.approx(final_r, rel=1e-4)
    assert g["final_residual"] > 2 * g["min_residual"] and g["min_iter"] % 5 == 0 and g["min_iter"] < 40
    assert residual(problem.to_image(res1.recon)) == pytest.approx(g["min_residual"], rel=1e-4)
    assert "divergence_guard" not in res0.summary

    monkeypatch.undo()  # the TV prox is non-expansive: the fit only improves, the final image stays
    m2, res2 = run("admm", problem, iterations=30, denoiser="tv", sigma=0.05, output="final", guard=2.0)
    m3, res3 = run("admm", problem, iterations=30, denoiser="tv", sigma=0.05, output="final")
    assert not res2.summary["divergence_guard"]["used"]
    assert torch.equal(res2.recon, res3.recon)


def test_admm_dual_schedule_follows_the_learning_rate(problem, monkeypatch):
    """``dual_schedule: lr``: the dual step of ``w <- w + s_t (x - u)`` is the learning-rate
    factor, so with a constant rate nothing changes and with the cosine decay the dual of an
    expansive 'denoiser' winds up less; an unknown schedule is a one-line error."""
    import ctdip.methods.admm as admm
    from ctdip.dip.engine import lr_factor

    monkeypatch.setattr(admm, "make_denoiser", lambda method: (lambda v, sigma: 1.6 * v))
    kw = dict(iterations=30, rho=20.0, u_every=2, sigma=0.1, output="final")
    _, const = run("admm", problem, **kw)
    _, const_lr = run("admm", problem, dual_schedule="lr", **kw)
    assert torch.equal(const.recon, const_lr.recon)  # constant rate: s_t = 1
    full, res_full = run("admm", problem, lr_schedule="cosine", **kw)
    damped, res_damped = run("admm", problem, lr_schedule="cosine", dual_schedule="lr", **kw)
    assert damped.dual_step(1) == 1.0
    assert damped.dual_step(20) == pytest.approx(lr_factor("cosine", 20, 30)) and damped.dual_step(20) < 0.4
    assert full.dual_step(20) == 1.0
    assert damped.w.norm() < full.w.norm()
    assert not torch.equal(res_full.recon, res_damped.recon)
    with pytest.raises(UserError, match="--set dual_schedule: must be one of constant, lr"):
        run("admm", problem, dual_schedule="sometimes", iterations=2)


def test_recommended_preset_takes_lr_dual_steps_with_a_source():
    """The shipped ``recommended`` preset uses the lr-following dual step and says where it came from."""
    from ctdip.methods.params import load_preset

    preset = load_preset("recommended")
    assert preset["params"]["dual_schedule"] == "lr"
    assert "quality_tuning_runs.md" in preset["sources"]["dual_schedule"]
    assert get_method("recommended").defaults["dual_schedule"] == "constant"  # the class default is admm's


def test_hqs_lam_auto_from_the_cv_noise_level(problem):
    """``hqs-denoiser`` ``lam: auto`` (the default): sigma_0 = sigma_factor * eta, lam = mu_0 sigma_0^2
    with eta the CV noise level; a number fixes it; tv-hqs keeps lam = its TV weight; red's
    ``sigma: auto`` is sigma_factor (0.4) * the same eta; red and aseq refuse ``auto`` for their
    numeric lam with a one-line error."""
    m, res = run("hqs-denoiser", problem, iterations=10, cv_iterations=20, cv_grid="1e-4:0.1:4", mu=0.5)
    ch = res.summary["sigma_choice"]
    eta = min(ch["cv_residuals"]) ** 0.5
    assert ch["noise_level"] == pytest.approx(eta) and ch["sigma_factor"] == 0.8
    assert res.summary["sigma"] == pytest.approx(0.8 * eta) and m.lam == pytest.approx(0.5 * (0.8 * eta) ** 2)
    assert res.summary["lam"] == ch["lam"] == m.lam
    m2, res2 = run("hqs-denoiser", problem, iterations=10, lam=0.005)
    assert m2.lam == 0.005 and "sigma_choice" not in res2.summary
    m3, _ = run("tv-hqs", problem, iterations=10, tv_weight=0.01)
    assert m3.lam == m3.weight == 0.01
    m4, res4 = run("red", problem, iterations=10, sigma="auto", cv_iterations=20, cv_grid="1e-4:0.1:4")
    ch4 = res4.summary["sigma_choice"]
    assert ch4["cv_residuals"] == ch["cv_residuals"]  # the same CV: the same noise level
    assert m4.sigma == res4.summary["sigma"] == pytest.approx(0.4 * eta) == ch4["sigma"]
    assert run("red", problem, iterations=2, sigma=0.05)[0].sigma == 0.05
    for name, key in (("red", "lam"), ("aseq", "lam")):
        with pytest.raises(UserError, match=f"--set {key}: method '{name}' needs a number"):
            get_method(name)(**{key: "auto"})


def test_console_summary_says_when_the_divergence_guard_chose(capsys):
    """The guard's choice is printed with its evidence (as the other reference-free choices)."""
    from types import SimpleNamespace

    from ctdip.cli.reconstruct import print_summary

    guard = {"factor": 3.0, "min_residual": 0.0021, "min_iter": 1050, "final_residual": 0.74, "used": True}
    s = {"method": "recommended", "dataset": "scan", "iterations": 3000, "wall_time_s": 1.0,
         "result": {"divergence_guard": guard}}
    print_summary(SimpleNamespace(summary=s, recon_path="r/recon.tif", preview_path="r/preview.png"))
    out = " ".join(capsys.readouterr().out.split())
    assert "data residual grew from 0.0021 (iteration 1050) to 0.74 (> 3x): returned the candidate of iteration 1050" in out


def test_a_bfloat16_network_yaml_runs_a_dip_close_to_float32(tmp_path):
    """``precision: bfloat16`` in a network YAML reaches the method's network: the run is
    finite, returns float32, fits the data, and its image is not more than 1 dB below the
    float32 run's (64², 200 iterations of `tv` at a constant lr, final iterate: 20.42 dB against 19.00 when written; trajectories
    part by rounding, so either may come out ahead)."""
    from ctdip.core.metrics import psnr

    p = make_problem(n=64, views=30)
    bf16_yaml = tmp_path / "bf16.yaml"
    bf16_yaml.write_text("arch:\n  name: unet\n  channels: [8, 16, 16]\n  skip_channels: [4, 4, 4]\n"
                   "  precision: bfloat16\n")  # the tiny preset in bfloat16
    out = {}
    for name, net in (("fp32", "tiny"), ("bf16", str(bf16_yaml))):
        res = get_method("tv")(network=net, iterations=200, lr=0.01, tv_weight=0.02, log_every=10, checkpoint_every=0,
                              lr_schedule="constant", output="final").run(p, RunContext(seed=0, quiet=True))
        assert res.recon.dtype == torch.float32 and torch.isfinite(res.recon).all()
        assert res.history[-1]["loss"] < res.history[0]["loss"]
        out[name] = psnr(res.recon.numpy().reshape(p.reference.shape), p.reference.numpy())
    assert out["bf16"] > out["fp32"] - 1.0 and out["fp32"] > 17, out


def test_red_momentum_none_restart_and_nesterov_update_u_as_documented():
    """red's u-iteration (ctdip.methods.red): ``nesterov`` extrapolates with (t - 1)/t_new,
    ``lr`` scales that by the learning-rate factor, ``restart`` resets t when the extrapolation
    opposes the step, ``none`` never extrapolates;
    numbers worked by hand with an identity denoiser, lam = mu = 1."""
    def red(momentum, u, v, t, **kw):
        m = get_method("red")(momentum=momentum, lam=1.0, mu=1.0, u_every=1, **kw)
        m.denoiser, m.sigma, m.restarts = (lambda x, s: x), 0.1, 0
        m.start_guard()  # off (guard 0)
        m.u, m.v, m.t = torch.tensor([u]), torch.tensor([v]), t
        return m

    # the extrapolated v ran ahead of the fixed point: u_new = (D(v) + x)/2 = 0.5, <v - u_new, u_new - u> > 0
    m = red("restart", 0.0, 1.0, 3.0)
    m.after_step(1, torch.tensor([0.0]), None)
    assert m.restarts == 1 and m.t == pytest.approx((1 + 5 ** 0.5) / 2)
    assert m.u.item() == m.v.item() == pytest.approx(0.5)  # no extrapolation after a restart
    m = red("nesterov", 0.0, 1.0, 3.0)
    m.after_step(1, torch.tensor([0.0]), None)
    t_new = (1 + 37 ** 0.5) / 2
    assert m.restarts == 0 and m.t == pytest.approx(t_new)
    assert m.v.item() == pytest.approx(0.5 + (2 / t_new) * 0.5)
    m = red("lr", 0.0, 1.0, 3.0, lr_schedule="cosine", iterations=100)
    m.after_step(51, torch.tensor([0.0]), None)  # cosine factor at the half-way step: 0.05 + 0.475 = 0.525
    assert m.restarts == 0 and m.t == pytest.approx(t_new)
    assert m.v.item() == pytest.approx(0.5 + 0.525 * (2 / t_new) * 0.5)
    # the step and the extrapolation agree: restart keeps the momentum
    m = red("restart", 0.0, 0.5, 3.0)
    m.after_step(1, torch.tensor([1.0]), None)
    assert m.restarts == 0 and m.u.item() == pytest.approx(0.75)
    assert m.v.item() == pytest.approx(0.75 + (2 / t_new) * 0.75)
    m = red("none", 0.0, 0.5, 3.0)
    m.after_step(1, torch.tensor([1.0]), None)
    assert m.restarts == 1 and m.u.item() == m.v.item() == pytest.approx(0.75)


def test_red_momentum_is_in_the_summary_and_a_bad_value_is_one_line(problem):
    m, res = run("red", problem, iterations=20, sigma=0.05, u_every=5, momentum="none")
    assert res.summary["momentum"] == "none" and res.summary["momentum_restarts"] == 4
    assert torch.equal(m.u, m.v)
    _, res = run("red", problem, iterations=20, sigma=0.05, u_every=5)  # the shipped preset's
    assert res.summary["momentum"] == "lr" and res.summary["momentum_restarts"] == 0
    with pytest.raises(UserError, match=r"--set momentum: must be one of nesterov, none, restart, lr, got 'heavy'"):
        get_method("red")(momentum="heavy")


def test_input_noise_perturbs_training_passes_only(problem, monkeypatch):
    """``input_noise`` s: each training step feeds z + s eta with a fresh eta (Ulyanov et al. 2018's
    reg_noise_std); passes without gradients (logging, the final image) see z itself."""
    seen = []
    m = get_method("tv")(**{**FAST, "iterations": 4, "tv_weight": 0.01, "input_noise": 0.05})
    orig_build = m.build_network

    def build(problem):  # the run's network, with a hook that records each forward pass's input
        net = orig_build(problem)
        net.register_forward_pre_hook(lambda mod, args: seen.append((torch.is_grad_enabled(), args[0].detach().clone())))
        return net

    monkeypatch.setattr(m, "build_network", build)
    res = m.run(problem, RunContext(seed=0, quiet=True))
    train = [x for g, x in seen if g]
    clean = [x for g, x in seen if not g]
    assert len(train) == 4 and clean
    noise = [x - m.z.detach() for x in train]
    assert all(0.04 < float(d.std()) < 0.06 for d in noise), [float(d.std()) for d in noise]
    assert not torch.equal(noise[0], noise[1])  # drawn afresh every step
    assert all(torch.equal(x, m.z.detach()) for x in clean)
    _, plain = run("tv", problem, iterations=4, tv_weight=0.01)
    assert not torch.equal(res.recon, plain.recon)
    with pytest.raises(UserError, match="input_noise"):
        get_method("tv")(**{**FAST, "input_noise": -1})
