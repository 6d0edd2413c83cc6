"""Setups express the published binning on the real 768-column walnut detector (`bin_to_cols`),
and a binning that leaves columns far wider than the voxels warns on one line (issue 11, item 5)."""

import numpy as np
import pytest
import tifffile

from ctdip.cli.main import main
from ctdip.core.data.loader import binning_warning, column_width_at_axis_mm, load_setup, mode_and_bin
from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry


def test_bin_to_cols_means_the_protocol_on_the_walnut_detector():
    st = load_setup("walnut-2d-sparse-60")["scan"]
    assert st["bin_to_cols"] == 128 and "bin" not in st
    assert mode_and_bin(st, 768) == ("2d", 6)  # the published 6x
    assert mode_and_bin(st, 384) == ("2d", 3)
    assert mode_and_bin(st, 100) == ("2d", 1)  # a small (simulated) detector stays unbinned
    assert mode_and_bin({**st, "bin": 2}, 100) == ("2d", 2)  # an explicit --bin wins
    assert mode_and_bin(load_setup("walnut-3d-sparse-20")["scan"], 768) == ("3d", 3)


def test_warning_only_when_columns_are_much_wider_than_voxels():
    ang = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    # the real walnut detector: 768 columns of 0.1496 mm, source-origin 66 mm, source-detector 199 mm
    walnut = ProjectionGeometry.circular("fan", ang, 768, pixel_mm=0.1496, source_origin_mm=66.0,
                                         source_detector_mm=199.0)
    assert column_width_at_axis_mm(walnut) == pytest.approx(0.1496 * 66 / 199, rel=1e-6)
    grid = VolumeGeometry((1, 501, 501), 0.1)
    assert binning_warning(walnut.bin(1, 6), grid, 6) is None  # the published protocol: 3 voxels
    small = ProjectionGeometry.circular("fan", ang, 100, pixel_mm=1.884, source_origin_mm=66.0,
                                        source_detector_mm=199.0)
    msg = binning_warning(small.bin(1, 6), VolumeGeometry((1, 64, 64), 0.625), 6)
    assert msg.startswith("warning: detector binning 6x leaves 16 columns, each 6.0 voxels wide on the 64 x 64")
    assert "\n" not in msg


def test_setup_on_a_small_simulated_walnut_scan(tmp_path, capsys):
    scan = tmp_path / "walnut1"
    assert main(["simulate", str(scan), "--phantom", "walnut", "--geometry", "cone", "--size", "32",
                 "--angles", "120", "--layout", "walnut", "--photons", "1e4", "-q"]) == 0
    a, b, c = (tmp_path / n for n in ("setup", "flags", "bin6"))
    assert main(["reconstruct", str(scan), "--setup", "walnut-2d-sparse-60", "-m", "fbp", "-o", str(a), "-q"]) == 0
    assert capsys.readouterr().err == ""  # nothing binned, nothing to warn about
    assert main(["reconstruct", str(scan), "--angles", "60", "--slice", "+3", "-m", "fbp", "-o", str(b), "-q"]) == 0
    # the setup means the same as its options without any binning on this 50-column detector
    np.testing.assert_array_equal(tifffile.imread(a / "recon.tif"), tifffile.imread(b / "recon.tif"))
    # the old meaning (--bin 6 on a small detector) is still possible, with one warning line
    assert main(["reconstruct", str(scan), "--setup", "walnut-2d-sparse-60", "--bin", "6", "-m", "fbp",
                 "-o", str(c), "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: detector binning 6x leaves 8 columns")
