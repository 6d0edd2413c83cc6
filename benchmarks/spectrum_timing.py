"""Timings of `ctdip spectrum`'s randomised Jacobian SVD (EDIP Alg. 1) on CPU.

    .venv/bin/python benchmarks/spectrum_timing.py [--threads 1] [--out benchmarks/results/spectrum.md]

A U-Net (preset ``tiny`` and ``light``) at its initialisation, input = FBP of a simulated fan-beam
walnut (60 views), operator = the scan's ray transform. For each (network, size, rank) the table
gives the parameter count, wall time of the Jacobian SVD (JVPs + VJPs + QR/SVD, ``power_iters``
= 1, oversampling 10) and of 8 NTK eigenimages, and the relative error of the top-5 singular
values against a second run with 3 power iterations (a convergence check).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/spectrum.md")
    ap.add_argument("--cases", default="tiny:64:20,light:64:20,light:64:50,light:128:20")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from ctdip.core.data.loader import load_scan
    from ctdip.core.data.simulate import simulate
    from ctdip.core.problem import Problem
    from ctdip.networks import build_network, network_preset
    from ctdip.workflows.spectrum import analyse_network

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases.split(","):
            net_name, size, rank = case.split(":")
            size, rank = int(size), int(rank)
            scan_dir = Path(tmp) / f"s{size}"
            if not scan_dir.exists():
                simulate(scan_dir, phantom="walnut", geometry="fan", angles=60, size=size, noise=0.02, seed=0)
            prob = Problem.from_scan(load_scan(scan_dir))
            torch.manual_seed(0)
            net = build_network(network_preset(net_name, 2))
            z = prob.to_image(prob.x_init)
            t = time.perf_counter()
            res = analyse_network(net, z, op=prob.forward, op_adjoint=prob.adjoint, rank=rank, ntk_rank=8,
                                  power_iters=1)
            total = time.perf_counter() - t
            ref = analyse_network(net, z, op=prob.forward, op_adjoint=prob.adjoint, rank=rank, ntk_rank=0,
                                  power_iters=3, seed=1)
            err = float(np.max(np.abs(res["singular_values"][:5] / ref["singular_values"][:5] - 1)))
            rows.append((net_name, f"{size}x{size}", int(res["n_params"]), rank, float(res["time_jacobian_s"]),
                         float(res["time_ntk_s"]), total, err))
            print(rows[-1], flush=True)
    lines = [
        "# `ctdip spectrum` timings (CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/spectrum_timing.py --threads {a.threads} --cases {a.cases}`",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} thread(s), "
        "shared with other jobs (timings are upper bounds).",
        "",
        "| network | image | parameters | rank k | J SVD (s) | NTK, 8 eigenimages (s) | total (s) | top-5 sigma rel. diff vs q=3 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1e} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
