"""`ctdip evaluate runs/*/ --reference walnut1/reference.tif`: 2D runs of a 3D scan are scored
against their own slice of the 3D reference, resampled to their grid (issue 11, item 6)."""

import pytest

from ctdip.cli.main import main
from ctdip.dip.runs import RunFolder
from ctdip.workflows.evaluate import evaluate


def test_2d_runs_against_a_3d_reference(tmp_path, capsys):
    scan = tmp_path / "walnut1"
    assert main(["simulate", str(scan), "--phantom", "walnut", "--geometry", "cone", "--size", "24",
                 "--angles", "20", "--layout", "walnut", "--photons", "1e4", "-q"]) == 0
    runs = {"mid": [], "slice": ["--slice", "+3"], "small": ["--slice", "-2", "--size", "16"],
            "vol": ["--mode", "3d"]}
    for name, opts in runs.items():
        assert main(["reconstruct", str(scan), "-m", "fbp", "-o", str(tmp_path / "runs" / name), "-q", *opts]) == 0
    paths = [tmp_path / "runs" / n for n in runs]
    rows, _, refs = evaluate(paths, reference=scan / "reference.tif")
    assert [r["name"] for r in rows] == list(runs)
    for r, p in zip(rows, paths):
        s = RunFolder(p).read_summary()
        # the same number the run reported against its own (sliced, resampled) reference
        assert r["psnr"] == pytest.approx(s["returned"]["psnr"], abs=1e-3), r["name"]
        assert r["ssim"] == pytest.approx(s["returned"]["ssim"], abs=1e-4), r["name"]
    assert refs["small"].shape == (1, 16, 16) and refs["vol"].shape == (24, 24, 24)
    assert not (refs["mid"] == refs["slice"]).all()  # different slices
    # the CLI as the README shows it
    capsys.readouterr()
    assert main(["evaluate", *map(str, paths), "--reference", str(scan / "reference.tif"), "--format", "csv",
                 "--no-plots", "-o", str(tmp_path / "ev")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5
