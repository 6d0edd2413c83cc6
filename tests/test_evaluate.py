"""`ctdip evaluate`: numbers agree with scikit-image, curve statistics, plots, formats, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from ctdip.core import metrics
from ctdip.core.io import write_tiff
from ctdip.dip.runs import RunFolder
from ctdip.errors import UserError
from ctdip.workflows.evaluate import evaluate, format_rows, load_entry


def _phantom(n: int = 48, z: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    img = 0.8 * ((yy - n / 2) ** 2 + (xx - n / 2.2) ** 2 < (n / 3) ** 2) + 0.5 * ((yy - n / 3) ** 2 + (xx - n / 1.7) ** 2 < 20)
    vol = np.stack([img * (1 + 0.1 * k) for k in range(z)]).astype(np.float32)
    return vol


def _sk_ssim(x, ref, dr):
    return sk_ssim(x, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=dr)


def _make_run(path, recon, method="tv", psnrs=None, summary=None, config=None, es=None):
    r = RunFolder(path).create(exist_ok=True)
    r.write_config(config or {"method": method})
    r.write_volume("recon.tif", recon, 0.1)
    if es is not None:
        r.write_volume("recon_es.tif", es, 0.1)
    if psnrs is not None:
        r.write_metrics([{"iter": 10 * i, "loss": 1.0, "psnr": p, "holdout": 0.5 / (i + 1), "time_s": 0.1 * i}
                         for i, p in enumerate(psnrs)])
    r.write_summary(summary or {"method": method, "early_stop": {"iter": 30}, "wall_time_s": 12.5})
    return r.path


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(1)
    ref = _phantom()
    write_tiff(tmp_path / "reference.tif", ref, 0.1)
    recons = [ref + s * rng.standard_normal(ref.shape).astype(np.float32) for s in (0.03, 0.1)]
    curve = [20.0, 24.0, 26.0, 27.0, 27.5, 27.2, 27.1, 27.0, 26.9, 26.95]
    p0 = _make_run(tmp_path / "a", recons[0], "tv", curve, es=recons[1])
    p1 = _make_run(tmp_path / "b", recons[1], "vanilla", [c - 1 for c in curve])
    return tmp_path, ref, recons, [p0, p1], curve


def test_psnr_ssim_match_scikit_image(runs, tmp_path):
    root, ref, recons, paths, _ = runs
    vol = recons[1][0] + 0.01
    np.save(tmp_path / "other.npy", vol)
    rows, entries, refs = evaluate([*paths, tmp_path / "other.npy"], reference=root / "reference.tif")
    dr = float(ref.max() - ref.min())
    for row, x in zip(rows, [recons[0][0], recons[1][0], vol]):
        assert abs(row["psnr"] - sk_psnr(ref[0], x, data_range=dr)) < 1e-3
        assert abs(row["ssim"] - _sk_ssim(x, ref[0], dr)) < 1e-4
    # the early-stopped pick is evaluated from recon_es.tif
    assert abs(rows[0]["es_psnr"] - sk_psnr(ref[0], recons[1][0], data_range=dr)) < 1e-3
    assert rows[2]["method"] == "file" and rows[2]["peak_psnr"] is None


def test_masked_and_3d_match_scikit_image(tmp_path):
    rng = np.random.default_rng(2)
    ref = _phantom(40, z=3)
    x = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    write_tiff(tmp_path / "ref.tif", ref)
    write_tiff(tmp_path / "x.tif", x)
    dr = float(ref.max() - ref.min())
    (row,), _, _ = evaluate([tmp_path / "x.tif"], reference=tmp_path / "ref.tif")
    assert abs(row["psnr"] - sk_psnr(ref, x, data_range=dr)) < 1e-3
    assert abs(row["ssim"] - np.mean([_sk_ssim(x[k], ref[k], dr) for k in range(3)])) < 1e-4
    (row,), _, _ = evaluate([tmp_path / "x.tif"], reference=tmp_path / "ref.tif", mask="circle")
    m = metrics.circle_mask(ref.shape)
    mse = float(((x.astype(np.float64) - ref) ** 2)[m].mean())
    assert abs(row["psnr"] - 10 * np.log10(dr**2 / mse)) < 1e-3
    sk_masked = np.mean([_sk_ssim_map(x[k], ref[k], dr)[m[k]].mean() for k in range(3)])
    assert abs(row["ssim"] - sk_masked) < 1e-4


def _sk_ssim_map(x, ref, dr):
    return sk_ssim(x, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=dr, full=True)[1]


def test_curve_statistics(runs):
    root, _, _, paths, curve = runs
    rows, _, _ = evaluate(paths, reference=root / "reference.tif")
    a = rows[0]
    assert a["peak_psnr"] == pytest.approx(27.5) and a["peak_iter"] == 40
    assert a["final_psnr"] == pytest.approx(26.95) and a["final_iter"] == 90
    assert a["steady_psnr"] == pytest.approx(26.95)  # median of the last 10 % (one point)
    assert a["rise_time"] == 30  # first iteration >= 26.85 dB
    assert a["es_iter"] == 30 and a["wall_s"] == pytest.approx(12.5)
    assert a["holdout"] == pytest.approx(0.05)
    # run b has no recon_es.tif: its early-stop PSNR is read off the curve at es_iter
    assert rows[1]["es_psnr"] == pytest.approx(26.0)


def test_runs_without_reference_report_what_they_can(tmp_path):
    ref = _phantom(32)
    p = _make_run(tmp_path / "r", ref * 0.9, "cgls", [10.0, 12.0, 11.0],
                  summary={"method": "cgls", "final": {"psnr": 31.2, "ssim": 0.9}, "wall_time_s": 1.0})
    rows, entries, refs = evaluate([p])
    assert refs == {}
    assert rows[0]["psnr"] == pytest.approx(31.2) and rows[0]["peak_psnr"] == pytest.approx(12.0)
    np.save(tmp_path / "v.npy", ref)
    rows, _, _ = evaluate([tmp_path / "v.npy"])
    assert rows[0]["psnr"] is None


def test_reference_from_run_config(tmp_path):
    scan = tmp_path / "scan"
    ref = _phantom(32)
    write_tiff(scan / "reference.tif", ref)
    p = _make_run(tmp_path / "r", ref + 0.05, "fbp", None, config={"method": "fbp", "scan": {"folder": str(scan)}})
    rows, _, refs = evaluate([p])
    assert "r" in refs
    assert rows[0]["psnr"] == pytest.approx(10 * np.log10(float(ref.max() - ref.min()) ** 2 / 0.05**2), abs=1e-3)


def test_formats_round_trip(runs):
    root, _, _, paths, _ = runs
    rows, _, _ = evaluate(paths, reference=root / "reference.tif")
    js = json.loads(format_rows(rows, "json"))
    assert js[0]["psnr"] == pytest.approx(rows[0]["psnr"])
    csv_lines = format_rows(rows, "csv").splitlines()
    assert csv_lines[0].startswith("name,method,psnr,ssim") and len(csv_lines) == 3
    assert abs(float(csv_lines[1].split(",")[2]) - rows[0]["psnr"]) < 1e-6
    md = format_rows(rows, "md").splitlines()
    assert md[0].startswith("| run | method | PSNR") and len(md) == 4
    assert "27.50" in format_rows(rows, "table")


def test_cli_writes_tables_and_plots(runs, run_cli, capsys):
    root, _, _, paths, _ = runs
    out = root / "ev"
    code = run_cli("evaluate", *paths, "--reference", root / "reference.tif", "--format", "csv", "-o", out)
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("name,method") and len(printed) == 3
    for name in ("evaluation.csv", "evaluation.md", "evaluation.json"):
        assert (out / name).stat().st_size > 100
    for name in ("psnr_curves.png", "montage.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000


def test_user_errors(runs, run_cli, capsys, tmp_path):
    root, _, _, paths, _ = runs
    assert run_cli("evaluate", tmp_path / "missing", "-o", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    write_tiff(tmp_path / "small.tif", np.zeros((1, 8, 8), np.float32))
    assert run_cli("evaluate", paths[0], "--reference", tmp_path / "small.tif", "-o", tmp_path / "o") == 2
    assert "does not match reference shape" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown mask"):
        evaluate(paths, mask="square")
    (tmp_path / "unfinished").mkdir()
    RunFolder(tmp_path / "unfinished").write_config({"method": "tv"})
    with pytest.raises(UserError, match="unfinished run"):
        load_entry(tmp_path / "unfinished")
    skipped = []  # in a glob over runs/*/ an unfinished run is skipped with a note
    rows, _, _ = evaluate([paths[0], tmp_path / "unfinished"], on_unfinished=skipped.append)
    assert len(rows) == 1 and skipped == [tmp_path / "unfinished"]
    assert run_cli("evaluate", paths[0], tmp_path / "unfinished", "-o", tmp_path / "o", "--no-plots") == 0
    assert "skipping unfinished run" in capsys.readouterr().err
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(UserError, match="cannot read volume"):
        load_entry(tmp_path / "bad.tif")
