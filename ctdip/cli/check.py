"""``ctdip check SCAN``: read a scan folder as ``reconstruct`` would and print what was read.

Layout, projections (file, shape, dtype, value range), flats/darks, the geometry (type, views,
angle range, distances, detector, pixel size, offsets), the volume grid, the field of view, the
reference, and the plausibility warnings of :mod:`ctdip.core.data.sanity`. Exit 0 when the scan can be
reconstructed, 2 with one ``error:`` line when it cannot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ctdip.cli._options import ANGLES, BIN, MODE, ORBIT, SETUP, SIZE, SLICE


def detector_offsets_mm(geom) -> tuple[float, float]:
    """Mean (u, v) offset of the detector centre from where the ray through the origin meets the
    detector plane, in mm along the detector's column and row directions (ASTRA offsets)."""
    import numpy as np

    v = geom.vectors
    s_or_r, d, u, vv = v[:, 0:3], v[:, 3:6], v[:, 6:9], v[:, 9:12]
    n = np.cross(u, vv)
    if geom.beam == "cone":
        t = np.sum((d - s_or_r) * n, 1) / np.sum((0.0 - s_or_r) * n, 1)
        c = s_or_r + t[:, None] * (0.0 - s_or_r)
    else:
        t = np.sum(d * n, 1) / np.sum(s_or_r * n, 1)
        c = t[:, None] * s_or_r
    w = d - c
    un = u / np.linalg.norm(u, axis=1, keepdims=True)
    vn = vv / np.linalg.norm(vv, axis=1, keepdims=True)
    ou, ov = (float(np.mean(np.sum(w * e, 1))) for e in (un, vn))
    scale = 1e-9 * max(1.0, float(np.abs(v).max()))
    return (0.0 if abs(ou) < scale else ou), (0.0 if abs(ov) < scale else ov)


def fov_radius_mm(geom) -> float | None:
    """Radius of the circle around the rotation axis seen in every view (None if the axis is not)."""
    from ctdip.core.geometry import VolumeGeometry
    from ctdip.errors import UserError

    try:
        v = VolumeGeometry.fov(geom, 100)
    except UserError:
        return None
    return float(v.voxel_mm[2] * 50)


def describe(scan_path: Path, opts: dict[str, Any]) -> dict:
    """Everything ``ctdip check`` reports, as a JSON-ready dict."""
    import numpy as np

    from ctdip.core.data.loader import load_scan, open_source, scan_options
    from ctdip.core.io import tiff_dtype

    opts = scan_options(**opts)
    sc = load_scan(scan_path, **opts, print_warnings=False)
    src = open_source(scan_path, orbit=opts.get("orbit"))
    g, vol, p = sc.geometry, sc.volume, sc.projections
    ang = np.degrees(g.view_angles())
    out: dict[str, Any] = {"scan": str(scan_path), "layout": sc.layout, "options": opts}
    if sc.layout == "ctdip":
        proj_file = src.proj_path
        flats = src.flat_path if src.flat_path.is_file() else None
        darks = src.folder / "darks.tif"
        darks = darks if darks.is_file() else None
    else:
        proj_file = src.files[0]
        flats = src.flat_path
        darks = src.orbit_dir / "di000000.tif"
    out["projections"] = {
        "file": str(proj_file), "stored_dtype": str(tiff_dtype(proj_file)),
        "raw_counts": bool(src.info.get("raw_counts")), "views_total": int(sc.info["n_views_total"]),
        "detector_total": [int(x) for x in sc.info["detector_total"]],
        "shape_used": [int(x) for x in p.shape],
        "line_integrals": {"min": float(p.min()), "max": float(p.max()), "mean": float(p.mean())},
    }
    out["flats"] = None if flats is None else str(flats)
    out["darks"] = None if darks is None else str(darks)
    off_u, off_v = detector_offsets_mm(g)
    pix_h, pix_w = g.pixel_mm
    out["geometry"] = {
        "file": sc.info.get("geometry_file"), "type": g.kind, "views": int(g.n_views),
        "angles_deg": {"first": float(ang[0]), "last": float(ang[-1]),
                       "step": float((ang[-1] - ang[0]) / max(1, len(ang) - 1))},
        "source_origin_mm": g.source_origin_mm, "source_detector_mm": g.source_detector_mm,
        "detector": {"rows": int(g.det_shape[0]), "cols": int(g.det_shape[1]), "pixel_mm": [pix_h, pix_w],
                     "offset_u_mm": off_u, "offset_v_mm": off_v},
    }
    out["volume"] = {"shape": list(vol.shape), "voxel_mm": list(vol.voxel_mm), "center_mm": list(vol.center_mm),
                     "extent_mm": list(vol.extent_mm), "mode": sc.info.get("mode")}
    r = fov_radius_mm(g)
    out["field_of_view"] = {"radius_mm": r, "diameter_mm": None if r is None else 2 * r}
    out["reference"] = None if sc.reference is None else {"shape": list(sc.reference.shape)}
    out["warnings"] = list(sc.info.get("warnings", []))
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return " x ".join(_fmt(v) for v in x)
    return str(x)


def print_report(d: dict) -> None:
    pr, g, det, v = d["projections"], d["geometry"], d["geometry"]["detector"], d["volume"]
    li = pr["line_integrals"]
    lines = [
        f"scan        {d['scan']} ({d['layout']} layout)",
        f"projections {pr['file']}: {pr['stored_dtype']}, {pr['views_total']} views of "
        f"{_fmt(pr['detector_total'])} (rows x cols); "
        + ("raw counts, flat/dark corrected" if pr["raw_counts"] else "line integrals"),
        f"  used      {_fmt(pr['shape_used'])} (views x rows x cols), line integrals {_fmt(li['min'])} .. "
        f"{_fmt(li['max'])} (mean {_fmt(li['mean'])})",
        f"flats/darks {_fmt(d['flats'])} / {_fmt(d['darks'])}",
        f"geometry    {_fmt(g['file'])}: {g['type']}, {g['views']} views, angles {_fmt(g['angles_deg']['first'])} "
        f"to {_fmt(g['angles_deg']['last'])} deg (step {_fmt(g['angles_deg']['step'])})",
        f"  distances source-origin {_fmt(g['source_origin_mm'])} mm, source-detector "
        f"{_fmt(g['source_detector_mm'])} mm",
        f"  detector  {det['rows']} x {det['cols']} pixels of {_fmt(det['pixel_mm'])} mm, offsets u "
        f"{_fmt(det['offset_u_mm'])} mm, v {_fmt(det['offset_v_mm'])} mm",
        f"volume      {_fmt(v['shape'])} voxels (z, y, x) of {_fmt(v['voxel_mm'])} mm, centre "
        f"{_fmt(v['center_mm'])} mm, extent {_fmt(v['extent_mm'])} mm ({v['mode']})",
        f"field of view {'-' if d['field_of_view']['diameter_mm'] is None else _fmt(d['field_of_view']['diameter_mm']) + ' mm'}"
        " diameter around the rotation axis (seen in every view)",
        f"reference   {'none' if d['reference'] is None else _fmt(d['reference']['shape'])}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    for w in d["warnings"]:
        sys.stderr.write(f"warning: {w}\n")
    sys.stdout.write(f"ok: {len(d['warnings'])} warning(s); try an FBP: ctdip reconstruct {d['scan']} -m fbp\n")


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check_cmd(
        scan: Path = typer.Argument(..., help="Scan folder (ctdip or walnut layout)."),
        setup: Optional[str] = SETUP,
        angles: Optional[int] = ANGLES,
        bin_: Optional[int] = BIN,
        slice_: Optional[str] = SLICE,
        mode: Optional[str] = MODE,
        size: Optional[int] = SIZE,
        orbit: Optional[int] = ORBIT,
        json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Read a scan as `reconstruct` would and print layout, projections, geometry, volume, field
        of view, reference and warnings (exit 2 with one error line if it cannot be reconstructed)."""
        d = describe(scan, {"setup": setup, "angles": angles, "bin": bin_, "slice": slice_, "mode": mode,
                            "size": size, "orbit": orbit})
        if json_out:
            sys.stdout.write(json.dumps(d, indent=2) + "\n")
        else:
            print_report(d)
