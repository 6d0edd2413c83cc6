"""Geometry: ASTRA conventions, .geom files, subsampling, binning, fan slices, hashes, volumes."""

from __future__ import annotations

import astra
import numpy as np
import pytest
import torch

from ctdip.core.geometry import ProjectionGeometry as PG
from ctdip.core.geometry import VolumeGeometry as VG
from ctdip.core.geometry import bin_projections
from ctdip.errors import UserError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTDIP_CACHE_DIR", str(tmp_path / "cache"))


ANG = np.linspace(0.1, 2 * np.pi + 0.1, 12, endpoint=False)


def _v6(v12: np.ndarray) -> np.ndarray:
    return np.concatenate([v12[:, 0:2], v12[:, 3:5], v12[:, 6:8]], axis=1)


def test_circular_matches_astra_geom_2vec_and_postalignment():
    # fan (2D): create_proj_geom('fanflat') -> geom_postalignment(offset / pixel)
    g = PG.circular("fan", ANG, 50, pixel_mm=0.7, source_origin_mm=110, source_detector_mm=300, offset_u_mm=0.27)
    ref = astra.functions.geom_postalignment(
        astra.create_proj_geom("fanflat", 0.7, 50, ANG, 110, 190), 0.27 / 0.7)["Vectors"]
    np.testing.assert_allclose(_v6(g.vectors), ref, atol=1e-12)
    assert g.kind == "fan" and g.is_2d and g.det_shape == (1, 50)
    # parallel (2D)
    g = PG.circular("parallel", ANG, 40, pixel_mm=1.5, offset_u_mm=-3.0)
    ref = astra.functions.geom_postalignment(astra.create_proj_geom("parallel", 1.5, 40, ANG), -2.0)["Vectors"]
    np.testing.assert_allclose(_v6(g.vectors), ref, atol=1e-12)
    assert g.kind == "parallel"
    # cone (3D) with both offsets
    g = PG.circular("cone", ANG, 30, det_rows=20, pixel_mm=0.5, pixel_v_mm=0.25, source_origin_mm=66,
                    source_detector_mm=199, offset_u_mm=0.1, offset_v_mm=-0.5)
    ref = astra.functions.geom_postalignment(
        astra.create_proj_geom("cone", 0.5, 0.25, 20, 30, ANG, 66, 133), (0.2, -2.0))["Vectors"]
    np.testing.assert_allclose(g.vectors, ref, atol=1e-12)
    assert g.kind == "cone" and not g.is_2d
    # parallel3d
    g = PG.circular("parallel3d", ANG, 30, det_rows=10, pixel_mm=2.0)
    ref = astra.functions.geom_2vec(astra.create_proj_geom("parallel3d", 2.0, 2.0, 10, 30, ANG))["Vectors"]
    np.testing.assert_allclose(g.vectors, ref, atol=1e-12)
    assert g.kind == "parallel3d"


def test_astra_dict_round_trips():
    g = PG.circular("fan", ANG, 50, pixel_mm=0.7, source_origin_mm=110, source_detector_mm=300)
    d2 = g.to_astra(2)
    assert d2["type"] == "fanflat_vec" and d2["DetectorCount"] == 50
    assert PG.from_astra(d2) == g
    d3 = g.to_astra(3)
    assert d3["type"] == "cone_vec" and d3["DetectorRowCount"] == 1
    assert PG.from_astra(d3) == g
    g2 = PG.from_astra(astra.create_proj_geom("fanflat", 0.7, 50, ANG, 110, 190))
    assert g2 == g and np.allclose(g2.angles, ANG)
    c = PG.circular("cone", ANG, 30, det_rows=20, pixel_mm=0.5, source_origin_mm=66, source_detector_mm=199)
    assert PG.from_astra(astra.create_proj_geom("cone", 0.5, 0.5, 20, 30, ANG, 66, 133)) == c
    with pytest.raises(UserError, match="not 2D"):
        c.to_astra(2)
    # angles recovered from vectors equal the ASTRA angles
    np.testing.assert_allclose(PG("cone", c.vectors, c.det_shape).view_angles(), ANG, atol=1e-12)


def test_geom_file_subsample_bin_gives_same_operator(tmp_path):
    from ctdip.core.operators import RayTransform

    full = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    g_full = PG.circular("cone", full, 32, det_rows=8, pixel_mm=0.5, source_origin_mm=60, source_detector_mm=120,
                         offset_u_mm=0.2)
    path = tmp_path / "scan_geom.geom"
    np.savetxt(path, g_full.vectors)
    g = PG.from_geom_file(path, det_shape=(8, 32)).subsample(20).bin(2)
    direct = PG.circular("cone", full[::6], 16, det_rows=4, pixel_mm=1.0, source_origin_mm=60,
                         source_detector_mm=120, offset_u_mm=0.2)
    assert g.det_shape == (4, 16) and g.n_views == 20
    np.testing.assert_allclose(g.vectors, direct.vectors, atol=1e-9)
    assert g.hash() == direct.hash()
    vol = VG((4, 12, 12), 0.5)
    x = torch.rand(vol.shape, generator=torch.Generator().manual_seed(0))
    y1 = RayTransform(g, vol, backend="torch")(x)
    y2 = RayTransform(direct, vol, backend="torch")(x)
    assert float((y1 - y2).abs().max()) < 1e-5 * float(y2.abs().max())
    # 2D: the central fan slice through the matrix backend
    f1, f2 = g.fan_slice(), direct.fan_slice()
    v2 = VG((1, 12, 12), 0.5)
    a1 = RayTransform(f1, v2, backend="matrix")(x[:1])
    a2 = RayTransform(f2, v2, backend="matrix")(x[:1])
    assert torch.equal(a1, a2)


def test_geom_file_errors(tmp_path):
    bad = tmp_path / "bad.geom"
    bad.write_text("1 2 3\n4 5 6\n")
    with pytest.raises(UserError, match="12 columns") as e:
        PG.from_geom_file(bad, det_shape=(2, 2))
    assert str(bad) in str(e.value)
    with pytest.raises(UserError, match="not found"):
        PG.from_geom_file(tmp_path / "missing.geom", det_shape=(2, 2))
    txt = tmp_path / "txt.geom"
    txt.write_text("a b c\n")
    with pytest.raises(UserError, match="numbers"):
        PG.from_geom_file(txt, det_shape=(2, 2))


def test_subsample_select_and_errors():
    g = PG.circular("parallel", np.linspace(0, np.pi, 10, endpoint=False), 8)
    assert g.view_indices(5).tolist() == [0, 2, 4, 6, 8]
    assert g.view_indices(3).tolist() == [0, 3, 6]
    s = g.subsample(5)
    np.testing.assert_allclose(s.angles, g.angles[::2])
    np.testing.assert_allclose(s.vectors, g.vectors[::2])
    assert g.select([1, 3]).n_views == 2
    with pytest.raises(UserError, match="cannot take 11 views"):
        g.subsample(11)
    with pytest.raises(UserError, match="source_origin_mm"):
        PG.circular("fan", [0.0], 8)
    with pytest.raises(UserError, match="unknown geometry kind"):
        PG.circular("helical", [0.0], 8)


def test_bin_odd_detector_and_projection_binning():
    g = PG.circular("fan", ANG, 9, pixel_mm=1.0, source_origin_mm=50, source_detector_mm=100)
    b = g.bin(2)
    assert b.det_shape == (1, 4)
    # the binned pixel centres are the means of the original pixel pairs (the trailing pixel dropped)
    cols_old = g.vectors[:, None, 3:6] + (np.arange(9) - 4)[None, :, None] * g.vectors[:, None, 6:9]
    cols_new = b.vectors[:, None, 3:6] + (np.arange(4) - 1.5)[None, :, None] * b.vectors[:, None, 6:9]
    np.testing.assert_allclose(cols_new, cols_old[:, :8].reshape(len(ANG), 4, 2, 3).mean(2), atol=1e-12)
    p = np.arange(2 * 3 * 9, dtype=np.float32).reshape(2, 1, 3, 9)[:, 0]  # (angles, rows, cols)
    pb = bin_projections(p, 2)
    assert pb.shape == (2, 1, 4)  # rows are binned too: 3 // 2
    np.testing.assert_allclose(pb[0, 0], [[0.5 + 4.5, 2.5 + 4.5, 4.5 + 4.5, 6.5 + 4.5]][0])
    assert torch.allclose(bin_projections(torch.from_numpy(p), 2), torch.from_numpy(pb))


def test_fan_slice_of_cone_is_the_fan_geometry():
    c = PG.circular("cone", ANG, 30, det_rows=9, pixel_mm=0.5, source_origin_mm=66, source_detector_mm=199,
                    offset_u_mm=0.1)
    f = PG.circular("fan", ANG, 30, pixel_mm=0.5, source_origin_mm=66, source_detector_mm=199, offset_u_mm=0.1)
    s = c.fan_slice()  # default: the row at the source height, the middle one
    assert s.kind == "fan" and s.det_shape == (1, 30)
    np.testing.assert_allclose(s.vectors, f.vectors, atol=1e-12)
    assert s.to_astra(2)["type"] == "fanflat_vec"
    with pytest.raises(UserError, match="outside"):
        c.fan_slice(9)


def test_hash_and_repr():
    g = PG.circular("fan", ANG, 50, pixel_mm=0.7, source_origin_mm=110, source_detector_mm=300)
    g2 = PG.circular("fan", ANG, 50, pixel_mm=0.7, source_origin_mm=110, source_detector_mm=300)
    assert g.hash() == g2.hash() and len(g.hash()) == 20
    assert g.hash() != g.subsample(6).hash() and g.hash() != g.bin(2).hash()
    r = repr(g)
    assert "kind='fan'" in r and "views=12" in r and "SOD=110mm" in r and "SDD=300mm" in r
    v = VG((1, 64, 64), 0.5)
    assert v.hash() == VG((1, 64, 64), (0.5, 0.5, 0.5)).hash() != v.with_size(32).hash()
    assert "shape=1x64x64" in repr(v)


def test_volume_geometry_fov_with_size_and_astra():
    g = PG.circular("fan", ANG, 100, pixel_mm=1.0, source_origin_mm=100, source_detector_mm=200)
    v = VG.fov(g, 64)
    r = 100 * np.sin(np.arctan(50 / 200))  # distance from the axis to the edge ray
    assert v.shape == (1, 64, 64)
    np.testing.assert_allclose(v.extent_mm[1:], (2 * r, 2 * r), rtol=1e-12)
    w = v.with_size(32)
    assert w.shape == (1, 32, 32) and np.allclose(w.extent_mm[1:], v.extent_mm[1:])
    d2 = v.to_astra(2)
    assert d2["GridRowCount"] == 64 and np.isclose(d2["option"]["WindowMaxX"], r)
    c = PG.circular("cone", ANG, 100, det_rows=40, pixel_mm=1.0, source_origin_mm=100, source_detector_mm=200)
    v3 = VG.fov(c, 32)
    assert v3.shape == (int(round(40 * 0.5 / v3.voxel_mm[2])), 32, 32)
    d3 = v3.to_astra(3)
    assert d3["GridSliceCount"] == v3.shape[0] and np.isclose(d3["option"]["WindowMaxZ"], v3.extent_mm[0] / 2)
    with pytest.raises(UserError):
        VG((0, 4, 4))


def test_astra_2d_row_order_is_flipped_relative_to_ours():
    """ASTRA 2D image row 0 is at max y; ctdip's y index increases with y (ASTRA 3D order)."""
    from ctdip.core.operators import RayTransform

    g = PG.circular("parallel", [np.pi / 2], 8)  # at 90 degrees the detector u axis is +y
    vol = VG((1, 8, 8), 1.0)
    img = np.zeros((8, 8), np.float32)
    img[0, 4] = 1  # ASTRA: row 0, top
    pid = astra.create_projector("linear", g.to_astra(2), vol.to_astra(2))
    sid, s = astra.create_sino(img, pid)
    astra.data2d.delete(sid)
    astra.projector.delete(pid)
    assert int(np.argmax(s[0])) == 7  # max y -> last detector column
    ours = np.zeros((1, 8, 8), np.float32)
    ours[0, 7, 4] = 1  # our last y row is max y
    y = RayTransform(g, vol, backend="matrix")(torch.from_numpy(ours))
    np.testing.assert_allclose(y[0, 0].numpy(), s[0], atol=1e-6)
