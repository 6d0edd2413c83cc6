"""Every user mistake: exit 2, one line naming the file and the problem, no output written."""

import numpy as np
import pytest

from ctdip.cli.main import main
from ctdip.data.simulate import simulate


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("g") / "scan"
    simulate(d, phantom="shepp-logan", geometry="fan", size=24, angles=8, photons=1e4)
    return d


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _check(capsys, tmp_path, args, *needles):
    out = tmp_path / "run"
    rc = main(["reconstruct", *map(str, args), "-m", "fbp", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for n in needles:
        assert n in err, err
    assert not out.exists()


def test_missing_folder(capsys, tmp_path):
    _check(capsys, tmp_path, [tmp_path / "nope"], "nope", "not found")


def test_unknown_layout(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    _check(capsys, tmp_path, [tmp_path / "empty"], "empty", "unknown scan layout")


def test_projection_count_mismatch(capsys, tmp_path, good):
    d = _copy(good, tmp_path / "s")
    g = (d / "geometry.yaml").read_text().replace("count: 8", "count: 9")
    (d / "geometry.yaml").write_text(g)
    _check(capsys, tmp_path, [d], "projections.tif", "projection count 8 does not match 9 angles")


@pytest.mark.parametrize("value,needle", [(np.nan, "NaN"), (-5.0, "zero or negative"), (0.0, "zero or negative")])
def test_bad_flats(capsys, tmp_path, good, value, needle):
    import tifffile

    d = _copy(good, tmp_path / "s")
    f = tifffile.imread(d / "flats.tif")
    f[..., 0, 3] = value
    tifffile.imwrite(d / "flats.tif", f)
    if value == 0.0:  # zero flat: equal to the dark
        f[..., 0, 3] = 100.0
        tifffile.imwrite(d / "flats.tif", f)
    _check(capsys, tmp_path, [d], "flats.tif", needle)


def test_unreadable_tiff(capsys, tmp_path, good):
    d = _copy(good, tmp_path / "s")
    (d / "projections.tif").write_bytes(b"not a tiff at all")
    _check(capsys, tmp_path, [d], "projections.tif", "unreadable TIFF")


def test_bad_yaml(capsys, tmp_path, good):
    d = _copy(good, tmp_path / "s")
    (d / "geometry.yaml").write_text("type: fan\nangles: {count: 8\n")
    _check(capsys, tmp_path, [d], "geometry.yaml", "bad YAML")


def test_bad_geometry_field(capsys, tmp_path, good):
    d = _copy(good, tmp_path / "s")
    (d / "geometry.yaml").write_text((d / "geometry.yaml").read_text().replace("type: fan", "type: helix"))
    _check(capsys, tmp_path, [d], "geometry.yaml", "'type' must be one of")


def test_unknown_method_and_option(capsys, tmp_path, good):
    rc = main(["reconstruct", str(good), "-m", "nosuch", "-o", str(tmp_path / "r")])
    assert rc == 2 and "unknown method 'nosuch'" in capsys.readouterr().err
    rc = main(["reconstruct", str(good), "--no-such-flag"])
    assert rc == 2 and "no-such-flag" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_simulate_refuses_existing_folder(capsys, tmp_path, good):
    rc = main(["simulate", str(good), "--size", "16", "--angles", "4"])
    assert rc == 2 and "exists" in capsys.readouterr().err
