"""DRUNet denoiser D(x, sigma) and its training (`ctdip pretrain denoiser`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctdip.networks import build_network
from ctdip.networks.drunet import DRUNet, drunet_arch
from ctdip.training.denoiser import DenoiserConfig, train_denoiser, validation_set


def test_drunet_shapes_sigma_forms_and_scale_equivariance():
    torch.manual_seed(0)
    net = build_network(drunet_arch("tiny"))
    assert isinstance(net, DRUNet) and net.in_channels == 2 and net.out_channels == 1
    x = torch.rand(3, 1, 21, 19)  # not a multiple of 4: padded and cropped back
    out = net(x, 0.1)
    assert out.shape == x.shape
    # float, (N,) tensor and an appended noise map all mean the same thing
    assert torch.allclose(out, net(x, torch.full((3,), 0.1)), atol=1e-6)
    assert torch.allclose(out, net(torch.cat([x, torch.full_like(x, 0.1)], 1)), atol=1e-6)
    # per-item sigma is used per item
    mixed = net(x, torch.tensor([0.1, 0.3, 0.1]))
    assert torch.allclose(mixed[0], out[0], atol=1e-6) and not torch.allclose(mixed[1], out[1], atol=1e-4)
    # bias-free + ReLU + residual: D(a x, a sigma) = a D(x, sigma)
    assert torch.allclose(net(2.5 * x, 0.25), 2.5 * out, atol=1e-5)
    net3 = DRUNet(channels=[4, 8], blocks=1, dim=3)
    assert net3(torch.rand(1, 1, 6, 7, 9), 0.05).shape == (1, 1, 6, 7, 9)
    with pytest.raises(ValueError):
        net(x, torch.tensor([0.1, 0.2]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("den") / "denoiser.pt"
    cfg = DenoiserConfig(size="tiny", patch=32, batch_size=12, steps=200, lr=3e-3, val_every=100,
                         checkpoint_every=100, n_walnuts=4, seed=0)
    return train_denoiser(out, cfg), cfg


def test_denoiser_lowers_mse_at_three_noise_levels(trained):
    res, cfg = trained
    first = res.history[0]
    assert res.history[-1]["val_loss"] < 0.6 * first["val_loss"]
    for s, (mse_noisy, mse_den) in res.val.items():
        # measured: 0.05: 2.48e-3 -> 2.07e-3, 0.1: 9.99e-3 -> 5.15e-3, 0.2: 3.99e-2 -> 1.25e-2
        assert mse_den < 0.92 * mse_noisy, (s, mse_noisy, mse_den)
    gains = {s: mn / md for s, (mn, md) in res.val.items()}
    assert gains[0.2] > 2.0 and gains[0.1] > 1.4


def test_weights_file_and_plugging_into_admm_denoiser_interface(trained):
    res, cfg = trained
    path = res.path
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert obj["format"] == "ctdip-weights/1" and obj["kind"] == "denoiser"
    assert obj["arch"]["name"] == "drunet" and obj["geometry_key"] is None
    assert obj["data_spec"]["sigma_range"] == [0.0, 0.2] and obj["data_spec"]["patch"] == 32
    assert (path.with_name("denoiser.ckpt") / "step_000100.pt").exists()
    # the methods' loader (ctdip.priors.denoisers) calls it as D(x, sigma)
    from ctdip.priors.denoisers import load_denoiser

    D = load_denoiser(str(path))
    clean = validation_set(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    mse_noisy = float(((noisy - clean) ** 2).mean())
    mse_den = float(((D(noisy, 0.1) - clean) ** 2).mean())
    assert mse_den < 0.7 * mse_noisy


def test_resume_continues_to_the_same_weights(tmp_path, one_thread):
    cfg = DenoiserConfig(size="tiny", patch=16, batch_size=4, steps=12, lr=1e-3, val_every=6,
                         checkpoint_every=0, n_walnuts=2, sources=("ellipses", "walnut"))
    train_denoiser(tmp_path / "full.pt", cfg)

    class Stop(Exception):  # interrupt after step 6 (the state is saved at the validation of step 6)
        pass

    def stop_at_6(step, total, row):
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        train_denoiser(tmp_path / "part.pt", cfg, progress=stop_at_6)
    resumed = train_denoiser(tmp_path / "part.pt", cfg, resume=True)
    a = torch.load(tmp_path / "full.ckpt" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part.ckpt" / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert resumed.history[-1]["step"] == 12


def test_user_volumes_source(tmp_path):
    import tifffile

    from ctdip.core.data.phantoms import walnut

    vol = np.stack([walnut((40, 40), seed=s) for s in range(3)])
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    cfg = DenoiserConfig(size="tiny", patch=24, batch_size=4, steps=3, val_every=0, checkpoint_every=0,
                         sources=("volumes",), volumes=[str(tmp_path / "vol.tif")])
    res = train_denoiser(tmp_path / "d.pt", cfg)
    assert res.path.exists()


def test_cli_denoiser_and_errors(run_cli, tmp_path, capsys):
    out = tmp_path / "d.pt"
    code = run_cli("pretrain", "denoiser", "-o", out, "--size", "tiny", "--patch", "16", "--steps", "4",
                   "--batch-size", "4", "--val-every", "2", "--device", "cpu", "-q")
    assert code == 0 and out.exists()
    assert run_cli("pretrain", "denoiser", "-o", out, "--sigma-max", "0", "-q") == 2
    assert "sigma" in capsys.readouterr().err
    assert run_cli("pretrain", "denoiser", "-o", out, "--volume", tmp_path / "missing.tif", "--steps", "1",
                   "--device", "cpu", "-q") == 2
    err = capsys.readouterr().err
    assert "missing.tif" in err and "not found" in err and "Traceback" not in err
    assert run_cli("pretrain", "denoiser", "-o", out, "--size", "huge", "-q") == 2
    assert "unknown denoiser size" in capsys.readouterr().err


def test_npy_volumes_mixed_noise_and_training_metadata(tmp_path, one_thread):
    from ctdip.core.data.phantoms import walnut
    from ctdip.training.denoiser import training_noise

    vol = np.stack([walnut((40, 40), seed=s) for s in (5, 6)]).astype(np.float32)
    np.save(tmp_path / "vol.npy", 3.0 * vol)
    cfg = DenoiserConfig(size="tiny", patch=24, batch_size=4, steps=3, val_every=0, checkpoint_every=0,
                         sources=("walnut", "volumes"), volumes=[str(tmp_path / "vol.npy")], noise="mixed",
                         n_walnuts=2, command="ctdip pretrain denoiser -o d.pt", note="two walnuts")
    res = train_denoiser(tmp_path / "d.pt", cfg)
    obj = torch.load(res.path, weights_only=True)
    tr = obj["extra"]["training"]
    assert obj["data_spec"]["noise"] == "mixed" and tr["command"] == "ctdip pretrain denoiser -o d.pt"
    assert tr["volumes"][0]["name"] == "vol.npy" and tr["volumes"][0]["shape"] == [2, 40, 40]
    assert tr["walnut_seeds"] == [1000, 1001] and tr["steps"] == 3 and tr["note"] == "two walnuts"
    gains = tr["validation_psnr_gain_db"]
    for s, (mn, md) in res.val.items():
        assert abs(gains[f"{s:g}"] - 10 * np.log10(mn / md)) < 1e-3
    # mixed noise: unit variance, correlated (neighbours alike) in the first half, white in the second
    n = training_noise((8, 1, 64, 64), "mixed", torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.allclose(n.flatten(1).std(1), torch.ones(8), atol=0.05)
    lag1 = (n[..., 1:] * n[..., :-1]).flatten(1).mean(1)
    assert lag1[:4].min() > 0.3 and lag1[4:].abs().max() < 0.1, lag1
    with pytest.raises(Exception, match="--noise: must be one of gaussian, mixed, got 'pink'"):
        DenoiserConfig(noise="pink").validate()


def test_recorded_command_line_is_quoted_and_has_no_local_paths():
    from ctdip.cli.pretrain import _command_line

    argv = ["pretrain", "denoiser", "-o", "/a/b/d.pt", "--volume", "/x/v.npy", "--note", "z 30/50 a.b", "--resume"]
    assert _command_line(argv) == "ctdip pretrain denoiser -o d.pt --volume v.npy --note 'z 30/50 a.b'"
