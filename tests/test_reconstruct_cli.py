import json

import numpy as np
import pytest
import tifffile
import yaml

from ctdip.cli.main import main
from ctdip.core.data.simulate import simulate
from ctdip.core.io import read_tiff_voxel_mm


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("s") / "scan"
    simulate(d, phantom="walnut", geometry="fan", size=48, angles=30, noise=0.05, seed=1)
    return d


def test_run_folder_contents_and_json(scan, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["reconstruct", str(scan), "-m", "pdhg-tv", "-n", "20", "--tv-weight", "2e-3", "-o", str(run),
               "--seed", "3", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert summary == json.loads((run / "summary.json").read_text())  # --json prints summary.json
    for f in ["config.yaml", "metrics.csv", "recon.tif", "recon_best.tif", "summary.json", "preview.png", "psnr.png"]:
        assert (run / f).is_file(), f
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == "pdhg-tv" and cfg["params"]["tv_weight"] == pytest.approx(2e-3)
    assert cfg["overrides"] == {"iterations": 20, "tv_weight": 2e-3} and cfg["seed"] == 3
    assert "tv_weight" in cfg["preset"]["sources"] and cfg["geometry"]["hash"]
    assert set(cfg["versions"]) >= {"ctdip", "torch", "astra", "numpy"}
    assert summary["iterations"] == 20 and summary["final"]["psnr"] > summary["fbp"]["psnr"] - 10
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 21 and lines[0].startswith("iter,loss")
    rec = tifffile.imread(run / "recon.tif")
    ref = tifffile.imread(scan / "reference.tif")
    assert rec.shape == ref.shape == (48, 48) or rec.shape == ref.shape
    assert np.allclose(read_tiff_voxel_mm(run / "recon.tif"), 40.0 / 48, rtol=1e-5)
    # recon.tif is in the reference's units (unscaled): same magnitude as the phantom
    assert 0.5 < float(np.percentile(rec, 99)) / float(np.percentile(ref, 99)) < 2.0


def test_quiet_prints_nothing_and_set_and_resume(scan, tmp_path, capsys):
    run = tmp_path / "cg"
    assert main(["reconstruct", str(scan), "-m", "cgls", "--set", "iterations=4", "-o", str(run), "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    (run / "summary.json").unlink()  # as if killed before its end (a finished run is not recomputed)
    assert main(["reconstruct", "--resume", str(run), "--quiet"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["resumed"] == 1 and cfg["params"]["iterations"] == 4
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 5


def test_exit_codes(scan, tmp_path, capsys):
    assert main(["reconstruct", str(scan), "-m", "fbp", "--lr", "0.1", "-o", str(tmp_path / "a")]) == 2
    assert "no parameter 'lr'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    rc = main(["reconstruct", str(scan), "-m", "pdhg-tv", "-n", "100000", "--time-limit", "00:00:01",
               "-o", str(tmp_path / "t"), "-q"])
    assert rc == 3
    main(["reconstruct", str(scan), "-m", "fbp", "-o", str(tmp_path / "b"), "-q"])
    assert main(["reconstruct", str(scan), "-m", "fbp", "-o", str(tmp_path / "b"), "-q"]) == 2  # exists


def test_setup_preset_applies_scan_options(tmp_path, capsys):
    d = tmp_path / "cone"
    simulate(d, phantom="shepp-logan", geometry="cone", size=16, angles=24, layout="walnut")
    rc = main(["reconstruct", str(d), "--setup", "walnut-2d-sparse-60", "--angles", "12", "--bin", "1",
               "-m", "fbp", "-o", str(tmp_path / "r"), "--json"])
    assert rc == 0
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["setup"] == "walnut-2d-sparse-60"
    assert cfg["scan"]["options"]["slice"] == "+3" and cfg["scan"]["options"]["angles"] == 12
    assert cfg["geometry"]["views"] == 12 and cfg["geometry"]["kind"] == "fan"


class _Recorder:
    """A Reporter (structural: no base class needed) that records what reconstruct() tells it."""

    verbose = True  # the methods' own notes go to stderr

    def __init__(self, stop_at: int | None = None):
        self.events: list[tuple] = []
        self.stop_at = stop_at

    def on_warning(self, message):
        self.events.append(("warning", message))

    def on_start(self, method, run_path):
        self.events.append(("start", method, run_path.name))

    def on_progress(self, iteration, total, metrics):
        self.events.append(("progress", iteration, total))
        if iteration == self.stop_at:
            raise KeyboardInterrupt

    def on_stop(self):
        self.events.append(("stop",))

    def on_finish(self, result):
        self.events.append(("finish", result.summary["iterations"], result.already_finished))


def _scan_with_warning(scan):
    from ctdip.core.data.loader import load_scan

    sc = load_scan(scan, print_warnings=False)
    sc.info["warnings"].append("a test warning")
    return sc


def test_library_call_prints_nothing_and_returns_the_summary(scan, tmp_path, capsys, monkeypatch, one_thread):
    from ctdip.workflows.reconstruct import reconstruct

    monkeypatch.setenv("CTDIP_ESTIMATE_MIN_S", "0")  # a run that prints would print its duration estimate
    params = {"iterations": 8, "network": "tiny", "log_every": 4}
    rs = reconstruct(_scan_with_warning(scan), "vanilla", params, output=tmp_path / "lib")
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    saved = json.loads((tmp_path / "lib" / "summary.json").read_text())
    assert rs.summary["iterations"] == saved["iterations"] == 8 and rs.path == tmp_path / "lib"
    assert rs.summary["returned"]["psnr"] == pytest.approx(saved["returned"]["psnr"], abs=1e-12)
    assert rs.warnings == ["a test warning"] and not rs.already_finished
    assert rs.config["scan"]["info"]["warnings"] == ["a test warning"]  # recorded in config.yaml too

    # the same run through a reporter: every hook in order; verbose lets the method's note through
    rec = _Recorder()
    again = reconstruct(_scan_with_warning(scan), "vanilla", params, output=tmp_path / "rep", reporter=rec)
    assert rec.events == [("warning", "a test warning"), ("start", "vanilla", "rep"),
                          *[("progress", i, 8) for i in range(1, 9)], ("stop",), ("finish", 8, False)]
    assert capsys.readouterr().err.startswith("note: estimated")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "rep" / "recon.tif"),
                                  tifffile.imread(tmp_path / "lib" / "recon.tif"))  # reporting changes no number
    assert again.summary["returned"] == rs.summary["returned"]

    # resuming a finished run: nothing recomputed, only on_finish
    rec = _Recorder()
    done = reconstruct(scan, "vanilla", params, output=tmp_path / "rep", resume=True, reporter=rec)
    assert done.already_finished and rec.events == [("finish", 8, True)]


def test_reporter_is_stopped_when_the_run_is_interrupted(scan, tmp_path, one_thread):
    from ctdip.workflows.reconstruct import reconstruct

    rec = _Recorder(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(scan, "vanilla", {"iterations": 8, "network": "tiny"}, output=tmp_path / "cut", reporter=rec)
    assert rec.events[-2:] == [("progress", 3, 8), ("stop",)]  # the CLI's bar is closed before its message


def test_tv_weight_flag_takes_a_number_or_auto(scan, tmp_path, capsys):
    """``--tv-weight auto`` is ``--set tv_weight=auto`` (the CV choice, on the console and in
    summary.json); a number is a float in config.yaml (so ``--resume --tv-weight 2e-3`` matches it)."""
    run = tmp_path / "auto"
    rc = main(["reconstruct", str(scan), "-m", "aseq", "--network", "tiny", "-n", "4", "--tv-weight", "auto",
               "--set", "cv_iterations=20", "-o", str(run)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "by 5-fold held-out-view CV" in out
    s = json.loads((run / "summary.json").read_text())
    ch = s["result"]["tv_weight_choice"]
    assert s["result"]["tv_weight"] == pytest.approx(ch["dip_tv_weight"]) and s["result"]["tv_weight"] > 0
    fixed = tmp_path / "fixed"
    assert main(["reconstruct", str(scan), "-m", "aseq", "--network", "tiny", "-n", "2", "--tv-weight", "2e-3",
                 "-o", str(fixed), "-q"]) == 0
    assert yaml.safe_load((fixed / "config.yaml").read_text())["overrides"]["tv_weight"] == 2e-3
    (fixed / "summary.json").unlink()  # as after a kill: the same flag resumes
    assert main(["reconstruct", "--resume", str(fixed), "--tv-weight", "2e-3", "-q"]) == 0
    assert main(["reconstruct", str(scan), "-m", "aseq", "-n", "2", "--tv-weight", "lots", "-o",
                 str(tmp_path / "bad")]) == 2
    assert "--tv-weight: must be a finite number >= 0 or 'auto', got 'lots'" in capsys.readouterr().err
