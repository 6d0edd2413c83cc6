"""Acquisition and volume geometry, held as ASTRA-style vectors (mm).

INTERFACE CONTRACT (filled in by the operators work; other modules code against these names):

Coordinates are ASTRA's world coordinates (x, y, z) in millimetres. Volumes are arrays (z, y, x).
Every projection geometry is a `ProjectionGeometry` with ``beam`` in {"parallel", "cone"} and
``vectors`` of shape (n_views, 12) in ASTRA's ``parallel3d_vec`` / ``cone_vec`` column order:
(ray direction or source: 3, detector centre: 3, detector column step u: 3, row step v: 3).
A 2D scan is the 3D case with ``det_shape[0] == 1`` (one detector row), rays in the z = 0 plane,
and a one-slice volume; ``kind`` then reads "parallel" or "fan".

    ProjectionGeometry.circular(kind, angles, det_cols, det_rows=1, pixel_mm=1.0, pixel_v_mm=None,
                                source_origin_mm=None, source_detector_mm=None,
                                offset_u_mm=0.0, offset_v_mm=0.0)   # angles: radians array
    ProjectionGeometry.from_geom_file(path, beam="cone", det_shape=(rows, cols))
    ProjectionGeometry.from_astra(proj_geom_dict) / .to_astra(dim=3 | 2) -> dict
    g.n_views, g.det_shape (rows, cols), g.kind, g.is_2d, g.angles (radians or None)
    g.view_indices(k) -> np.ndarray   # K equispaced of the N views
    g.subsample(k) -> ProjectionGeometry
    g.select(indices) -> ProjectionGeometry
    g.bin(b_rows, b_cols=None) -> ProjectionGeometry
    g.fan_slice(row) -> ProjectionGeometry    # 2D fan/parallel geometry of one detector row
    g.hash() -> str                           # stable hex digest (for caches, weight files)

    VolumeGeometry(shape=(z, y, x), voxel_mm=(dz, dy, dx), center_mm=(cz, cy, cx))
    VolumeGeometry.fov(geometry, n) -> VolumeGeometry  # default grid: field of view seen at all angles
    v.to_astra(dim=3 | 2) -> dict, v.with_size(n) (same extent, n x n in-plane), v.hash()
"""
