"""The DRUNet denoiser shipped inside ctdip (``--denoiser learned``, ctdip/weights/drunet_ct.pt)."""

from __future__ import annotations

import math
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ctdip.priors.denoisers import CNNDenoiser, load_denoiser, shipped_denoiser_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from test_methods import FAST, make_problem  # noqa: E402


def test_shipped_file_is_in_the_package_and_in_package_data():
    path = shipped_denoiser_path()
    assert path == Path(str(resources.files("ctdip") / "weights" / "drunet_ct.pt")) and path.is_file()
    assert path.stat().st_size < 8 * 2**20  # a few MB
    # pyproject's package-data puts it into wheels (checked by `pip wheel . --no-deps`, see CHANGELOG)
    pkg_data = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"weights/*.pt"' in pkg_data and path.relative_to(path.parent.parent).match("weights/*.pt")


def test_metadata_records_training_and_loads_weights_only():
    obj = torch.load(shipped_denoiser_path(), map_location="cpu", weights_only=True)
    assert obj["format"] == "ctdip-weights/1" and obj["kind"] == "denoiser" and obj["arch"]["name"] == "drunet"
    tr = obj["extra"]["training"]
    assert tr["command"].startswith("ctdip pretrain denoiser") and tr["steps"] >= 1000
    assert {"ellipses", "walnut", "volumes"} <= set(obj["data_spec"]["sources"])
    # training walnuts never use the benchmark (0) or tuning (1) seeds
    assert tr["walnut_seeds"] and min(tr["walnut_seeds"]) >= 1000
    gains = tr["validation_psnr_gain_db"]
    assert set(gains) == {"0.05", "0.1", "0.2"} and all(g > 3.0 for g in gains.values()), gains


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(float(ref.max() - ref.min()) ** 2 / float(((x - ref) ** 2).mean()))


def test_improves_a_held_out_walnut_at_sigma_0_1_by_3_db(one_thread):
    from ctdip.core.data.phantoms import walnut

    w = walnut((64, 64), seed=424242)  # a seed never used in training (1000-1007) or validation (999)
    clean = torch.from_numpy((w / w.max()).astype(np.float32))[None, None]
    g = torch.Generator().manual_seed(0)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    D = load_denoiser("learned")
    assert D.name == "learned"
    den = D(noisy, 0.1)
    gain = _psnr(den, clean) - _psnr(noisy, clean)
    # measured: +5.3 dB (20.06 -> 25.32 dB)
    assert gain >= 3.0, gain


def test_2d_network_denoises_a_volume_slice_by_slice(one_thread):
    D = load_denoiser("learned")
    assert isinstance(D, CNNDenoiser)
    D.chunk = 2  # exercise the chunking
    vol = torch.rand(1, 1, 5, 24, 24)
    out = D(vol, 0.1)
    assert out.shape == vol.shape
    for k in range(5):
        assert torch.allclose(out[:, :, k], D(vol[:, :, k], 0.1), atol=1e-5)


def test_admm_hqs_red_default_to_the_shipped_denoiser_and_lower_their_loss(one_thread):
    from ctdip.dip.context import RunContext
    from ctdip.methods import get_method

    problem = make_problem(n=32, views=20)
    for name in ("admm", "hqs-denoiser", "red"):
        m = get_method(name)(**{**FAST, "iterations": 30})
        assert m.params["denoiser"] == "learned"
        res = m.run(problem, RunContext(seed=0, quiet=True))
        h = res.history
        assert res.summary["denoiser"] == "learned"
        assert h[-1]["loss"] < 0.5 * h[0]["loss"] and torch.isfinite(res.recon).all(), (name, h[0], h[-1])
