"""Engine overhead: vanilla DIP through ``ctdip.dip.engine`` vs a bare loop of the same step.

Both run the same network (``light`` preset), input, Adam step (the engine's ``make_adam``), gradient clipping and normalised
loss ``||A f(z) - y||^2 / ||y||^2`` on the same 128^2 fan-beam problem (matrix backend, one CPU
thread). The engine adds ES-WMV (W = 100), the output EMA, per-iteration PSNR and min-loss picks,
a metrics row with SSIM every 10 iterations (written to a run folder) and a checkpoint every 500.
Trials alternate bare / engine to spread machine load evenly; the table reports medians.

    .venv/bin/python benchmarks/bench_engine.py                 # about 3 min
    .venv/bin/python benchmarks/bench_engine.py --iterations 100 --trials 3

Results: ``benchmarks/results/engine.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def bare_loop(problem, iterations: int, seed: int = 0) -> float:
    """Seconds per iteration of the plain DIP step (no callbacks)."""
    from ctdip.dip.engine import make_adam
    from ctdip.networks import build_network, network_preset

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = build_network(network_preset("light", 2))
    z = 0.1 * torch.randn((1, 1, *problem.image_shape), generator=g)
    opt = make_adam(net.parameters(), lr=1e-3)  # the engine's Adam (fused where torch has it)
    params = list(net.parameters())
    yn = float((problem.y * problem.y).sum())
    t = time.perf_counter()
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        r = problem.forward(net(z)) - problem.y
        loss = (r * r).sum() / yn
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        float(loss.detach())
    return (time.perf_counter() - t) / iterations


def engine_loop(problem, iterations: int, seed: int = 0) -> float:
    from ctdip.dip.context import RunContext
    from ctdip.dip.runs import RunFolder
    from ctdip.methods import get_method

    with tempfile.TemporaryDirectory() as d:
        m = get_method("vanilla")(iterations=iterations, lr=1e-3, network="light", log_every=10,
                                  checkpoint_every=500)
        m.run(problem, RunContext(run=RunFolder(Path(d) / "run").create(), seed=seed))
        rows = m.engine.history
        return rows[-1]["time_s"] / iterations


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "engine.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from bench_methods import make_problem

    problem = make_problem(args.size, args.views)
    bare_loop(problem, 5)  # warm-up (imports, allocator)
    engine_loop(problem, 5)
    bare, eng = [], []
    for _ in range(args.trials):
        bare.append(bare_loop(problem, args.iterations))
        eng.append(engine_loop(problem, args.iterations))
    b, e = statistics.median(bare), statistics.median(eng)
    overhead = (e - b) / b * 100
    lines = [
        "# Engine overhead (vanilla DIP)", "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_engine.py', *sys.argv[1:]])}`", "",
        f"{args.size}² fan beam, {args.views} views, `light` U-Net, Adam + clipping, one CPU thread on a "
        f"shared 2-core machine; {args.trials} alternating trials of {args.iterations} iterations, medians. "
        "The engine adds ES-WMV (W = 100, O(n) running sums), EMA, per-iteration PSNR and min-loss picks, "
        "a metrics row with SSIM every 10 iterations and a checkpoint every 500.", "",
        "| loop | ms / iteration (median) | all trials (ms) |", "|---|---|---|",
        f"| bare (network step + operator) | {b * 1e3:.1f} | {', '.join(f'{v * 1e3:.1f}' for v in bare)} |",
        f"| engine (`vanilla`) | {e * 1e3:.1f} | {', '.join(f'{v * 1e3:.1f}' for v in eng)} |", "",
        f"Engine overhead: **{overhead:+.1f} %** (target ≤ 10 %).", "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
