"""Step speed: one Adam step of the ``light`` and ``paper`` U-Nets, taken apart, and its variants.

For each network and grid (2D fan beam, n² image, 60 views, detector 1.5 n; 3D: the ``3d`` U-Net on
an n³ cone beam) the benchmark times, in one process and interleaved so that machine load hits every
variant alike (each number is the median of ``--repeats`` repetitions of ``--steps`` calls):

* ``net f+b``: network forward + backward of ``mean(f(z)^2)`` (no operator), per variant;
* ``operator``: ``A x`` and ``A^T r`` once each (the data term's forward and backward);
* ``TV``: the isotropic TV of the image (``ctdip.priors.denoisers.tv_norm``), forward + backward;
* ``Adam``: ``optimizer.step()`` alone;
* ``step``: the bare vanilla DIP step ``zero_grad; L = ||A f(z) - y||^2 / ||y||^2; backward;
  clip_grad_norm(1); Adam`` and the same with ``+ 1e-3 TV(f(z))`` (the ``tv`` method's loss);
* ``engine``: ``ctdip.methods.get_method("vanilla")`` run for the same steps (ES-WMV, EMA,
  picks, metrics rows), per iteration; its overhead is relative to the bare step.

Network variants (``--variants``): ``default`` (the shipped code path: the engine's fused Adam),
``before`` (the default network with the per-tensor loop Adam the engine used before it took the
fused one; the speed-up table is relative to it when it is run), ``channels_last`` (the
U-Net's opt-in ``channels_last: true``), ``bf16`` (the U-Net's opt-in ``precision: bfloat16``),
``fast`` (both), ``compile`` (``torch.compile`` of the default network;
off unless asked, its first call compiles for a minute or more), ``threads1`` (the default
network on one thread instead of ``--threads``) and ``passive`` (the default network in a child
process with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep at barriers instead of spinning,
which matters when other jobs share the cores). Achieved GFLOP/s = convolution/matmul FLOPs of
forward + backward (``torch.utils.flop_counter``) / time, against the machine's fp32 matmul peak
measured here (best of a 1024³ ``torch.mm`` loop on the same threads). The load average is
recorded, since timings on a shared machine are noisy.

    .venv/bin/python benchmarks/bench_step.py                  # CPU, 2 threads, about 4 min
    .venv/bin/python benchmarks/bench_step.py --sizes 128 256 501 --variants default channels_last compile
    python benchmarks/bench_step.py --device cuda --backend torch --sizes 128 256 501 --sizes3d 64 128

Results: ``benchmarks/results/step.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int) -> float:
    """Milliseconds per call of ``fn`` over ``steps`` calls."""
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / steps * 1e3


def matmul_peak_gflops(device: torch.device, n: int = 1024, seconds: float = 1.5) -> float:
    """Best fp32 ``torch.mm`` throughput over ~``seconds`` (n³ multiply-adds = 2 n³ FLOPs)."""
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        ms = timed(lambda: a @ b, device, 3)
        best = max(best, 2 * n**3 / (ms * 1e-3) / 1e9)
    return best


def make_problem(n: int, dim: int, backend: str, device: torch.device, views: int = 60):
    """A walnut (2D fan beam, n²) or ball phantom (3D cone beam, n³) as a ``ctdip`` Problem."""
    from ctdip.core.data import Scan
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry
    from ctdip.core.operators import RayTransform
    from ctdip.core.problem import Problem

    ang = np.linspace(0, 2 * np.pi, views, endpoint=False)
    kw = dict(det_cols=int(1.5 * n), pixel_mm=1.0, source_origin_mm=4.0 * n, source_detector_mm=6.0 * n)
    if dim == 2:
        from ctdip.core.data.phantoms import walnut

        g = ProjectionGeometry.circular("fan", ang, **kw)
        vol = VolumeGeometry.fov(g, n)
        ref = walnut((n, n), seed=0)[None].astype(np.float32)
    else:
        g = ProjectionGeometry.circular("cone", ang, det_rows=int(1.5 * n), **kw)
        vol = VolumeGeometry.fov(g, n)
        # the cone FOV may hold one slice more than n (e.g. 129 x 128 x 128): grid on vol.shape
        cz, cy, cx = ((np.arange(k) - (k - 1) / 2) / (n / 2) for k in vol.shape)
        r2 = cz[:, None, None] ** 2 + cy[None, :, None] ** 2 + cx[None, None, :] ** 2
        ref = (0.02 * (r2 < 0.6) + 0.01 * (r2 < 0.2)).astype(np.float32)
    y = RayTransform(g, vol, backend=backend, device=device)(torch.as_tensor(ref, device=device)).cpu().numpy()
    return Problem.from_scan(Scan(projections=y, geometry=g, volume=vol, reference=ref), backend=backend,
                             device=device)


VARIANT_ARCH = {"channels_last": {"channels_last": True}, "bf16": {"precision": "bfloat16"},
                "fast": {"channels_last": True, "precision": "bfloat16"}}


def make_optimizer(variant: str, net):
    """The engine's Adam (:func:`ctdip.dip.engine.make_adam`: fused where torch has it) for every
    variant but ``before``, which keeps the per-tensor loop Adam the engine used before."""
    from ctdip.dip.engine import make_adam

    if variant == "before":
        return torch.optim.Adam(net.parameters(), lr=1e-3, foreach=False)
    return make_adam(net.parameters(), lr=1e-3)


def build(preset: str, dim: int, variant: str, device: torch.device):
    from ctdip.networks import build_network, network_preset

    torch.manual_seed(0)
    arch = network_preset(preset, dim, **VARIANT_ARCH.get(variant, {}))
    net = build_network(arch).to(device)
    return torch.compile(net) if variant == "compile" else net


def net_flops(net, z) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        net(z).square().mean().backward()
    net.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


class Case:
    """Callables for one (network, grid) on one device; each ``run_*`` is one timed unit."""

    def __init__(self, preset: str, n: int, dim: int, backend: str, device: torch.device, variants: list[str]):
        self.problem = make_problem(n, dim, backend, device)
        self.device, self.preset = device, preset
        g = torch.Generator().manual_seed(0)
        self.z = (0.1 * torch.randn((1, 1, *self.problem.image_shape), generator=g)).to(device)
        self.nets = {v: build(preset, dim, v, device) for v in variants if v != "threads1"}
        if "threads1" in variants:
            self.nets["threads1"] = self.nets.get("default") or build(preset, dim, "default", device)
        self.opts = {v: make_optimizer(v, net) for v, net in self.nets.items()}
        self.yn = float((self.problem.y * self.problem.y).sum())
        x = self.problem.x_init.detach().reshape(1, 1, *self.problem.image_shape)
        self.x, self.r = x, self.problem.forward(x).detach()
        self.flops = net_flops(self.nets[next(iter(self.nets))], self.z)

    def net_fb(self, v: str) -> None:
        net = self.nets[v]
        net.zero_grad(set_to_none=True)
        net(self.z).square().mean().backward()

    def operator(self) -> None:
        self.problem.forward(self.x)
        self.problem.adjoint(self.r)

    def tv(self) -> None:
        from ctdip.priors.tv import tv_norm

        x = self.x.clone().requires_grad_(True)
        tv_norm(x).backward()

    def adam(self, v: str = "default") -> None:
        net, opt = self.nets[v], self.opts[v]
        for p in net.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        opt.step()

    def step(self, v: str, tv_weight: float = 0.0) -> None:
        from ctdip.priors.tv import tv_norm

        net, opt = self.nets[v], self.opts[v]
        opt.zero_grad(set_to_none=True)
        x = net(self.z)
        r = self.problem.forward(x) - self.problem.y
        loss = (r * r).sum() / self.yn
        if tv_weight:
            loss = loss + tv_weight * tv_norm(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(net.parameters()), 1.0)
        opt.step()
        float(loss.detach())

    def engine_ms(self, steps: int) -> float:
        from ctdip.dip.runs import RunFolder
        from ctdip.methods import get_method
        from ctdip.methods.base import RunContext

        with tempfile.TemporaryDirectory() as d:
            m = get_method("vanilla")(iterations=steps, lr=1e-3, network=self.preset, log_every=10,
                                      checkpoint_every=0)
            m.run(self.problem, RunContext(run=RunFolder(Path(d) / "run").create(), seed=0, quiet=True))
            return m.engine.history[-1]["time_s"] / steps * 1e3


def with_threads(n: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def bench_case(case: Case, steps: int | None, repeats: int, threads: int, engine: bool,
               target_ms: float = 300.0, steps_only: bool = False, deadline: float = math.inf) -> dict:
    """Medians (ms) of every unit; variants interleaved within each repetition. Each timing is
    ``steps`` calls (default: as many as fill ~``target_ms``, 1 to 20); past ``deadline``
    (``time.perf_counter()``) no further repetition starts (at least one is always done)."""
    d = case.device
    units: dict[str, tuple] = {}  # name -> (one call, torch threads)
    for v in case.nets:
        nv, nt = ("default", 1) if v == "threads1" else (v, threads)
        if v != "before":  # the default network: its forward/backward is the default's
            units[f"net f+b [{v}]"] = (lambda nv=nv: case.net_fb(nv), nt)
        units[f"step [{v}]"] = (lambda nv=nv: case.step(nv), nt)
    if not steps_only:
        units["step+TV [default]"] = (lambda: case.step("default", 1e-3), threads)
        units["operator"] = (case.operator, threads)
        units["TV"] = (case.tv, threads)
        units["Adam"] = (case.adam, threads)
        if "before" in case.opts:
            units["Adam [before]"] = (lambda: case.adam("before"), threads)
    n_calls = {}
    for k, (fn, nt) in units.items():  # warm-up (allocator, oneDNN/cuDNN kernel choice, compilation)
        with_threads(nt, lambda: timed(fn, d, 1))
        ms = with_threads(nt, lambda: timed(fn, d, 1))
        n_calls[k] = steps or max(1, min(20, int(target_ms / max(ms, 1e-3))))
    out: dict[str, list[float]] = {k: [] for k in units}
    for rep in range(repeats):
        if rep and time.perf_counter() > deadline:
            break
        for k, (fn, nt) in units.items():
            out[k].append(with_threads(nt, lambda: timed(fn, d, n_calls[k])))
    if engine:
        out["engine (vanilla)"] = [case.engine_ms(max(n_calls["step [default]"] * repeats, 5))]
    return {k: statistics.median(v) for k, v in out.items()} | {"_calls": n_calls,
                                                                "_repeats": len(out["step [default]"])}


def passive_wait_policy(args, preset: str, n: int, dim: int, minutes: float) -> dict:
    """The default network's ``net f+b`` and ``step`` in a child process with
    ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning at barriers; it must be
    set before torch loads OpenMP, hence the child)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--nets", preset,
           "--sizes3d" if dim == 3 else "--sizes", str(n), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--backend", args.backend, "--device", args.device,
           "--max-minutes", f"{minutes:.3f}"]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    p = subprocess.run(cmd, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True)
    if p.returncode:
        print(f"passive child failed: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"net f+b [passive]": r["net f+b [default]"], "step [passive]": r["step [default]"]}


def fmt_ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="matrix", help="operator backend (matrix on CPU; torch on a GPU without ASTRA)")
    ap.add_argument("--nets", nargs="*", default=["light", "paper"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[128, 256])
    ap.add_argument("--sizes3d", nargs="*", type=int, default=[], help="3D grids for the 3d U-Net (e.g. 64 128)")
    ap.add_argument("--variants", nargs="*",
                    default=["before", "default", "channels_last", "bf16", "fast", "threads1", "passive"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="calls per timing (default: by cost)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--max-minutes", type=float, default=4.5,
                    help="time budget: fewer repetitions (at least one) when a loaded machine is slow")
    ap.add_argument("--skip", nargs="*", default=["paper:501"], help="net:size pairs left out (default paper:501)")
    ap.add_argument("--out", default=str(ROOT / "results" / "step.md"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one case, JSON to stdout
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        args.variants = [v for v in args.variants if v not in ("threads1", "passive")]
    if args.child:
        dim = 3 if args.sizes3d else 2
        n = (args.sizes3d or args.sizes)[0]
        case = Case(args.nets[0], n, dim, args.backend, device, ["default"])
        res = bench_case(case, args.steps, args.repeats, args.threads, False, steps_only=True,
                         deadline=time.perf_counter() + args.max_minutes * 60)
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))
        return 0
    load0 = os.getloadavg()
    peak = matmul_peak_gflops(device)
    cases = [(p, n, 2) for p in args.nets for n in args.sizes if f"{p}:{n}" not in args.skip]
    cases += [("3d", n, 3) for n in args.sizes3d]
    rows = []
    t_start = time.perf_counter()
    for preset, n, dim in cases:
        t0 = time.perf_counter()
        case = Case(preset, n, dim, args.backend, device, args.variants)
        left = args.max_minutes * 60 - (time.perf_counter() - t_start)
        share = left / (len(cases) - len(rows)) * (0.6 if "passive" in args.variants else 0.9)
        res = bench_case(case, args.steps, args.repeats, args.threads, not args.no_engine,
                         deadline=time.perf_counter() + share)
        if "passive" in args.variants:
            res.update(passive_wait_policy(args, preset, n, dim, share * 0.5 / 60))
        res.update(preset=preset, n=n, dim=dim, flops=case.flops, steps=res["_calls"]["step [default]"],
                   wall_s=time.perf_counter() - t0)
        rows.append(res)
        print(f"{preset} {n}{'³' if dim == 3 else '²'}: " + ", ".join(
            f"{k} {fmt_ms(v)}" for k, v in res.items() if isinstance(v, float) and not k.startswith(("flops", "wall"))),
            flush=True)
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # rewritten after every case, so a run stopped by a time limit leaves the finished rows
        write_markdown(rows, args, peak, load0, os.getloadavg(), time.perf_counter() - t_start,
                       done=len(rows) == len(cases))
    return 0


def write_markdown(rows, args, peak, load0, load1, total_s, done: bool = True) -> None:
    dev = args.device
    if dev.startswith("cuda"):
        dev = f"{dev} ({torch.cuda.get_device_name(torch.device(args.device))})"
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {args.threads} torch threads"
    variants = [v for v in args.variants if any(f"step [{v}]" in r for r in rows)]
    lines = [
        "# Step speed: one Adam step of the DIP U-Nets" + ("" if done else " (partial: run still going or stopped)"), "",
        f"Command: `{' '.join(['python', 'benchmarks/bench_step.py', *sys.argv[1:]])}` "
        f"({total_s:.0f} s). torch {torch.__version__}, device {dev}, operator backend `{args.backend}`. "
        f"Load average (1 min) {load0[0]:.2f} at start, {load1[0]:.2f} at end"
        f"{' (a shared machine: timings are noisy)' if max(load0[0], load1[0]) > 1.5 else ''}. "
        f"Measured fp32 matmul peak (1024³ `torch.mm`, best): **{peak:.1f} GFLOP/s**.", "",
        "Medians over repetitions, ms per call; variants are interleaved within each repetition. GFLOP/s = "
        "forward + backward convolution FLOPs of the network / `net f+b` time. See the script's docstring "
        "for what each column contains.", "",
        "| net | grid | GFLOP f+b | " + " | ".join(f"net f+b {v}" for v in variants) + " | GFLOP/s (default) | % of peak | "
        "operator | TV | Adam | " + " | ".join(f"step {v}" for v in variants) + " | step+TV | engine | engine overhead |",
        "|" + "---|" * (11 + 2 * len(variants)),
    ]
    for r in rows:
        grid = f"{r['n']}{'³' if r['dim'] == 3 else '²'}"
        fb = r.get("net f+b [default]", next(v for k, v in r.items() if k.startswith("net f+b")))
        gfs = r["flops"] / (fb * 1e-3) / 1e9
        eng = r.get("engine (vanilla)")
        step = r.get("step [default]")
        over = f"{(eng - step) / step * 100:+.1f} %" if eng and step else "–"
        adam = fmt_ms(r["Adam"]) + (f" ({fmt_ms(r['Adam [before]'])} before)" if "Adam [before]" in r else "")
        lines.append(
            f"| {r['preset']} | {grid} | {r['flops'] / 1e9:.2f} | "
            + " | ".join(fmt_ms(r[f'net f+b [{v}]']) if f'net f+b [{v}]' in r else "–" for v in variants)
            + f" | {gfs:.1f} | {gfs / peak * 100:.0f} % | {fmt_ms(r['operator'])} | {fmt_ms(r['TV'])} | {adam} | "
            + " | ".join(fmt_ms(r[f'step [{v}]']) if f'step [{v}]' in r else "–" for v in variants)
            + f" | {fmt_ms(r['step+TV [default]'])} | {fmt_ms(eng) if eng else '–'} | {over} |")
    ref = "before" if "before" in variants else "default"
    lines += ["", f"Speed-up of each variant's step over the {ref} step (same run, same load):", "",
              "| net | grid | " + " | ".join(variants) + " |", "|" + "---|" * (2 + len(variants))]
    for r in rows:
        base = r.get(f"step [{ref}]")
        lines.append(f"| {r['preset']} | {r['n']}{'³' if r['dim'] == 3 else '²'} | " + " | ".join(
            f"{base / r[f'step [{v}]']:.2f}×" if base and f"step [{v}]" in r else "–" for v in variants) + " |")
    lines += ["", "Calls per timing and repetitions: " + ", ".join(
        f"{r['preset']} {r['n']}: {r['steps']} × {r['_repeats']}" for r in rows) + ".", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
