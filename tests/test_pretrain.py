"""EDIP pretraining (`ctdip pretrain`): learning, weight files, resume, warm-start cache, geometry checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctdip.networks import network_preset
from ctdip.training.pretrain import PretrainConfig, pretrain, pretrain_for_problem
from ctdip.training.trainer import checkpoint_dir
from ctdip.training.warmstart import ensure_warm_start


def make_problem(n: int, views: int = 20, seed: int = 0):
    from ctdip.core.data import Scan
    from ctdip.core.data.phantoms import walnut
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
    from ctdip.core.operators import RayTransform
    from ctdip.core.problem import Problem

    geom = ProjectionGeometry.circular("fan", np.linspace(0, 2 * np.pi, views, endpoint=False),
                                       det_cols=int(1.5 * n), pixel_mm=1.0,
                                       source_origin_mm=4.0 * n, source_detector_mm=6.0 * n)
    vol = VolumeGeometry.fov(geom, n)
    ref = walnut((n, n), seed=seed)[None].astype(np.float32)
    y = RayTransform(geom, vol, backend="matrix")(torch.as_tensor(ref)).numpy()
    y = y + 0.05 * np.abs(y).mean() * np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    return Problem.from_scan(Scan(projections=y, geometry=geom, volume=vol, reference=ref), backend="matrix")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    """64^2, 20 fan views, tiny U-Net, 40 steps x 8 = 320 ellipse samples."""
    problem = make_problem(64)
    out = tmp_path_factory.mktemp("pre") / "w.pt"
    cfg = PretrainConfig(steps=40, batch_size=8, lr=3e-3, val_every=10, checkpoint_every=20, seed=0)
    res = pretrain_for_problem(problem, network_preset("tiny", 2), out, cfg)
    return problem, res, cfg


def test_tiny_pretraining_lowers_validation_loss(tiny_run):
    problem, res, cfg = tiny_run
    h = res.history
    assert [r["step"] for r in h] == [0, 10, 20, 30, 40]
    # measured: ellipse val MSE 0.41 -> 0.0094, Shepp-Logan PSNR 2.3 dB -> 15.3 dB (best, step 20)
    assert h[-1]["val_loss"] < 0.3 * h[0]["val_loss"]
    assert res.best_value > h[0]["val_psnr"] + 5
    assert res.samples_per_s > 0 and res.data_samples_per_s > res.samples_per_s
    ck = checkpoint_dir(res.path)
    for name in ("state.pt", "best.pt", "last.pt", "step_000020.pt", "step_000040.pt", "log.csv"):
        assert (ck / name).exists(), name
    assert len((ck / "log.csv").read_text().strip().splitlines()) == 1 + len(h)


def test_weights_file_records_everything_and_round_trips(tiny_run):
    from ctdip import __version__
    from ctdip.networks.weights import build_from_weights, load_weights, problem_geometry_key

    problem, res, cfg = tiny_run
    obj = torch.load(res.path, map_location="cpu", weights_only=True)  # plain data only
    assert obj["format"] == "ctdip-weights/1" and obj["kind"] == "unet"
    assert obj["arch"] == network_preset("tiny", 2)
    assert obj["geometry_key"] == problem_geometry_key(problem)
    assert obj["ctdip_version"] == __version__
    spec = obj["data_spec"]
    assert spec["phantoms"] == "random_ellipses" and spec["noise_rel"] == 0.05 and spec["n_ellipses"] == 40
    assert spec["input"] == "fbp:ram-lak" and spec["volume_shape"] == [1, 64, 64]
    # the written file is the best checkpoint (select="psnr")
    assert res.path.read_bytes() == (checkpoint_dir(res.path) / "best.pt").read_bytes()
    assert obj["extra"]["step"] == res.best_step
    # round trip: the rebuilt network maps the problem's FBP better than the FBP itself
    net = build_from_weights(load_weights(res.path, kind="unet")).eval()
    with torch.no_grad():
        out = net(problem.to_image(problem.x_init))
        again = build_from_weights(load_weights(res.path))(problem.to_image(problem.x_init))
    assert torch.equal(out, again)
    from ctdip.core.metrics import psnr

    assert psnr(out[0, 0], problem.reference[0]) > 14.5  # measured 16.1 dB; FBP 13.5 dB


def test_resume_continues_exactly(tmp_path, one_thread):
    problem = make_problem(32, views=12)
    arch = network_preset("tiny", 2)
    cfg = PretrainConfig(steps=8, batch_size=4, val_every=4, checkpoint_every=0, val_samples=4)
    pretrain_for_problem(problem, arch, tmp_path / "full.pt", cfg)

    class Stop(Exception):
        pass

    def stop(step, total, row):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        pretrain_for_problem(problem, arch, tmp_path / "part.pt", cfg, progress=stop)
    assert not (tmp_path / "part.pt").exists()  # nothing written before the end
    res = pretrain_for_problem(problem, arch, tmp_path / "part.pt", cfg, resume=True)
    a = torch.load(tmp_path / "full.ckpt" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part.ckpt" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in res.history] == [0, 4, 8]
    # other settings than the saved state: refused with a clear message
    from ctdip.errors import UserError

    with pytest.raises(UserError, match="other settings"):
        pretrain_for_problem(problem, arch, tmp_path / "part.pt", PretrainConfig(steps=9, batch_size=4), resume=True)


def test_rise_time_selection(tmp_path, one_thread):
    problem = make_problem(32, views=12)
    cfg = PretrainConfig(steps=6, batch_size=4, val_every=3, checkpoint_every=3, val_samples=4,
                         select="rise-time", select_iters=6)
    logs: list[str] = []
    res = pretrain_for_problem(problem, network_preset("tiny", 2), tmp_path / "w.pt", cfg, log=logs.append)
    assert res.selected.startswith("shortest rise time")
    assert sum("rise time" in m for m in logs) == 3  # step_000003, step_000006, best
    names = [p.name for p in checkpoint_dir(res.path).glob("*.pt")]
    assert any(res.path.read_bytes() == (checkpoint_dir(res.path) / n).read_bytes() for n in names)


def test_ensure_warm_start_pretrains_once_and_caches(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("CTDIP_CACHE_DIR", str(tmp_path / "cache"))
    problem = make_problem(32, views=10)
    arch = network_preset("tiny", 2)
    p1 = ensure_warm_start(problem, arch, steps=3, batch_size=2, val_samples=2)
    err = capsys.readouterr().err
    assert "no cached EDIP warm start" in err and str(p1) in err and "warm start step 3/3" in err
    assert p1.parent == tmp_path / "cache" / "warmstarts" and p1.exists()
    assert not checkpoint_dir(p1).exists()  # training folder cleaned up
    mtime = p1.stat().st_mtime_ns
    p2 = ensure_warm_start(problem, arch, steps=3, batch_size=2)
    assert p2 == p1 and p2.stat().st_mtime_ns == mtime and capsys.readouterr().err == ""
    # another geometry or architecture: another cache entry
    other = make_problem(32, views=11)
    assert ensure_warm_start(other, arch, quiet=True, steps=1, batch_size=2, val_samples=2) != p1
    with pytest.raises(TypeError):
        ensure_warm_start(make_problem(32, views=9), arch, quiet=True, bogus=1)


def test_3d_cone_pretraining_runs_on_ellipsoids(tmp_path, one_thread):
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
    from ctdip.core.operators import RayTransform

    g = ProjectionGeometry.circular("cone", np.linspace(0, 2 * np.pi, 8, endpoint=False), det_cols=24,
                                    det_rows=24, pixel_mm=1.0, source_origin_mm=64, source_detector_mm=96)
    v = VolumeGeometry.fov(g, 16)
    res = pretrain(RayTransform(g, v), g, v, network_preset("tiny", 3), tmp_path / "w3.pt",
                   PretrainConfig(steps=2, batch_size=2, val_every=2, checkpoint_every=0, val_samples=2))
    obj = torch.load(res.path, weights_only=True)
    assert obj["arch"]["dim"] == 3 and obj["data_spec"]["volume_shape"] == [16, 16, 16]
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    from ctdip.cli.main import main

    d = tmp_path_factory.mktemp("scan") / "scan32"
    assert main(["simulate", str(d), "--phantom", "walnut", "--geometry", "fan", "--angles", "40",
                 "--size", "32", "--noise", "0.05", "-q"]) == 0
    return d


def test_cli_pretrain_then_reconstruct_edip_and_geometry_mismatch(run_cli, scan_dir, tmp_path, capsys, one_thread,
                                                                  monkeypatch):
    monkeypatch.setenv("CTDIP_CACHE_DIR", str(tmp_path / "cache"))
    w20 = tmp_path / "w20.pt"
    common = ["--network", "tiny", "--steps", "4", "--batch-size", "4", "--val-every", "2", "--device", "cpu", "-q"]
    assert run_cli("pretrain", "--scan", scan_dir, "--angles", "20", "-o", w20, *common) == 0
    # a bare geometry.yaml with the same options gives the same geometry key
    wg = tmp_path / "wg.pt"
    assert run_cli("pretrain", "--geometry", scan_dir / "geometry.yaml", "--angles", "20", "-o", wg, *common) == 0
    k1 = torch.load(w20, weights_only=True)["geometry_key"]
    assert torch.load(wg, weights_only=True)["geometry_key"] == k1
    rec = ["--method", "edip", "-n", "3", "--device", "cpu", "-q"]
    assert run_cli("reconstruct", scan_dir, "--angles", "20", "--weights", w20, "-o", tmp_path / "ok", *rec) == 0
    capsys.readouterr()
    # weights made for 20 views, scan read with 10: refused, exit 2, one clear line
    code = run_cli("reconstruct", scan_dir, "--angles", "10", "--weights", w20, "-o", tmp_path / "bad", *rec)
    err = capsys.readouterr().err
    assert code == 2 and "another geometry" in err and "--force" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code = run_cli("reconstruct", scan_dir, "--angles", "10", "--weights", w20, "--force",
                   "-o", tmp_path / "forced", *rec)
    assert code == 0 and (tmp_path / "forced" / "recon.tif").exists()


def test_cli_errors(run_cli, scan_dir, tmp_path, capsys):
    assert run_cli("pretrain", "-o", tmp_path / "w.pt", "-q") == 2
    assert "--scan" in capsys.readouterr().err
    assert run_cli("pretrain", "--scan", scan_dir, "--geometry", scan_dir / "geometry.yaml", "-o",
                   tmp_path / "w.pt", "-q") == 2
    capsys.readouterr()
    assert run_cli("pretrain", "--scan", scan_dir, "-q") == 2
    assert "-o/--output" in capsys.readouterr().err
    assert run_cli("pretrain", "--scan", tmp_path / "nope", "-o", tmp_path / "w.pt", "-q") == 2
    assert "nope" in capsys.readouterr().err
    assert run_cli("pretrain", "--scan", scan_dir, "-o", tmp_path / "w.pt", "--select", "magic", "-q") == 2
    assert "--select" in capsys.readouterr().err
    code = run_cli("pretrain", "--scan", scan_dir, "-o", tmp_path / "w.pt", "--resume", "--network", "tiny",
                   "--device", "cpu", "-q")
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err and "Traceback" not in err


@pytest.mark.parametrize("opts", [{}, {"mode": "3d"}, {"mode": "3d", "bin": 2, "angles": 6}, {"slice": "+2"},
                                  {"slice": "3", "angles": 6, "bin": 2, "size": 12}, {"size": 24}])
def test_a_bare_geometry_yaml_gives_the_geometry_of_its_scan(opts, tmp_path_factory):
    """``load_geometry`` (``ctdip pretrain --geometry``) applies the scan options as ``load_scan`` does."""
    from ctdip.cli.main import main
    from ctdip.core.data.loader import load_geometry, load_scan
    from ctdip.networks.weights import geometry_key

    d = tmp_path_factory.getbasetemp() / "cone16"
    if not d.exists():
        assert main(["simulate", str(d), "--geometry", "cone", "--size", "16", "--angles", "12", "-q"]) == 0
    scan = load_scan(d, read_reference=False, **opts)
    geom, vol = load_geometry(d / "geometry.yaml", **opts)
    assert geometry_key(geom, vol) == geometry_key(scan.geometry, scan.volume)
    assert tuple(vol.shape) == tuple(scan.volume.shape) and geom.det_shape == scan.geometry.det_shape
