"""Time A and A^T per backend against ASTRA's CPU create_sino / create_backprojection.

Fan beam, 60 views over 360 degrees, n x n grids (n = 128, 256, 512) covering the field of view,
detector of 2n pixels. Each timing is the median of several repetitions after one warm-up call;
matrix build times (ASTRA projector -> CSR, uncached) are reported separately.

3D cone beam (``--cone3d``): n^3 volumes of 1 mm voxels, (1.5 n)^2 detectors of 1.5 mm,
source-axis 3.125 n mm, source-detector 4.6875 n mm, full circle; the torch ray marcher against
the matrix backend built from it (``trilinear``, and ``trilinear-coarse`` with its torch twin),
with build time, non-zeros (and the pre-build estimate) and the relative difference of A x.

    .venv/bin/python benchmarks/bench_operators.py [--sizes 128 256 512] [--threads 2]
    .venv/bin/python benchmarks/bench_operators.py --only cone3d --cone3d 32:30 64:60 --threads 1

writes benchmarks/results/operators.md (atomically; each part replaces only its own section).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


_CONE_HEADING = "## Cone beam 3D: torch ray marching vs the matrix built from it"


def _bench_cone3d(args) -> str:
    import torch

    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
    from ctdip.core.operators._matrix import MatrixRayTransform, estimate_nnz
    from ctdip.core.operators._torch import TorchRayTransform

    cpu = torch.device("cpu")
    rows = []
    for spec in args.cone3d:
        n, nv = (int(t) for t in spec.split(":"))
        m = int(1.5 * n)
        g = ProjectionGeometry.circular("cone", np.linspace(0, 2 * np.pi, nv, endpoint=False), m, det_rows=m,
                                        pixel_mm=1.5, source_origin_mm=3.125 * n, source_detector_mm=4.6875 * n)
        vol = VolumeGeometry((n, n, n), 1.0)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((1, n, n, n), generator=gen)
        y = torch.rand((1, nv, m, m), generator=gen)
        reps = 5 if n <= 32 else 3
        for kernel, step in (("trilinear", 0.5), ("trilinear-coarse", 1.0)):
            T = TorchRayTransform(g, vol, cpu, step_fraction=step)
            t_fwd = _time(lambda: T.forward(x), 1)
            t_adj = _time(lambda: T.adjoint(y), 1)
            yt = T.forward(x)
            rows.append(f"| {n}³, {nv} views, {m}² det | torch (step {step} voxel, K = {T.n_steps}) | "
                        f"{t_fwd * 1e3:.0f} | {t_adj * 1e3:.0f} | | | |")
            del T
            t0 = time.perf_counter()
            est = estimate_nnz(g, vol, kernel)
            t_est = time.perf_counter() - t0
            t0 = time.perf_counter()
            op = MatrixRayTransform(g, vol, cpu, kernel, use_cache=False)  # build M, and M^T as CSR
            t_build = time.perf_counter() - t0
            nnz = op.nnz
            ym = op.forward(x)
            rel = float((ym - yt).norm() / yt.norm())
            rows.append(f"| {n}³, {nv} views, {m}² det | matrix `{kernel}` (scipy CSR) | "
                        f"{_time(lambda: op.forward(x), reps) * 1e3:.1f} | {_time(lambda: op.adjoint(y), reps) * 1e3:.1f} | "
                        f"{t_build:.1f} | {nnz / 1e6:.1f} M (est. {est / 1e6:.1f} M in {t_est:.2f} s) | {rel:.1e} |")
            del op
            print(rows[-2:], file=sys.stderr, flush=True)
    return "\n".join([
        _CONE_HEADING,
        "",
        f"Command: `.venv/bin/python benchmarks/bench_operators.py --only cone3d --cone3d {' '.join(args.cone3d)} "
        f"--threads {args.threads}`",
        "",
        f"torch {torch.__version__} with {args.threads} thread(s), 2 logical CPUs shared with other jobs while "
        "measuring (load ~7). n³ volume of 1 mm voxels, (1.5 n)² detector of 1.5 mm, source-axis 3.125 n mm, "
        "source-detector 4.6875 n mm, views over 360°. Median wall time per call of one volume / projection "
        "stack after a warm-up (torch: one timed call). Build: uncached M and Mᵀ, single-threaded. rel: "
        "||A_matrix x − A_torch x|| / ||A_torch x|| for a random x against the torch marcher with the same step.",
        "",
        "| problem | backend | A (ms) | Aᵀ (ms) | build (s) | non-zeros | rel vs torch |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cone3d", nargs="+", default=["32:30", "64:60"], help="n:views pairs")
    ap.add_argument("--only", choices=("all", "fan", "cone3d"), default="all")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "operators.md"))
    args = ap.parse_args(argv)
    os.environ.setdefault("CTDIP_CACHE_DIR", tempfile.mkdtemp(prefix="ctdip-bench-"))

    import astra
    import torch

    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
    from ctdip.core.io import atomic_write_text
    from ctdip.core.operators import RayTransform
    from ctdip.core.operators._matrix import MatrixRayTransform, build_matrix

    torch.set_num_threads(args.threads)
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    fan_old, _, cone_old = old.partition(_CONE_HEADING)
    cone_text = _CONE_HEADING + cone_old if cone_old else ""
    if args.only in ("all", "cone3d"):
        cone_text = _bench_cone3d(args)
        if args.only == "cone3d":
            atomic_write_text(args.out, (fan_old.rstrip() + "\n\n" if fan_old.strip() else "") + cone_text)
            print(cone_text)
            return 0
    rows = []
    for n in args.sizes:
        g = ProjectionGeometry.circular("fan", np.linspace(0, 2 * np.pi, args.views, endpoint=False), 2 * n,
                                        pixel_mm=1.0, source_origin_mm=2.0 * n, source_detector_mm=4.0 * n)
        vol = VolumeGeometry.fov(g, n)
        rng = np.random.default_rng(0)
        x_np = rng.random((n, n), dtype=np.float32)
        y_np = rng.random((args.views, 2 * n), dtype=np.float32)
        x = torch.from_numpy(x_np)[None]
        y = torch.from_numpy(y_np)[:, None]
        reps = 5 if n <= 256 else 3
        res: dict[str, tuple[float, float]] = {}
        # ASTRA CPU, one call each (what a user would do without a matrix)
        pid = astra.create_projector("line_fanflat", g.to_astra(2), vol.to_astra(2))

        def a_fp():
            sid, _ = astra.create_sino(x_np, pid)
            astra.data2d.delete(sid)

        def a_bp():
            bid, _ = astra.create_backprojection(y_np, pid)
            astra.data2d.delete(bid)

        res["ASTRA CPU create_sino / create_backprojection"] = (_time(a_fp, reps), _time(a_bp, reps))
        t0 = time.perf_counter()
        M = build_matrix(g, vol, "line_fanflat", progress=False)
        build_s = time.perf_counter() - t0
        nnz = M.nnz
        del M
        for engine in ("scipy", "torch"):
            op = MatrixRayTransform(g, vol, torch.device("cpu"), engine=engine)
            res[f"matrix ({engine} CSR product)"] = (_time(lambda: op.forward(x[None]), reps),
                                                     _time(lambda: op.adjoint(y[None]), reps))
            del op
        A = RayTransform(g, vol, backend="torch")
        r = 1 if n >= 512 else 2
        res["torch (ray marching, autograd adjoint)"] = (_time(lambda: A(x), r), _time(lambda: A.T(y), r))
        astra.projector.delete(pid)
        base = res["ASTRA CPU create_sino / create_backprojection"]
        for name, (tf, tb) in res.items():
            rows.append(f"| {n}² | {name} | {tf * 1e3:.1f} | {tb * 1e3:.1f} | {base[0] / tf:.2f}× | {base[1] / tb:.2f}× |")
        rows.append(f"| {n}² | matrix build (uncached, {nnz / 1e6:.1f} M non-zeros) | {build_s * 1e3:.0f} | | | |")
        print(rows[-len(res) - 1:], file=sys.stderr, flush=True)

    cpu = platform.processor() or platform.machine()
    text = "\n".join([
        "# Operator timings: fan beam, 60 views",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_operators.py --sizes {' '.join(map(str, args.sizes))} "
        f"--views {args.views} --threads {args.threads}`",
        "",
        f"Machine: {platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs "
        f"(shared with other jobs while measuring), torch {torch.__version__} with {args.threads} threads, "
        f"ASTRA {astra.__version__} (CPU `line_fanflat`). Median wall time per call of a single (unbatched) "
        "image/sinogram after a warm-up; speed-up = ASTRA time / backend time.",
        "",
        "| grid | backend | A (ms) | Aᵀ (ms) | A speed-up vs ASTRA | Aᵀ speed-up vs ASTRA |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    if cone_text:
        text = text + "\n" + cone_text
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
