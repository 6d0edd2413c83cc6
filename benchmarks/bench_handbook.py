"""The handbook's remaining methods (issue 14): deep decoder, stochastic view subsets, subspace DIP.

Scans (``benchmarks/bench_data.py``, fixed): ``walnut_scan(30)`` and ``walnut_scan(20)`` at 128²
(seed ``BENCH_WALNUT_SEED``), ``ct_scan(60, 30)`` at 256² (head CT slice 60, 30 views, Poisson
1e4 photons; the CT volume is read from ``../shared/data/cranium_ct_hu.npy`` beside the
repository, or ``$CTDIP_BENCH_DATA``). Every run goes through
``ctdip.workflows.reconstruct.reconstruct(scan, method, params, output=...)`` and what is scored is the
returned ``recon.tif`` (PSNR in dB against the reference, data range of the reference).

Per scan:

1. **Oracle PDHG-TV**: ``pdhg-tv`` at 7 log-spaced ``tv_weight`` (1e-4 .. 1e-2, preset iterations),
   each scored against the reference; the best PSNR is the *oracle* (it uses the reference, so it is
   a bound, not a method).
2. **Methods**: ``vanilla`` and ``tv`` (presets), ``vanilla`` and ``tv`` with ``--network
   deep-decoder``, ``vanilla`` with ``view_batch`` (a quarter of the views per step),
   ``edip`` and ``subspace-dip`` (Adam and L-BFGS) from one pretraining trajectory per geometry
   (``ctdip.training.pretrain`` with periodic checkpoints). Reported: returned PSNR, peak PSNR (best logged
   iterate), wall time of ``reconstruct`` (set-up + training), and the training time until a logged
   iterate first reaches the oracle's PSNR (``–``: never within the budget).
3. **Deep decoder, long run** (walnut 30 only): ``vanilla`` + deep decoder for ``--dd-long``
   iterations: does its PSNR fall after the peak (does it need early stopping)?
4. **Per-step cost of view subsets**: mean seconds per step of ``vanilla`` with K of n views, 2D
   (walnut 128², 30 views, light U-Net and deep decoder) and 3D (a 24³ cone-beam walnut, 60 views of
   36², with the torch ray marcher and the deep decoder, where the operator dominates); steps 2..N
   of a short run (the engine's training clock, set-up and first step excluded).

One run at a time, torch threads 1 (the CPU is shared: wall times are indicative only).

    .venv/bin/python benchmarks/bench_handbook.py                 # everything (~1 h on a shared 2-core box)
    .venv/bin/python benchmarks/bench_handbook.py --quick         # smoke test, tiny budgets, to .work

Results: ``benchmarks/results/handbook_methods.md`` and ``.json`` (rewritten after every run; a rerun
skips runs already in the JSON unless ``--force``). Run folders and weights go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_data import BENCH_WALNUT_SEED, ct_scan, walnut_scan  # noqa: E402

TV_WEIGHTS = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]


def scans(quick: bool) -> dict:
    if quick:
        return {"walnut30": lambda: walnut_scan(30, n=64)}
    return {"walnut30": lambda: walnut_scan(30, seed=BENCH_WALNUT_SEED),
            "walnut20": lambda: walnut_scan(20, seed=BENCH_WALNUT_SEED),
            "ct60_30v": lambda: ct_scan(60, 30, photons=1e4)}


def score(path: Path, reference: np.ndarray) -> float:
    import tifffile

    from ctdip.core.metrics import psnr

    x = tifffile.imread(str(path)).astype(np.float32)
    return psnr(x.reshape(reference.shape), reference)


def run(scan, method: str, params: dict, out: Path, oracle: float | None = None) -> dict:
    """reconstruct() into ``out``; the returned recon.tif scored, plus peak, wall and time to oracle."""
    from ctdip.dip.runs import RunFolder
    from ctdip.workflows.reconstruct import reconstruct

    t = time.perf_counter()
    rs = reconstruct(scan, method, params, output=out, seed=0)
    wall = time.perf_counter() - t
    s = rs.summary.get("result", rs.summary)
    rows = RunFolder(out).read_metrics()
    curve = [(int(r["iter"]), float(r["psnr"]), float(r["time_s"])) for r in rows
             if r.get("psnr") not in (None, "") and r.get("time_s") not in (None, "")]
    res = {"method": method, "params": params, "returned_psnr": score(rs.recon_path, scan.reference),
           "peak_psnr": max((c[1] for c in curve), default=None),
           "peak_iter": max(curve, key=lambda c: c[1])[0] if curve else None,
           "wall_s": wall, "train_s": s.get("train_time_s"), "iterations": s.get("iterations"),
           "parameters": (s.get("network") or {}).get("parameters"),
           "curve": curve[:: max(1, len(curve) // 200)]}
    if oracle is not None:
        hit = next((c for c in curve if c[1] >= oracle), None)
        res["time_to_oracle_s"] = None if hit is None else hit[2]
        res["iter_to_oracle"] = None if hit is None else hit[0]
    return res


def trajectory(scan, work: Path, steps: int, every: int, batch: int) -> tuple[Path, float]:
    """Pretrain the light U-Net on ellipses for the scan's geometry, periodic checkpoints kept."""
    from ctdip.core.operators import RayTransform
    from ctdip.networks import network_preset
    from ctdip.training.pretrain import PretrainConfig, pretrain

    out = work / "trajectory.pt"
    meta = work / "trajectory.json"
    if out.exists() and meta.exists():
        return out, json.loads(meta.read_text())["wall_s"]
    work.mkdir(parents=True, exist_ok=True)
    A = RayTransform(scan.geometry, scan.volume, backend="matrix")
    t = time.perf_counter()
    pretrain(A, scan.geometry, scan.volume, network_preset("light", 2), out,
             PretrainConfig(steps=steps, batch_size=batch, val_every=max(1, steps // 4), checkpoint_every=every,
                            val_samples=8))
    wall = time.perf_counter() - t
    meta.write_text(json.dumps({"wall_s": wall, "steps": steps, "batch_size": batch, "checkpoint_every": every}))
    return out, wall


def cone_problem(n3: int, views: int = 60):
    """A noise-free n3³ cone-beam walnut (torch backend): the 3D case where the operator dominates."""
    from ctdip.core.data import Scan
    from ctdip.core.data.phantoms import walnut
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
    from ctdip.core.operators import RayTransform
    from ctdip.core.problem import Problem

    g3 = ProjectionGeometry.circular("cone", np.linspace(0, 2 * np.pi, views, endpoint=False), det_cols=int(1.5 * n3),
                                     det_rows=int(1.5 * n3), pixel_mm=1.0, source_origin_mm=4.0 * n3,
                                     source_detector_mm=6.0 * n3)
    v3 = VolumeGeometry.fov(g3, n3, n3)
    ref = walnut((n3, n3, n3), seed=0).astype(np.float32)
    y3 = RayTransform(g3, v3, backend="torch")(torch.as_tensor(ref)).numpy()
    return Problem.from_scan(Scan(projections=y3, geometry=g3, volume=v3, reference=ref), backend="torch")


def step_costs(quick: bool) -> dict:
    """Seconds per vanilla step with K of n views: 2D walnut (matrix) and 3D cone walnut (torch)."""
    from ctdip.core.problem import Problem
    from ctdip.dip.context import RunContext
    from ctdip.methods import get_method

    out = {}
    n_it2, n_it3 = (5, 3) if quick else (40, 10)
    p2 = Problem.from_scan(walnut_scan(30, n=64 if quick else 128), backend="matrix")
    n3 = 16 if quick else 24
    p3 = cone_problem(n3)
    cases = [("2D 128² walnut, 30 views, matrix, light U-Net", p2, "light", 30),
             ("2D 128² walnut, 30 views, matrix, deep decoder", p2, "deep-decoder", 30),
             (f"3D {n3}³ cone walnut, 60 views, torch, deep decoder", p3, "deep-decoder", 60)]
    for label, prob, net, n in cases:
        rows = []
        n_it = n_it3 if prob is p3 else n_it2
        for k in (n, n // 2, n // 4, n // 8):
            m = get_method("vanilla")(network=net, iterations=n_it, log_every=n_it, view_batch=0 if k == n else k,
                                      es_window=2)
            h = m.run(prob, RunContext(seed=0, quiet=True)).history  # rows at iterations 1 and n_it
            rows.append({"K": k, "s_per_step": (h[-1]["time_s"] - h[0]["time_s"]) / (n_it - 1)})
        out[label] = rows
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test), results to --work")
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "handbook")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "handbook_methods.md")
    ap.add_argument("--iters-128", type=int, default=2000, help="DIP iterations at 128²")
    ap.add_argument("--iters-256", type=int, default=1000, help="DIP iterations at 256² (reduced)")
    ap.add_argument("--sub-iters", type=int, default=500, help="edip / subspace-dip Adam iterations")
    ap.add_argument("--lbfgs-iters", type=int, default=100, help="subspace-dip L-BFGS iterations")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--pretrain-batch", type=int, default=4)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--dd-long", type=int, default=6000, help="deep decoder long-run iterations (walnut 30)")
    ap.add_argument("--dd-lr", type=float, default=0.01, help="Adam step of the deep-decoder runs")
    ap.add_argument("--scans", nargs="*", default=None)
    ap.add_argument("--only", nargs="*", default=None, help="labels of method runs to do")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.quick:
        args.work = args.work.parent / "handbook-quick"
        args.out = args.work / "handbook_methods.md"
        args.iters_128 = args.iters_256 = 30
        args.sub_iters, args.lbfgs_iters, args.dd_long = 20, 5, 60
        args.pretrain_steps, args.pretrain_batch, args.checkpoint_every = 20, 2, 2
    jpath = args.out.with_suffix(".json")
    results = json.loads(jpath.read_text()) if jpath.exists() and not args.force else {}
    cmd = " ".join([".venv/bin/python", "benchmarks/bench_handbook.py", *sys.argv[1:]]) if argv is None else ""
    results["commands"] = [c for c in results.get("commands", []) if c != cmd] + [cmd]
    results["budgets"] = {k: getattr(args, k) for k in ("iters_128", "iters_256", "sub_iters", "lbfgs_iters",
                                                        "pretrain_steps", "pretrain_batch", "checkpoint_every",
                                                        "dd_long", "dd_lr")}
    res_scans = results.setdefault("scans", {})

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps(results, indent=1, default=float))
        write_markdown(results, args.out)

    for name, make in scans(args.quick).items():
        if args.scans and name not in args.scans:
            continue
        scan = make()
        big = scan.volume.shape[-1] >= 256
        iters = args.iters_256 if big else args.iters_128
        R = res_scans.setdefault(name, {"info": dict(scan.info), "pdhg": {}, "runs": {}})
        work = args.work / name
        for w in TV_WEIGHTS:
            key = f"{w:g}"
            if key not in R["pdhg"]:
                r = run(scan, "pdhg-tv", {"tv_weight": w}, work / f"pdhg_{key}")
                R["pdhg"][key] = {k: r[k] for k in ("returned_psnr", "wall_s", "iterations")}
                save()
        best = max(R["pdhg"], key=lambda k: R["pdhg"][k]["returned_psnr"])
        R["oracle"] = {"tv_weight": float(best), "psnr": R["pdhg"][best]["returned_psnr"]}
        oracle = R["oracle"]["psnr"]
        traj, traj_wall = trajectory(scan, work / "pretrain", args.pretrain_steps, args.checkpoint_every,
                                     args.pretrain_batch)
        R["pretrain"] = {"steps": args.pretrain_steps, "batch_size": args.pretrain_batch,
                         "checkpoint_every": args.checkpoint_every, "wall_s": traj_wall}
        K = max(1, scan.geometry.n_views // 4)
        common = {"iterations": iters}
        dd = {"network": "deep-decoder", "lr": args.dd_lr}
        plan = [("vanilla", "vanilla", common), ("tv", "tv", common),
                ("vanilla + deep-decoder", "vanilla", {**common, **dd}),
                ("tv + deep-decoder", "tv", {**common, **dd}),
                (f"vanilla + view_batch={K}", "vanilla", {**common, "view_batch": K}),
                ("edip (same weights)", "edip", {"iterations": args.sub_iters, "weights": str(traj)}),
                ("subspace-dip adam", "subspace-dip", {"iterations": args.sub_iters, "weights": str(traj)}),
                ("subspace-dip lbfgs", "subspace-dip", {"iterations": args.lbfgs_iters, "weights": str(traj),
                                                        "optimizer": "lbfgs", "lr": 1.0})]
        if name == "walnut30":
            plan.append(("vanilla + deep-decoder, long", "vanilla", {"iterations": args.dd_long, **dd}))
            # is the subspace too small? every direction the trajectory has, no mask
            plan.append(("subspace-dip lbfgs, k max, keep 1", "subspace-dip",
                         {"iterations": args.lbfgs_iters, "weights": str(traj), "optimizer": "lbfgs", "lr": 1.0,
                          "subspace_dim": 10**6, "keep": 1.0}))
        for label, method, params in plan:
            if (args.only and label not in args.only) or label in R["runs"]:
                continue
            print(f"[{name}] {label} ...", flush=True)
            try:
                R["runs"][label] = run(scan, method, params, work / label.replace(" ", "_").replace("+", "").replace("=", ""), oracle)
            except Exception as e:  # noqa: BLE001 - record it, go on
                R["runs"][label] = {"method": method, "params": params, "error": f"{type(e).__name__}: {e}"}
            save()
    if "step_costs" not in results and (not args.only or "step_costs" in args.only):
        print("per-step costs ...", flush=True)
        results["step_costs"] = step_costs(args.quick)
    save()
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- report
def fmt(v, nd=2):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def write_markdown(results: dict, path: Path) -> None:
    b = results.get("budgets", {})
    L = ["# Deep decoder, view subsets and subspace DIP (handbook §3.2, §5.2, §5.3)", "",
         "Commands (in order; a rerun skips the runs already done): "
         + "; ".join(f"`{c}`" for c in results.get("commands", [results.get("command", "")])), "",
         "Scans from `benchmarks/bench_data.py` (the head CT from `../shared/data/cranium_ct_hu.npy`, not part of "
         "ctdip). Every run is `ctdip.workflows.reconstruct.reconstruct(scan, method, params, output=...)`; PSNR (dB) of the "
         "returned `recon.tif` against the reference; peak = best logged iterate (every 10 iterations); wall = "
         "the whole `reconstruct` call; *to oracle* = training seconds until a logged iterate first reaches the "
         "oracle PDHG-TV PSNR (best of 7 `tv_weight` in 1e-4..1e-2, scored against the reference). One CPU "
         "thread per run on a shared 2-core machine: times are indicative.", "",
         f"Budgets: DIP {b.get('iters_128')} iterations at 128², **{b.get('iters_256')} at 256² (reduced)**; "
         f"edip / subspace-dip (Adam) {b.get('sub_iters')} iterations, subspace-dip L-BFGS {b.get('lbfgs_iters')} "
         f"iterations (each up to 25 evaluations); deep decoder with Adam lr {b.get('dd_lr')} (the rate of "
         f"Heckel & Hand's experiments, not tuned here); the trajectory: `pretrain` of the light U-Net on ellipses for each geometry, "
         f"{b.get('pretrain_steps')} steps × {b.get('pretrain_batch')} phantoms, a checkpoint every "
         f"{b.get('checkpoint_every')} steps (its wall time is in the pretrain line, not in the edip / "
         "subspace-dip rows). Other parameters from the presets.", ""]
    for name, R in results.get("scans", {}).items():
        info = R.get("info", {})
        o = R.get("oracle", {})
        L += [f"## {name}: {info.get('object')}, {info.get('views')} views, {info.get('grid')}², noise {info.get('noise')}", "",
              f"Oracle PDHG-TV: {fmt(o.get('psnr'))} dB at tv_weight {o.get('tv_weight')} "
              "(sweep: " + ", ".join(f"{k}: {fmt(v['returned_psnr'])}" for k, v in R.get("pdhg", {}).items()) + ").",
              ""]
        if "pretrain" in R:
            p = R["pretrain"]
            L += [f"Pretraining trajectory: {p['steps']} steps × {p['batch_size']}, checkpoint every "
                  f"{p['checkpoint_every']}: {fmt(p['wall_s'], 0)} s.", ""]
        L += ["| run | params | iters | returned PSNR | peak PSNR (iter) | wall s | to oracle s (iter) |",
              "|---|---|---|---|---|---|---|"]
        for label, r in R.get("runs", {}).items():
            if "error" in r:
                L.append(f"| {label} | error: {r['error'][:100]} | | | | | |")
                continue
            extra = f"{r.get('parameters')} net params" if "deep-decoder" in label else ""
            L.append(f"| {label} | {extra} | {fmt(r.get('iterations'))} | {fmt(r.get('returned_psnr'))} | "
                     f"{fmt(r.get('peak_psnr'))} ({fmt(r.get('peak_iter'))}) | {fmt(r.get('wall_s'), 0)} | "
                     f"{fmt(r.get('time_to_oracle_s'), 0)} ({fmt(r.get('iter_to_oracle'))}) |")
        L.append("")
        long = R.get("runs", {}).get("vanilla + deep-decoder, long")
        if long and "curve" in long:
            pts = long["curve"]
            marks = [next(c for c in pts if c[0] >= t) for t in (100, 300, 1000, 2000, 3000, 4000, 5000)
                     if pts[-1][0] >= t] + [pts[-1]]
            L += ["Deep decoder long run (PSNR at iteration): " + ", ".join(f"{c[0]}: {c[1]:.2f}" for c in marks), ""]
    sc = results.get("step_costs")
    if sc:
        L += ["## Per-step cost with K of n views (vanilla; steps 2..N of a short run, set-up excluded)", "",
              "| case | K = n | K = n/2 | K = n/4 | K = n/8 |", "|---|---|---|---|---|"]
        for label, rows in sc.items():
            L.append(f"| {label} | " + " | ".join(f"K = {r['K']}: {r['s_per_step'] * 1000:.0f} ms" for r in rows) + " |")
        L.append("")
    if results.get("notes"):
        L += ["## What this shows", ""] + [f"- {n}" for n in results["notes"]] + [""]
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
