"""Cost per iteration of DIP methods relative to ``tv`` (the issue asks self-guided <= 2x tv).

The tuning walnut (128², 20 views, ``bench_data.walnut_scan(seed=1)``), 40 iterations per run with
the shipped defaults, one torch thread, each method run twice alternately; the time per iteration
from the run's log. Results: ``benchmarks/results/cost.md``.

    .venv/bin/python benchmarks/bench_cost.py --methods tv self-guided
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    import bench_data as bd
    import torch

    from ctdip.core.problem import Problem
    from ctdip.dip.context import RunContext
    from ctdip.methods import get_method

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=["tv", "self-guided"])
    ap.add_argument("--iterations", type=int, default=40)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    P = Problem.from_scan(bd.walnut_scan(20, seed=bd.TUNING_WALNUT_SEED))
    ms: dict[str, list[float]] = {m: [] for m in args.methods}
    load0 = os.getloadavg()[0]
    for _ in range(2):
        for m in args.methods:
            r = get_method(m)(iterations=args.iterations, log_every=args.iterations, checkpoint_every=0).run(P, RunContext())
            ms[m].append(1000 * r.history[-1]["time_s"] / args.iterations)
    base = min(ms[args.methods[0]])
    lines = ["# Cost per iteration (shipped defaults, 128² tuning walnut, 20 views, one thread)", "",
             f"Command: `.venv/bin/python benchmarks/bench_cost.py {' '.join(sys.argv[1:])}`; load average "
             f"{load0:.1f} → {os.getloadavg()[0]:.1f} (shared 2-core machine).", "",
             f"| method | ms per iteration (best of 2) | × {args.methods[0]} |", "|---|---|---|"]
    for m, v in ms.items():
        lines.append(f"| {m} | {min(v):.1f} | {min(v) / base:.2f} |")
    out = HERE / "results" / "cost.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
