"""One definition of each reported number (issue 11, item 7): `returned` (recon.tif), `final` (last
logged iterate), `peak` (best logged iterate); the console, summary.json and `ctdip evaluate` agree."""

import re

import pytest

from ctdip.cli.main import main
from ctdip.core import metrics
from ctdip.dip.runs import RunFolder
from ctdip.workflows.evaluate import evaluate


def test_curve_numbers_definitions():
    rows = [{"iter": 1, "psnr": 10.0}, {"iter": 5, "psnr": 14.0, "ssim": 0.5}, {"iter": 10, "psnr": 14.0},
            {"iter": 15, "psnr": float("nan")}, {"iter": 20, "psnr": 12.5, "ssim": 0.4}]
    cn = metrics.curve_numbers(rows)
    assert cn["final"] == {"iter": 20, "psnr": 12.5, "ssim": 0.4}
    assert cn["peak"] == {"iter": 5, "psnr": 14.0, "ssim": 0.5}  # first of the tied maxima
    assert "steady_psnr" not in cn  # fewer than 10 points
    assert metrics.curve_numbers([{"iter": 1}]) == {}


def test_console_summary_and_evaluate_agree(tmp_path, capsys, one_thread):
    scan, run = tmp_path / "scan", tmp_path / "run"
    assert main(["simulate", str(scan), "--size", "32", "--angles", "20", "--noise", "0.05", "-q"]) == 0
    assert main(["reconstruct", str(scan), "-m", "tv", "--network", "tiny", "-n", "12", "--log-every", "4",
                 "--lr", "0.01", "-o", str(run)]) == 0
    out = capsys.readouterr().out
    s = RunFolder(run).read_summary()
    rows, _, _ = evaluate([run])
    e = rows[0]

    def number(label: str) -> tuple[float, int | None]:
        m = re.search(rf"^\s*{label}\s+PSNR ([\d.]+) dB(?:.*iteration (\d+))?", out, re.M)
        assert m, (label, out)
        return float(m.group(1)), None if m.group(2) is None else int(m.group(2))

    ret, _ = number("returned")
    fin, fin_it = number("final")
    peak, peak_it = number("peak")
    assert ret == pytest.approx(s["returned"]["psnr"], abs=0.006)
    assert fin == pytest.approx(s["final"]["psnr"], abs=0.006) and fin_it == s["final"]["iter"] == 12
    assert peak == pytest.approx(s["peak"]["psnr"], abs=0.006) and peak_it == s["peak"]["iter"]
    # evaluate scores recon.tif against the scan's reference, and reads the same logged curve
    assert e["psnr"] == pytest.approx(s["returned"]["psnr"], abs=1e-3)
    assert e["ssim"] == pytest.approx(s["returned"]["ssim"], abs=1e-4)
    assert (e["final_psnr"], e["final_iter"]) == (pytest.approx(s["final"]["psnr"], abs=1e-9), 12)
    assert (e["peak_psnr"], e["peak_iter"]) == (pytest.approx(s["peak"]["psnr"], abs=1e-9), s["peak"]["iter"])
    # and the curve itself: the last metrics.csv row is "final", its maximum is "peak"
    logged = RunFolder(run).read_metrics()
    assert logged[-1]["iter"] == 12 and logged[-1]["psnr"] == pytest.approx(s["final"]["psnr"])
    assert max(r["psnr"] for r in logged) == pytest.approx(s["peak"]["psnr"])
    # no second, differently defined peak/final in summary.json
    assert "peak_psnr" not in s["result"] and "final_psnr" not in s["result"]
