"""Time to quality of stochastic view subsets in 3D, where the operator dominates the step.

The 24³ cone-beam walnut of ``bench_handbook.cone_problem`` (60 views, torch ray-marching backend,
noise-free data), vanilla DIP with the deep decoder (lr 0.01, as in bench_handbook), all 60 views
per step against ``view_batch`` = 15, each for about the same wall time; PSNR of every 5th iterate
against the phantom, with its wall time. One torch thread.

    .venv/bin/python benchmarks/bench_view_subsets_3d.py        # about 5 min

Writes ``benchmarks/results/view_subsets_3d.md`` (+ ``.json`` with the curves).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from bench_handbook import cone_problem

    from ctdip.core.metrics import psnr
    from ctdip.dip.context import RunContext
    from ctdip.methods import get_method

    torch.set_num_threads(1)
    prob = cone_problem(24)
    fdk = psnr(prob.x_init, prob.reference)
    runs = {}
    for k, iters in ((0, 80), (15, 300)):
        m = get_method("vanilla")(network="deep-decoder", lr=0.01, iterations=iters, log_every=5, view_batch=k,
                                  es_window=10, checkpoint_every=0)
        h = m.run(prob, RunContext(seed=0, quiet=True)).history
        runs[k] = [{"iter": r["iter"], "time_s": r["time_s"], "psnr": r["psnr"]} for r in h]
        print(k, iters, h[-1]["time_s"], max(r["psnr"] for r in h), flush=True)
    full_final = runs[0][-1]["psnr"]

    def first(curve, target):
        for r in curve:
            if r["psnr"] >= target:
                return r
        return None

    lines = ["# Stochastic view subsets in 3D: time to quality", "",
             "`.venv/bin/python benchmarks/bench_view_subsets_3d.py` (one torch thread on a 2-core machine shared",
             f"with other jobs, load average {os.getloadavg()[0]:.1f} at the end; times indicative). 24³ cone-beam "
             "walnut, 60 views, torch backend, noise-free data, vanilla DIP with the deep decoder (lr 0.01).", "",
             f"FDK (Ram-Lak, the DIP's x_init): {fdk:.2f} dB. Target A = FDK + 3 dB = {fdk + 3:.2f} dB; target B = "
             f"the full-batch run's PSNR after {runs[0][-1]['iter']} iterations = {full_final:.2f} dB.", "",
             "| views per step | iterations | wall s | s / it | final PSNR | peak PSNR | time to A (it) | time to B (it) |",
             "|---|---|---|---|---|---|---|---|"]
    for k, curve in runs.items():
        last = curve[-1]
        a, b = first(curve, fdk + 3), first(curve, full_final)
        ta = f"{a['time_s']:.0f} s ({a['iter']})" if a else "not reached"
        tb = f"{b['time_s']:.0f} s ({b['iter']})" if b else "not reached"
        lines.append(f"| {'60 (all)' if k == 0 else k} | {last['iter']} | {last['time_s']:.0f} | "
                     f"{last['time_s'] / last['iter']:.2f} | {last['psnr']:.2f} | {max(r['psnr'] for r in curve):.2f} | "
                     f"{ta} | {tb} |")
    out = ROOT / "results" / "view_subsets_3d.md"
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"fdk_psnr": fdk, "runs": {str(k): v for k, v in runs.items()}}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
