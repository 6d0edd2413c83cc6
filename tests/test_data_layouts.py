import numpy as np
import pytest

from ctdip.core.data.loader import load_scan, resample
from ctdip.core.data.simulate import simulate
from ctdip.core.data.walnut_layout import WalnutSource, inverse_trafo, trafo
from ctdip.core.io import write_tiff_image


@pytest.mark.parametrize("geometry,noise", [("fan", 0.0), ("fan", 0.05), ("cone", 0.0)])
def test_walnut_layout_round_trip_is_exact(tmp_path, geometry, noise):
    size = 24 if geometry == "cone" else 48
    s = simulate(tmp_path / "w", geometry=geometry, size=size, angles=12, noise=noise, layout="walnut",
                 return_arrays=True)
    scan = load_scan(tmp_path / "w", mode="3d" if geometry == "cone" else None)
    assert scan.layout == "walnut"
    assert np.array_equal(scan.projections, s["arrays"]["data"])
    assert np.array_equal(scan.reference, s["arrays"]["reference"])
    assert scan.geometry.n_views == 12 and scan.geometry.kind == ("cone" if geometry == "cone" else "fan")


def test_walnut_reader_follows_the_reference_script(tmp_path):
    """Files in reverse order (view j <- scan_{n-j}), transpose(flipud(img)), dark/flat mean, -log."""
    od = tmp_path / "Projections" / "tubeV2"
    od.mkdir(parents=True)
    n, rows, cols = 4, 3, 5
    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 2.0, (n, rows, cols))
    dark, flats = np.full((rows, cols), 10.0), np.stack([np.full((rows, cols), 1000.0), np.full((rows, cols), 1020.0)])
    for j in range(n):
        write_tiff_image(od / f"scan_{n - j:06}.tif", inverse_trafo(10.0 + 1000.0 * np.exp(-p[j])), dtype=np.float64)
    write_tiff_image(od / "scan_000000.tif", inverse_trafo(10.0 + 1000.0 * np.exp(-p[0])), dtype=np.float64)
    write_tiff_image(od / "di000000.tif", inverse_trafo(dark), dtype=np.float64)
    for i, f in enumerate(flats):
        write_tiff_image(od / f"io00000{i}.tif", inverse_trafo(f), dtype=np.float64)
    from ctdip.core.geometry import ProjectionGeometry

    g = ProjectionGeometry.circular("cone", np.linspace(0, 2 * np.pi, n, endpoint=False), cols, rows, 1.0,
                                    source_origin_mm=60, source_detector_mm=180)
    np.savetxt(od / "scan_geom_corrected.geom", np.concatenate([g.vectors, g.vectors[:1]]))
    src = WalnutSource(tmp_path, orbit=2)
    got = src.read(np.arange(n))
    expected = -np.log((1000.0 * np.exp(-p)) / 1000.0)  # flat mean 1010 - dark 10
    assert np.allclose(got, expected, atol=1e-6)
    assert src.file_index(0) == n and src.file_index(n - 1) == 1
    img = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(trafo(inverse_trafo(img)), img) and trafo(img).shape == (4, 3)


def test_ctdip_layout_options_and_poisson_flats(tmp_path):
    s = simulate(tmp_path / "c", geometry="cone", size=24, angles=16, photons=5e4, return_arrays=True)
    clean = s["arrays"]["clean"]
    full = load_scan(tmp_path / "c", mode="3d")
    # flat/dark/log of Poisson counts recovers the line integrals up to the noise
    assert abs(float(np.mean(full.projections - clean))) < 2e-3
    assert float(np.std(full.projections - clean)) < 0.03
    sub = load_scan(tmp_path / "c", angles=8, mode="3d", bin=2, size=12)
    assert sub.projections.shape == (8, full.projections.shape[1] // 2, full.projections.shape[2] // 2)
    assert sub.volume.shape == (12, 12, 12) and sub.reference.shape == (12, 12, 12)
    sl = load_scan(tmp_path / "c", slice="+2", bin=2)
    assert sl.projections.shape[1] == 1 and sl.volume.shape == (1, 24, 24)
    assert sl.info["slice"] == 14 and np.array_equal(sl.reference[0], s["arrays"]["reference"][14])


def test_resample_preserves_constant_and_mean():
    from ctdip.core.geometry import VolumeGeometry

    old = VolumeGeometry((1, 64, 64), 0.5)
    new = old.with_size(32)
    x = np.full((1, 64, 64), 2.0, np.float32)
    assert np.allclose(resample(x, old, new), 2.0)


# ---------------------------------------------------------------------------- the layout registry
def test_registry_lists_the_builtin_layouts_in_detection_order(tmp_path):
    from ctdip.core.data.layouts import Layout, layout_names, layouts
    from ctdip.core.data.loader import detect_layout, open_source
    from ctdip.errors import UserError

    assert layout_names() == ("ctdip", "walnut")
    assert all(isinstance(lay, Layout) and lay.description for lay in layouts().values())
    both = tmp_path / "both"  # a folder matching both layouts is a ctdip folder (detected first)
    (both / "Projections").mkdir(parents=True)
    (both / "geometry.yaml").write_text("type: fan\n")
    assert detect_layout(both) == "ctdip"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        open_source(tmp_path / "empty")
    assert e.value.message == ("unknown scan layout: expected geometry.yaml + projections.tif (ctdip layout) or "
                               "Projections/tubeV*/scan_NNNNNN.tif (walnut layout)")


class _NpyLayout:
    """A toy layout: ``sino.npy`` (angles, cols) of a 2D parallel scan, one degree per view."""

    name = "npy-toy"
    description = "sino.npy"

    def detect(self, folder):
        return (folder / "sino.npy").is_file()

    def open(self, folder, options):
        return _NpySource(folder)


class _NpySource:
    layout = "npy-toy"

    def __init__(self, folder):
        from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

        self.info: dict = {}
        self.warnings: list[str] = []
        self.geometry_path = folder / "sino.npy"
        self.sino = np.load(self.geometry_path).astype(np.float32)
        n, cols = self.sino.shape
        self.geometry = ProjectionGeometry.circular("parallel", np.radians(np.arange(n)), cols, pixel_mm=1.0)
        self.volume = VolumeGeometry((1, cols, cols), 1.0)

    def read(self, views, rows=None):
        return self.sino[np.asarray(views)][:, None, :]

    def read_reference(self, z=None):
        return None


def test_a_registered_toy_layout_is_detected_loaded_and_removed(tmp_path):
    from ctdip.core.data.layouts import ScanSource, layout_names, register_layout, unregister_layout
    from ctdip.core.data.loader import detect_layout
    from ctdip.errors import UserError

    folder = tmp_path / "toy"
    folder.mkdir()
    sino = np.random.default_rng(0).random((90, 32))
    np.save(folder / "sino.npy", sino)
    register_layout(_NpyLayout())
    try:
        assert layout_names() == ("ctdip", "walnut", "npy-toy")
        assert detect_layout(folder) == "npy-toy" and isinstance(_NpySource(folder), ScanSource)
        scan = load_scan(folder, angles=30, size=16)
        assert scan.layout == "npy-toy" and scan.projections.shape == (30, 1, 32)
        np.testing.assert_array_equal(scan.projections[:, 0], sino[::3].astype(np.float32))
        assert scan.volume.shape == (1, 16, 16) and scan.reference is None
        (tmp_path / "empty").mkdir()
        with pytest.raises(UserError, match=r"\(walnut layout\) or sino.npy \(npy-toy layout\)$"):
            detect_layout(tmp_path / "empty")
    finally:
        unregister_layout("npy-toy")
    assert layout_names() == ("ctdip", "walnut")
    with pytest.raises(UserError, match="unknown scan layout"):
        load_scan(folder)
