import json

import numpy as np
import pytest
import tifffile

from ctdip.cli.main import main
from ctdip.core.io import read_tiff_voxel_mm


@pytest.mark.parametrize("geometry,size,extra,min_psnr", [
    ("parallel", 48, [], 16.0),
    ("fan", 48, [], 16.0),
    ("cone", 16, ["--mode", "3d"], 14.0),
])
def test_simulate_then_reconstruct_round_trip(tmp_path, capsys, geometry, size, extra, min_psnr):
    scan, run = tmp_path / "scan", tmp_path / "run"
    assert main(["simulate", str(scan), "--geometry", geometry, "--size", str(size), "--angles", "60" if geometry != "cone" else "20",
                 "--phantom", "shepp-logan", "--quiet"]) == 0
    assert (scan / "reference.tif").is_file() and (scan / "geometry.yaml").is_file()
    capsys.readouterr()
    assert main(["reconstruct", str(scan), "-m", "fbp", "-o", str(run), "--json", *extra]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["final"]["psnr"] > min_psnr
    rec = tifffile.imread(run / "recon.tif")
    ref = tifffile.imread(scan / "reference.tif")
    assert rec.shape == ref.shape
    vox = read_tiff_voxel_mm(run / "recon.tif")
    assert np.allclose(vox, 40.0 / size, rtol=1e-5)


def test_simulate_ellipses_photons_and_from_volume_hu(tmp_path):
    assert main(["simulate", str(tmp_path / "e"), "--phantom", "ellipses", "--size", "32", "--angles", "10",
                 "--photons", "1e4", "-q"]) == 0
    assert (tmp_path / "e" / "flats.tif").is_file() and (tmp_path / "e" / "darks.tif").is_file()
    hu = np.full((32, 32), -1000.0, np.float32)
    hu[8:24, 8:24] = 0.0  # water
    np.save(tmp_path / "hu.npy", hu)
    assert main(["simulate", str(tmp_path / "h"), "--from-volume", str(tmp_path / "hu.npy"), "--hu",
                 "--size", "32", "--angles", "10", "-q"]) == 0
    ref = tifffile.imread(tmp_path / "h" / "reference.tif")
    assert np.isclose(ref.max(), 0.0192, rtol=1e-5) and ref.min() == 0.0
