"""Engine callbacks (ES-WMV, EMA, picks), metrics rows, the CLI path and the engine's overhead hooks."""

import copy
import math

import pytest
import torch

from ctdip.dip.engine import EarlyStoppingWMV, OutputEMA, Picks
from ctdip.dip.runs import METRIC_COLUMNS, RunFolder
from ctdip.errors import UserError


def _feed(cb, xs):
    stop_at = None
    for t, x in enumerate(xs, start=1):
        if cb.on_iteration(None, t, x, {"loss": float(x.abs().sum())}):
            stop_at = t
            break
    return stop_at


def _sequence(n=400, quiet=(200, 300), seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = []
    for t in range(1, n + 1):
        s = 0.01 if quiet[0] < t <= quiet[1] else 1.0
        xs.append(1.0 + s * torch.randn(1, 1, 8, 8, generator=g))
    return xs


def test_es_wmv_picks_the_quiet_window():
    xs = _sequence()
    es = EarlyStoppingWMV(window=50, patience=1000)
    assert _feed(es, xs) is None
    # minimum variance once the window lies inside (200, 300]
    assert 250 <= es.best_iter <= 300
    assert torch.equal(es.best, xs[es.best_iter - 1])
    # the variance equals the definition: mean over voxels of the per-voxel variance of the window
    win = torch.stack(xs[-50:])
    assert es.var == pytest.approx(float(win.var(dim=0, unbiased=False).mean()), rel=1e-6)


def test_es_wmv_stops_after_patience():
    xs = _sequence()
    es = EarlyStoppingWMV(window=50, patience=30, stop=True)
    stop = _feed(es, xs)
    assert stop is not None and stop == es.stopped_at
    assert stop - es.best_iter >= 30 - 1 and stop <= 340
    with pytest.raises(UserError, match="es_window"):
        EarlyStoppingWMV(window=1, patience=1)


def test_es_delta_requires_relative_progress():
    xs = [torch.full((1, 1, 2, 2), 1.0 + 0.5 * (-1) ** t / (1 + 0.001 * t)) for t in range(1, 200)]
    loose = EarlyStoppingWMV(window=4, patience=20, delta=0.0, stop=True)
    strict = EarlyStoppingWMV(window=4, patience=20, delta=0.1, stop=True)
    assert _feed(loose, xs) is None  # variance keeps shrinking a little
    assert _feed(strict, xs) is not None  # but never by 10 %


def test_ema_and_picks():
    ema = OutputEMA(0.9)
    for v in (1.0, 2.0, 3.0):
        ema.on_iteration(None, 0, torch.full((1, 1, 2, 2), v), {})
    expected = (1.0 * 0.9 + 0.1 * 2.0) * 0.9 + 0.1 * 3.0
    assert torch.allclose(ema.value, torch.full((1, 1, 2, 2), expected))
    ref = torch.zeros(1, 1, 4, 4)
    ref[..., 1:3, 1:3] = 1
    picks = Picks(ref)
    losses = [3.0, 1.0, 2.0]
    imgs = [ref + 0.5, ref + 0.1, ref + 0.3]
    for t, (l, x) in enumerate(zip(losses, imgs), start=1):
        picks.on_iteration(None, t, x, {"loss": l})
    assert picks.min_loss_iter == 2 and picks.peak_iter == 2
    assert picks.peak_psnr == pytest.approx(10 * math.log10(1 / 0.01))


def test_metrics_csv_columns_and_summary(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_methods import make_problem

    from ctdip.dip.context import RunContext
    from ctdip.methods import get_method

    p = make_problem(n=32, views=20)
    run = RunFolder(tmp_path / "r").create()
    calls = []
    res = get_method("vanilla")(network="tiny", iterations=12, lr=0.01, log_every=5, es_window=3).run(
        p, RunContext(run=run, seed=0, progress=lambda i, n, row: calls.append((i, n))))
    rows = run.read_metrics()
    assert [r["iter"] for r in rows] == [1, 5, 10, 12]
    assert list(rows[0]) == METRIC_COLUMNS
    assert all(r["psnr"] is not None and r["ssim"] is not None for r in rows)
    assert rows[0]["wmv"] is None and rows[-1]["wmv"] > 0
    assert calls == [(i, 12) for i in range(1, 13)]
    s = res.summary
    for k in ("peak_psnr", "peak_iter", "es_iter", "es_psnr", "final_psnr", "final_ssim", "train_time_s",
              "loss_normalisation", "network"):
        assert k in s, k
    assert s["loss_normalisation"]["y_norm2"] == pytest.approx(float((p.y ** 2).sum()), rel=1e-6)


def test_cli_writes_es_ema_best_and_stop_early(tmp_path):
    from ctdip.cli.main import main

    scan = tmp_path / "scan"
    assert main(["simulate", str(scan), "--size", "32", "--angles", "20", "--noise", "0.05", "--quiet"]) == 0
    out = tmp_path / "run"
    rc = main(["reconstruct", str(scan), "--method", "vanilla", "--network", "tiny", "-n", "40", "--lr", "0.01",
               "--set", "es_window=5", "--set", "es_patience=3", "--stop-early", "-o", str(out), "--quiet"])
    assert rc == 0
    for f in ("recon.tif", "recon_es.tif", "recon_ema.tif", "recon_best.tif", "metrics.csv", "checkpoint.pt"):
        assert (out / f).exists(), f
    rows = RunFolder(out).read_metrics()
    assert rows[-1]["iter"] < 40  # ES-WMV ended the run
    rc = main(["reconstruct", str(scan), "--method", "vanilla", "--set", "bogus=1", "-o", str(tmp_path / "b"), "--quiet"])
    assert rc == 2


def test_make_adam_is_fused_where_torch_has_it_and_equals_the_loop_adam():
    """The engine's Adam: the fused kernel on CPU (torch >= 2.4), the same update as the
    per-tensor loop to float rounding over 20 steps; a torch without it gets the loop."""
    from ctdip.dip.engine import make_adam

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 1))
    b = copy.deepcopy(a)
    oa = make_adam(a.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    ob = torch.optim.Adam(b.parameters(), lr=1e-2, foreach=False)
    assert oa.defaults["fused"] is True
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(20):
        for net, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            (net(x) - x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)
    assert make_adam(a.parameters(), "adamw", lr=1e-3).__class__ is torch.optim.AdamW

    class NoFused(torch.optim.Adam):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, **kw)

    import ctdip.dip.engine as eng

    orig = eng.torch.optim.Adam
    eng.torch.optim.Adam = NoFused
    try:
        assert not make_adam(a.parameters(), lr=1e-3).defaults.get("fused")
    finally:
        eng.torch.optim.Adam = orig
