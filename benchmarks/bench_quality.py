"""Quality benchmark: what a user gets back (recon.tif, shipped defaults, no ground truth) vs tuned TV.

Objects and scans: ``benchmarks/bench_data.py`` (head CT slices z = 40, 60, 80 at 256², fan beam,
Poisson noise with 1e4 photons, 30 and 20 views, plus one 5 % Gaussian row; the 128² walnut phantom
with 5 % Gaussian noise, 30 and 20 views). The head CT is read from ``../shared/data/`` beside the
repository (or ``$CTDIP_BENCH_DATA``); it is not part of ctdip. ``--tuning`` runs the same protocol
on the tuning slices z = 30, 50, 70 and the tuning walnut (seed 1) instead: the only objects a
default may be chosen on; those results go to ``quality_tuning_runs.*`` (``quality_tuning.md`` holds hand-run tuning scripts).

Rows (every one through the real driver ``ctdip.workflows.reconstruct.reconstruct``, scored on the
``recon.tif`` it writes; the reference is used only to score):

* ``fbp``: Hann-windowed FBP (the ``fbp`` preset);
* ``pdhg-tv (oracle)``: PDHG-TV at the PSNR-best weight of a sweep of :data:`ORACLE_GRID` (8
  weights, 300 iterations each): an optimistic baseline, as the handbook tunes its TV;
* ``pdhg-tv (auto)``: PDHG-TV with its shipped default ``tv_weight: auto`` (held-out-view CV);
* every DIP method (and ``recommended``) with its shipped defaults.

Per row: returned PSNR/SSIM (of recon.tif), peak PSNR and iteration (from the run's log), wall
time (``summary.json``, torch on ``--threads`` threads; the machine is shared, the load average at
start and end is recorded, and the fp32 matmul GFLOP/s of ``bench_step.matmul_peak_gflops`` measured
once at the start, so rows from different machines can be told apart), iterations, the command that reproduces it, and the PSNR curve (JSON).

    .venv/bin/python benchmarks/bench_quality.py --objects ct60 --views 30 --methods fbp pdhg-tv-oracle pdhg-tv-auto
    .venv/bin/python benchmarks/bench_quality.py --objects walnut --methods recommended tv
    .venv/bin/python benchmarks/bench_quality.py --objects walnut --methods recommended --seed 1 --save-images /tmp/img

``--seed N`` reruns a DIP row with another network seed (same scan; row ``METHOD seed=N``), so the
spread of a default over seeds is measured, not guessed; ``--save-images`` keeps the returned
images for averages over seeds (``seed_spread.py``). ``--ensemble N`` runs a row with the user
option ``--set ensemble=N`` (row ``METHOD ensemble=N``): the shipped default with N seeds averaged.

Results: ``benchmarks/results/quality.md`` and ``quality.json`` (rows keyed by object, views,
noise and method; a rerun replaces its row), rewritten after every run so a partial table is
readable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_data as bd  # noqa: E402

DIP_METHODS = ["recommended", "recommended-tv", "vanilla", "tv", "tv-hqs", "self-guided", "aseq", "admm", "hqs-denoiser", "red",
               "edip", "edip-fe"]
BASELINES = ["fbp", "pdhg-tv-oracle", "pdhg-tv-auto"]
ORACLE_GRID = [2e-4, 4e-4, 8e-4, 1.2e-3, 1.6e-3, 2.4e-3, 3.2e-3, 6.4e-3]


def scans(objects: list[str], views: list[int], tuning: bool, noises: list[str]):
    """(key, label, argv, Scan factory) for each requested object, view count and CT noise."""
    out = []
    for obj in objects:
        if obj == "walnut":
            seed = bd.TUNING_WALNUT_SEED if tuning else bd.BENCH_WALNUT_SEED
            for v in views:
                out.append((f"walnut{seed}/{v}/gaussian0.05", f"walnut seed {seed} (128²), {v} views, 5 % Gaussian",
                            ["--objects", "walnut", "--views", str(v)], lambda v=v, s=seed: bd.walnut_scan(v, seed=s)))
            continue
        z = int(obj.removeprefix("ct"))
        allowed = bd.TUNING_SLICES if tuning else bd.BENCH_SLICES
        if z not in allowed:
            raise SystemExit(f"error: --objects {obj}: {'tuning' if tuning else 'benchmark'} CT slices are "
                             f"{', '.join('ct%d' % s for s in allowed)}")
        for noise in noises:
            for v in views:
                argv = ["--objects", obj, "--views", str(v), "--noise", noise]
                if noise == "poisson":
                    out.append((f"ct{z}/{v}/poisson1e4", f"head CT z={z} (256²), {v} views, Poisson 1e4 photons",
                                argv, lambda z=z, v=v: bd.ct_scan(z, v)))
                else:
                    out.append((f"ct{z}/{v}/gaussian0.05", f"head CT z={z} (256²), {v} views, 5 % Gaussian",
                                argv, lambda z=z, v=v: bd.ct_scan(z, v, rel=0.05)))
    return out


def read_recon(run_dir: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(run_dir / "recon.tif"), dtype=np.float64)


def one_run(scan, method: str, params: dict, workdir: Path, seed: int = 0) -> dict:
    """``reconstruct`` into a fresh folder (network seed ``seed``); scores recon.tif against the scan's reference."""
    from ctdip.core import metrics
    from ctdip.workflows.reconstruct import reconstruct

    out = workdir / f"run{len(list(workdir.iterdir()))}"
    rs = reconstruct(scan, method, params, output=out, backend="auto", seed=seed)
    s = rs.summary
    ref = np.asarray(scan.reference, dtype=np.float64)
    rec = read_recon(out).reshape(ref.shape)
    rows = []
    mpath = out / "metrics.csv"
    if mpath.is_file():
        import csv

        with open(mpath) as f:
            for r in csv.DictReader(f):
                if r.get("psnr") not in (None, ""):
                    rows.append((int(float(r["iter"])), round(float(r["psnr"]), 3)))
    res = s.get("result", {})
    row = {"method": method, "params": params, "returned_psnr": metrics.psnr(rec, ref),
           "returned_ssim": metrics.ssim(rec, ref), "peak_psnr": s.get("peak", {}).get("psnr"),
           "peak_iter": s.get("peak", {}).get("iter"), "iterations": s.get("iterations"),
           "wall_s": s.get("wall_time_s"), "curve": rows, "image": rec}
    for k in ("tv_weight", "tv_weight_choice", "output", "sigma", "sigma_choice", "family", "divergence_guard",
              "ensemble", "discrepancy_stop"):
        if k in res:
            row[k] = res[k]
    return row


def run_row(name: str, scan, workdir: Path, iterations: int | None, overrides: dict | None = None,
            seed: int = 0) -> dict:
    params: dict = dict(overrides or {})
    if name == "fbp":
        return one_run(scan, "fbp", {}, workdir)
    if name == "pdhg-tv-oracle":
        sweep = [one_run(scan, "pdhg-tv", {"tv_weight": w}, workdir) for w in ORACLE_GRID]
        best = max(sweep, key=lambda r: r["returned_psnr"])
        best = dict(best, method="pdhg-tv-oracle",
                    sweep=[{"tv_weight": r["params"]["tv_weight"], "psnr": r["returned_psnr"],
                            "wall_s": r["wall_s"]} for r in sweep])
        return best
    if name == "pdhg-tv-auto":
        return dict(one_run(scan, "pdhg-tv", params, workdir), method="pdhg-tv-auto")
    if iterations is not None:
        params["iterations"] = iterations
    params["checkpoint_every"] = 0
    return one_run(scan, name, params, workdir, seed=seed)


def fmt(v, nd=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def write_markdown(results: dict, path: Path, tuning: bool) -> None:
    title = "tuning objects (defaults are chosen here)" if tuning else "benchmark objects (nothing is tuned here)"
    lines = [f"# Quality benchmark: returned image vs tuned TV, {title}", "",
             "Generated by `benchmarks/bench_quality.py` (its docstring has the protocol); scans from "
             "`benchmarks/bench_data.py` (head CT from `../shared/data/cranium_ct_hu.npy`, fan beam, "
             "projected from a 2x finer grid). Every row is a `ctdip.workflows.reconstruct.reconstruct` run with "
             "the shipped defaults scored on its `recon.tif` (PSNR/SSIM against the reference, data range "
             "of the reference); *oracle* TV is the PSNR-best of an 8-weight sweep (300 iterations each), "
             "*auto* TV is the shipped reference-free default. Peak = best logged iterate (needs the "
             "reference, for information only). Wall times: torch threads as listed, on a 2-core machine "
             "shared with other jobs (load average at start/end given), so indicative only; the oracle's wall "
             "time is that of its best weight's run. A row noted 'CPU N GFLOP/s' ran where the fp32 matmul "
             "measured N GFLOP/s on its threads when the run started; rows without the note ran before this "
             "was recorded, on the machine of `step.md` (426 GFLOP/s): compare wall times only between rows of "
             "similar N. A method missing from a table was not run (CPU budget).", ""]
    for key in sorted(results):
        rows = results[key]
        any_row = next(iter(rows.values()))
        lines += [f"## {any_row.get('label', key)}", "",
                  "| method | returned PSNR | returned SSIM | Δ oracle TV | peak PSNR | peak iter | iters | wall s | threads | load | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        oracle = rows.get("pdhg-tv-oracle", {}).get("returned_psnr")
        order = [m for m in BASELINES + DIP_METHODS if m in rows] + [m for m in rows if m not in BASELINES + DIP_METHODS]
        for m in order:
            r = rows[m]
            if "error" in r:
                lines.append(f"| {m} | error: {r['error'][:90]} | | | | | | | | | |")
                continue
            d = None if oracle is None else r["returned_psnr"] - oracle
            notes = []
            if m == "pdhg-tv-oracle":
                notes.append(f"best weight {r['params']['tv_weight']:g}")
            sc = r.get("sigma_choice")
            if sc and r.get("family") != "tv":
                notes.append(f"σ {sc['sigma']:.3g} = {sc['sigma_factor']:g} × CV noise level {sc['noise_level']:.3g}")
            elif sc:
                notes.append(f"CV noise level {sc['noise_level']:.3g} > {sc['switch_noise']:g}: TV-DIP")
            ch = r.get("tv_weight_choice")
            if ch:
                notes.append(f"CV weight {ch['chosen']:.3g}" + (f" → DIP {ch['dip_tv_weight']:.3g}" if "dip_tv_weight" in ch else ""))
            g = r.get("divergence_guard")
            if g and g.get("min_residual") is not None:
                ratio = g["final_residual"] / g["min_residual"]
                notes.append(f"guard: final/min data residual {ratio:.2f}" +
                             (f" > {g['factor']:g}, returned it {g['min_iter']}" if g["used"] else ""))
            ds = r.get("discrepancy_stop")
            if ds:
                notes.append(f"discrepancy stop at {ds['stopped_at']}" if ds["stopped_at"] is not None else
                             f"data fit stayed above {ds['tau']:g} η²: ran every iteration")
            en = r.get("ensemble")
            if en:
                notes.append(f"mean of {en['n']} seeds' runs (members " +
                             ", ".join(f"{mm['returned']['psnr']:.2f}" for mm in en["members"]) + " dB)")
            if r.get("note"):
                notes.append(r["note"])
            if r.get("matmul_gflops"):
                notes.append(f"CPU {r['matmul_gflops']:.0f} GFLOP/s")
            if r.get("iterations_override"):
                notes.append(f"iterations set to {r['iterations_override']}")
            load = r.get("load", [None, None])
            lines.append(f"| {m} | {fmt(r['returned_psnr'])} | {fmt(r['returned_ssim'], 4)} | "
                         f"{'–' if d is None else f'{d:+.2f}'} | {fmt(r.get('peak_psnr'))} | {fmt(r.get('peak_iter'))} | "
                         f"{fmt(r.get('iterations'))} | {fmt(r.get('wall_s'), 0)} | {r.get('threads', '–')} | "
                         f"{fmt(load[0], 1)}/{fmt(load[1], 1)} | {'; '.join(notes)} |")
        lines += ["", "Commands: " + "; ".join(f"{m}: `{rows[m].get('command', '')}`" for m in order), ""]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", nargs="*", default=None,
                    help="ct40 ct60 ct80 walnut (default); with --tuning ct30 ct50 ct70 walnut")
    ap.add_argument("--views", nargs="*", type=int, default=[30, 20])
    ap.add_argument("--methods", nargs="*", default=BASELINES + DIP_METHODS)
    ap.add_argument("--noise", nargs="*", default=["poisson"], choices=["poisson", "gaussian"],
                    help="CT noise: Poisson 1e4 photons and/or 5 %% Gaussian (walnut: always 5 %% Gaussian)")
    ap.add_argument("--tuning", action="store_true", help="tuning slices and tuning walnut (quality_tuning_runs.*)")
    ap.add_argument("--iterations", type=int, default=None, help="override DIP iterations (recorded in the row)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="method parameters (only with --tuning: a reported row uses the shipped defaults); "
                         "the row is keyed 'METHOD KEY=VALUE ...'")
    ap.add_argument("--seed", type=int, default=0,
                    help="network seed of the DIP rows (the scan is the same); a row with seed N != 0 is keyed "
                         "'METHOD ... seed=N', so several seeds measure the spread of one default")
    ap.add_argument("--ensemble", type=int, default=1,
                    help="run the DIP rows with the user option --set ensemble=N (the mean of N seeds' runs, "
                         "ctdip.workflows.ensemble); the row is keyed 'METHOD ensemble=N'")
    ap.add_argument("--save-images", default=None, metavar="DIR",
                    help="also write each DIP row's returned image as DIR/<key>__<row>.npy (for seed averages)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    if args.set and not args.tuning:
        ap.error("--set is only for --tuning runs: a benchmark row uses the shipped defaults")
    overrides = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        overrides[k.strip().replace("-", "_")] = yaml.safe_load(v)
    import torch

    torch.set_num_threads(args.threads)
    objects = args.objects or ([f"ct{z}" for z in (bd.TUNING_SLICES if args.tuning else bd.BENCH_SLICES)] + ["walnut"])
    out = Path(args.out) if args.out else HERE / "results" / ("quality_tuning_runs.md" if args.tuning else "quality.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    jpath = out.with_suffix(".json")
    results: dict = json.loads(jpath.read_text()) if jpath.exists() else {}
    if args.render_only:
        write_markdown(results, out, args.tuning)
        return 0
    from bench_step import matmul_peak_gflops

    gflops = round(matmul_peak_gflops(torch.device("cpu")), 1)  # what the wall times were measured on
    print(f"head CT data: {bd.ct_data_path()}", flush=True)
    for key, label, argv, make in scans(objects, args.views, args.tuning, args.noise):
        scan = make()
        for m in args.methods:
            cmd = ["benchmarks/bench_quality.py", *argv, "--methods", m, "--threads", str(args.threads)]
            if args.tuning:
                cmd.append("--tuning")
            if args.iterations is not None and m not in BASELINES:
                cmd += ["--iterations", str(args.iterations)]
            seed = 0 if m in BASELINES else args.seed
            ens = 1 if m in BASELINES else args.ensemble
            if seed:
                cmd += ["--seed", str(seed)]
            if ens > 1:
                cmd += ["--ensemble", str(ens)]
            if args.set:
                cmd += ["--set", *args.set]
            name = " ".join([m, *args.set] + ([f"seed={seed}"] if seed else []) + ([f"ensemble={ens}"] if ens > 1 else []))
            row_overrides = {**overrides, **({"ensemble": ens} if ens > 1 else {})}
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="ctdip_quality_") as tmp:
                try:
                    row = run_row(m, scan, Path(tmp), args.iterations, row_overrides, seed=seed)
                except Exception as e:  # noqa: BLE001 - record and go on
                    row = {"method": m, "error": f"{type(e).__name__}: {e}"}
            row.update(label=label, command=".venv/bin/python " + shlex.join(cmd), threads=args.threads,
                       load=[load0, os.getloadavg()[0]], bench_s=round(time.perf_counter() - t0, 1),
                       matmul_gflops=gflops)
            if args.iterations is not None and m not in BASELINES:
                row["iterations_override"] = args.iterations
            image = row.pop("image", None)
            if args.save_images and image is not None and m not in BASELINES:
                Path(args.save_images).mkdir(parents=True, exist_ok=True)
                np.save(Path(args.save_images) / f"{key.replace('/', '_')}__{name.replace(' ', '_')}.npy", image)
            results.setdefault(key, {})[name] = row
            jpath.write_text(json.dumps(results, indent=1) + "\n")
            write_markdown(results, out, args.tuning)
            print(f"{key:22s} {name:16s} " + (f"error {row['error']}" if "error" in row else
                  f"returned {row['returned_psnr']:.2f} dB  peak {fmt(row.get('peak_psnr'))}  {fmt(row.get('wall_s'), 0)} s"),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
