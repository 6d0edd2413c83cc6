"""Where the time of one DIP step goes: ``torch.profiler`` over Adam steps of a U-Net (issue 13).

One step is the shipped step of ``bench_step.Case.step`` (network forward, operator, data loss,
backward, gradient clipping, the engine's Adam), on the walnut fan-beam problem of
``bench_step.py``. The self CPU time of every profiled aten op is summed into groups (convolution
forward/backward, GroupNorm, LeakyReLU, copies, optimiser, other) and written as a
markdown table, with the ten most expensive ops, so one can see whether anything besides the
convolutions is worth optimising. The ``matrix`` operator runs in scipy (outside aten), so it is
timed on its own by wall clock, beside the wall time of an unprofiled step::

    .venv/bin/python benchmarks/profile_step.py --preset light --size 128 --threads 2 \
        --out benchmarks/results/step_profile_light_128.md
"""
from __future__ import annotations

import argparse
import platform
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import Case, timed  # noqa: E402

# (group, substrings of the aten op name); the first match wins
GROUPS = [
    ("convolution (mkldnn, forward + backward)", ("mkldnn_conv", "convolution_backward")),
    ("convolution (slow path, 1x1 skips)", ("_slow_conv2d", "thnn_conv")),
    ("GroupNorm (forward + backward)", ("native_group_norm",)),
    ("LeakyReLU (forward + backward)", ("leaky_relu",)),
    ("optimiser (fused Adam) and clipping", ("adam", "_foreach", "norm", "clamp")),
    ("copies and layout", ("copy_", "contiguous", "clone", "cat", "upsample", "to_dense")),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="light")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="profiled steps (after 3 warm-up steps)")
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/step_profile_PRESET_SIZE.md")
    a = ap.parse_args(argv)
    a.out = a.out or Path(f"benchmarks/results/step_profile_{a.preset}_{a.size}.md")
    torch.set_num_threads(a.threads)
    case = Case(a.preset, a.size, 2, "matrix", torch.device("cpu"), ["default"])
    for _ in range(3):
        case.step("default")
    step_ms = timed(lambda: case.step("default"), case.device, a.steps)
    op_ms = timed(case.operator, case.device, a.steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            case.step("default")
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total
    ms_step = total / 1e3 / a.steps
    lines = [f"# Where one `{a.preset}` U-Net step at {a.size}² goes (self CPU time of aten ops)", "",
             f"Command: `.venv/bin/python benchmarks/profile_step.py --preset {a.preset} --size {a.size} "
             f"--threads {a.threads} --steps {a.steps} --out {a.out}`. torch {torch.__version__}, {platform.machine()}, "
             f"{a.threads} threads, operator backend `matrix`; {a.steps} profiled steps after 3 warm-up steps, "
             f"{ms_step:.1f} ms of aten self time per step (the profiler adds overhead: compare shares, "
             "not times, with `step.md`).", "",
             f"Unprofiled, by wall clock: one step {step_ms:.1f} ms, of which the operator (one A and one Aᵀ, "
             f"scipy sparse, not in the table) {op_ms:.1f} ms ({100 * op_ms / step_ms:.0f} %). "
             "Shares below are of the aten self time.", "",
             "| group | share | ms per step |", "|---|---|---|"]
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {g} | {100 * t / total:.1f} % | {t / 1e3 / a.steps:.2f} |")
    lines += ["", "Ten most expensive ops:", "", "| op | group | share |", "|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        lines.append(f"| `{e.key}` | {group_of(e.key)} | {100 * e.self_cpu_time_total / total:.1f} % |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
