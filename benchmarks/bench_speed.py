"""Time to quality: seconds and iterations until a method's image is as good as a tuned classical one.

Scans (``benchmarks/bench_data.py``): the procedural walnut at 128² (fan beam, 5 % Gaussian noise)
and the head-CT slice z = 60 at 256² (fan beam, Poisson 1e4 photons; read from ``../shared/data``
beside the repository or ``$CTDIP_BENCH_DATA``, not part of ctdip), 30 views each. The reference
is used only to score.

Every DIP run goes through the real driver (``ctdip.workflows.reconstruct.reconstruct``, shipped
defaults, matrix backend, ``--threads`` torch threads). While it runs, every ``--every`` iterations
the benchmark scores the current iterate x_t and the output EMA (``x_ema <- 0.99 x_ema + 0.01 x_t``,
what ``recon_ema.tif`` holds) against the reference; the scoring time is subtracted from the
clock, which starts when ``reconstruct`` is called (so a method's set-up, e.g. ``tv``'s
cross-validated weight or FBP, counts). Per method and target it reports the first time and
iteration at which the EMA image reaches

* (a) FBP + 3 dB (FBP: the ``fbp`` preset, Hann window),
* (b) the oracle-tuned PDHG-TV PSNR (best of ``bench_quality.ORACLE_GRID``, as in ``quality.md``),
* (c) the run's own returned PSNR (``recon.tif``) - 0.2 dB,

and the same for the iterate (in brackets). ``edip`` / ``edip-fe`` are timed with a warm start
pretrained here for the scan's geometry (``ctdip.training.warmstart.WARM_START_DEFAULTS``, timed,
never cached): once excluding the pretraining and once with it amortised over ``--specimens``
(10) scans of one geometry, ``t + T_pretrain / 10``, the ``ctdip batch`` use.

    .venv/bin/python benchmarks/bench_speed.py                    # all methods, both scans (hours)
    .venv/bin/python benchmarks/bench_speed.py --objects walnut --methods vanilla tv edip
    .venv/bin/python benchmarks/bench_speed.py --quick            # < 3 min, 64² grids: a smoke run

``--quick`` uses 64² grids (the CT slice resampled), 800 iterations, a 3-weight TV oracle of 100
iterations and a 20-step pretraining: it checks the benchmark, its numbers are not the benchmark's.
Results: ``benchmarks/results/speed.md`` and ``speed.json`` (``--quick``: ``speed_quick.*``). A run
merges into the JSON that is there: it replaces the rows (and the scan's baselines) it reruns and
keeps the others, each row with the command and date that produced it; ``--fresh`` starts anew.
Readings written by hand go in the JSON's ``notes`` (the file) or an object's ``notes``, which the
table keeps across reruns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_data as bd  # noqa: E402
import bench_quality as bq  # noqa: E402

METHODS = ["recommended", "vanilla", "tv", "tv-hqs", "self-guided", "aseq", "admm", "red", "hqs-denoiser",
           "edip", "edip-fe", "subspace-dip"]
WARM = ("edip", "edip-fe", "subspace-dip")  # methods that start from pretrained weights


class Tracker:
    """Scores x_t and the output EMA every ``every`` iterations inside the engine's EMA callback
    (patched for the benchmark only), on a clock that excludes the scoring."""

    def __init__(self, every: int):
        self.every, self.rows, self.scoring, self.start = every, [], 0.0, 0.0

    def __enter__(self):
        from ctdip.core.metrics import psnr
        from ctdip.dip import engine

        orig = self._orig = engine.OutputEMA.on_iteration
        tracker = self

        def on_iteration(ema, eng, it, x, out):
            stop = orig(ema, eng, it, x, out)
            if eng.reference is not None and (it == 1 or it % tracker.every == 0):
                t0 = time.perf_counter()
                ref = eng.reference.detach().cpu().numpy()
                p_x = psnr(x.detach().cpu().numpy(), ref)
                p_e = psnr(ema.value.detach().cpu().numpy(), ref)
                t1 = time.perf_counter()
                tracker.scoring += t1 - t0
                tracker.rows.append((it, t0 - tracker.start - (tracker.scoring - (t1 - t0)), p_x, p_e))
            return stop

        engine.OutputEMA.on_iteration = on_iteration
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        from ctdip.dip import engine

        engine.OutputEMA.on_iteration = self._orig


def first_reach(rows: list, col: int, target: float) -> tuple[int | None, float | None]:
    """(iteration, seconds) of the first tracked row whose column ``col`` reaches ``target``."""
    for r in rows:
        if r[col] >= target:
            return r[0], r[1]
    return None, None


def run_dip(scan, method: str, params: dict, workdir: Path, every: int) -> dict:
    from ctdip.workflows.reconstruct import reconstruct

    out = workdir / f"run{len(list(workdir.iterdir()))}"
    with Tracker(every) as tr:
        rs = reconstruct(scan, method, {**params, "checkpoint_every": 0}, output=out, backend="matrix")
        wall = time.perf_counter() - tr.start - tr.scoring
    s = rs.summary
    return {"method": method, "params": {k: str(v) for k, v in params.items()},
            "returned_psnr": (s.get("returned") or {}).get("psnr"), "iterations": s.get("iterations"),
            "wall_s": wall, "rows": tr.rows}


def pretrain_time(scan, method: str, workdir: Path, steps: int | None) -> tuple[Path, float]:
    """Pretrain a warm start for the scan's geometry (the method's network), fresh; (weights, s)."""
    from dataclasses import replace

    from ctdip.core.problem import Problem
    from ctdip.networks import network_preset
    from ctdip.training.pretrain import PretrainConfig, pretrain_for_problem
    from ctdip.training.warmstart import WARM_START_DEFAULTS
    from ctdip.workflows.reconstruct import resolve_method

    _, _, _, _, _, resolved = resolve_method(method, {})
    net = resolved.get("network", "light") if isinstance(resolved, dict) else "light"
    problem = Problem.from_scan(scan, backend="matrix")
    opts = dict(WARM_START_DEFAULTS)
    if steps is not None:
        opts.update(steps=steps, val_every=max(1, steps // 2))
    cfg = replace(PretrainConfig(), **opts)
    path = workdir / f"warm_{method}.pt"
    t = time.perf_counter()
    pretrain_for_problem(problem, network_preset(net, 2), path, cfg)
    return path, time.perf_counter() - t


def scans(objects: list[str], views: int, n_walnut: int, n_ct: int):
    out = []
    for obj in objects:
        if obj == "walnut":
            out.append((f"walnut{n_walnut}/{views}", f"walnut ({n_walnut}², {views} views, 5 % Gaussian)",
                        lambda: bd.walnut_scan(views, n=n_walnut)))
        else:
            z = int(obj.removeprefix("ct"))
            out.append((f"ct{z}_{n_ct}/{views}", f"head CT z={z} ({n_ct}², {views} views, Poisson 1e4)",
                        lambda z=z: bd.ct_scan(z, views, n=n_ct)))
    return out


def fmt(v, nd=1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def reach_cell(r: dict, target: float | None, extra_s: float = 0.0) -> str:
    """'s (it) [iterate: s (it)]' for one run and target."""
    if target is None or "rows" not in r:
        return "–"
    it_e, t_e = first_reach(r["rows"], 3, target)
    it_x, t_x = first_reach(r["rows"], 2, target)
    ema = "not reached" if it_e is None else f"{t_e + extra_s:.1f} s ({it_e})"
    cur = "–" if it_x is None else f"{t_x + extra_s:.1f} s ({it_x})"
    return f"{ema} [{cur}]"


def write_markdown(R: dict, path: Path, args) -> None:
    quick = args.quick
    lines = [f"# Time to quality{' — QUICK SMOKE RUN (64² grids, short runs: not the benchmark numbers)' if quick else ''}", "",
             *[f"> {n}\n" for n in R.get("notes", [])],
             "Rows merge across runs (the script's docstring); each row's command and date are listed under "
             "its table. Protocol in the script's docstring; scans from `benchmarks/bench_data.py` (head CT from "
             "`../shared/data/cranium_ct_hu.npy`). Each cell: seconds (iterations) until the output-EMA "
             "image first reaches the target, in brackets the same for the current iterate; the clock starts "
             "at `reconstruct()` and excludes the benchmark's scoring. "
             f"{args.threads} torch thread(s) on a 2-core machine shared with other jobs (load average per "
             "row): timings are indicative.", ""]
    for key, obj in R["objects"].items():
        fbp, oracle = obj.get("fbp_psnr"), obj.get("oracle_psnr")
        lines += [f"## {obj['label']}", "",
                  f"FBP {fmt(fbp, 2)} dB → target (a) {fmt(None if fbp is None else fbp + 3, 2)} dB; oracle PDHG-TV "
                  f"{fmt(oracle, 2)} dB (weight {obj.get('oracle_weight', '–')}, {fmt(obj.get('oracle_wall_s'))} s for "
                  f"that weight's run, {fmt(obj.get('oracle_sweep_s'))} s for the sweep).", "",
                  "| method | returned PSNR | iters | wall s | (a) FBP + 3 dB | (b) oracle TV | (c) own final − 0.2 dB | load |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in obj["runs"].items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:80]} | | | | | | |")
                continue
            extra = r.get("amortised_s", 0.0)
            ret = r.get("returned_psnr")
            cells = [reach_cell(r, None if fbp is None else fbp + 3, extra), reach_cell(r, oracle, extra),
                     reach_cell(r, None if ret is None else ret - 0.2, extra)]
            lines.append(f"| {name} | {fmt(ret, 2)} | {r.get('iterations', '–')} | {fmt(r.get('wall_s') + extra)} | "
                         + " | ".join(cells) + f" | {fmt(r.get('load'), 1)} |")
        cmds: dict[str, list[str]] = {}
        for name, r in obj["runs"].items():
            cmds.setdefault(f"`{r.get('command', R.get('command', '?'))}` ({r.get('date', 'undated')})", []).append(name)
        lines += ["", "Rows and the runs that produced them: " + "; ".join(
            f"{', '.join(names)}: {c}" for c, names in cmds.items()) + "."]
        pt = obj.get("pretrain")
        if pt:
            lines += ["", "Pretraining (warm start for this geometry): " + "; ".join(
                f"{m}: {fmt(v['wall_s'])} s ({v['steps']} steps)" for m, v in pt.items()) +
                f". Rows '… + pretrain/{args.specimens}' add T_pretrain / {args.specimens} to every time "
                "(one pretraining shared by a batch of scans of one geometry)."]
        lines += [*("" if not obj.get("notes") else ["", *obj["notes"]]), ""]
    tv = [(k, o) for k, o in R["objects"].items() if "tv" in o["runs"] and "edip + pretrain/10" in o["runs"]]
    for k, o in tv:
        t_tv = first_reach(o["runs"]["tv"].get("rows", []), 3, o.get("oracle_psnr") or math.inf)[1]
        r = o["runs"]["edip + pretrain/10"]
        t_e = first_reach(r.get("rows", []), 3, o.get("oracle_psnr") or math.inf)[1]
        ratio = (None if t_tv is None or t_e is None else (t_e + r.get("amortised_s", 0)) / t_tv)
        lines.append(f"Target 'edip amortised ≤ ½ tv to (b)' on {o['label']}: "
                     f"{'not measurable (a run did not reach (b))' if ratio is None else f'{ratio:.2f}× of tv'}"
                     f"{'' if ratio is None else (' — met' if ratio <= 0.5 else ' — not met')}.")
    path.write_text("\n".join(lines) + "\n")


def load_results(jpath: Path, fresh: bool) -> dict:
    """The results to merge into: ``jpath``'s JSON (rows of earlier runs, hand-written notes), or a
    new one with ``fresh`` or when there is none."""
    if fresh or not jpath.exists():
        return {"objects": {}, "notes": []}
    R = json.loads(jpath.read_text())
    for obj in R.get("objects", {}).values():  # rows from before rows carried their own command
        for r in obj.get("runs", {}).values():
            old = R.get("command", "?")
            r.setdefault("command", old if old.startswith(".venv") else f".venv/bin/python benchmarks/bench_speed.py {old}")
    R.pop("command", None)
    R.pop("total_s", None)
    R.setdefault("notes", [])
    return R


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", nargs="*", default=["walnut", "ct60"])
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=10, help="score every N iterations")
    ap.add_argument("--iterations", type=int, default=None, help="override the presets' iterations")
    ap.add_argument("--specimens", type=int, default=10, help="batch size the pretraining is amortised over")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="default: WARM_START_DEFAULTS")
    ap.add_argument("--quick", action="store_true", help="< 3 min smoke run on 64² grids (speed_quick.md)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    ap.add_argument("--fresh", action="store_true", help="start a new results file instead of merging into it")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    n_walnut, n_ct, grid, tv_iters = 128, 256, bq.ORACLE_GRID, None
    if args.quick:
        n_walnut = n_ct = 64
        args.iterations = args.iterations or 800
        args.pretrain_steps = args.pretrain_steps or 20
        args.every = min(args.every, 5)
        grid, tv_iters = [8e-4, 1.6e-3, 3.2e-3], 100
        if args.methods == METHODS:
            args.methods = ["vanilla", "tv", "edip"]
    out = Path(args.out or HERE / "results" / ("speed_quick.md" if args.quick else "speed.md"))
    jpath = out.with_suffix(".json")
    command = " ".join([".venv/bin/python", "benchmarks/bench_speed.py", *(sys.argv[1:] if argv is None else argv)])
    R = load_results(jpath, args.fresh)
    if args.render_only:
        write_markdown(R, out, args)
        return 0
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for key, label, factory in scans(args.objects, args.views, n_walnut, n_ct):
            scan = factory()
            wdir = work / key.replace("/", "_")
            wdir.mkdir()
            obj = R["objects"].setdefault(key, {"label": label, "runs": {}})
            obj["label"] = label
            fbp = bq.one_run(scan, "fbp", {}, wdir)
            obj["fbp_psnr"] = fbp["returned_psnr"]
            sweep = [bq.one_run(scan, "pdhg-tv", {"tv_weight": w, **({"iterations": tv_iters} if tv_iters else {})},
                                wdir) for w in grid]
            best = max(sweep, key=lambda r: r["returned_psnr"])
            obj.update(oracle_psnr=best["returned_psnr"], oracle_weight=best["params"]["tv_weight"],
                       oracle_wall_s=best["wall_s"], oracle_sweep_s=sum(r["wall_s"] or 0 for r in sweep))
            print(f"{key}: fbp {obj['fbp_psnr']:.2f}, oracle TV {obj['oracle_psnr']:.2f} (w {obj['oracle_weight']})",
                  flush=True)
            for m in args.methods:
                params = {"iterations": args.iterations} if args.iterations else {}
                try:
                    if m in WARM:
                        wpath, t_pre = pretrain_time(scan, m, wdir, args.pretrain_steps)
                        obj.setdefault("pretrain", {})[m] = {"wall_s": t_pre, "steps": args.pretrain_steps or "default"}
                        params["weights"] = str(wpath)
                    r = run_dip(scan, m, params, wdir, args.every)
                except Exception as e:  # noqa: BLE001 - record, go on with the other methods
                    obj["runs"][m] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}", "command": command,
                                      "date": time.strftime("%Y-%m-%d")}
                    print(f"  {m}: error {e}", flush=True)
                    continue
                r.update(load=os.getloadavg()[0], command=command, date=time.strftime("%Y-%m-%d"))
                obj["runs"][m] = r
                if m in WARM:
                    obj["runs"][f"{m} + pretrain/{args.specimens}"] = dict(r, amortised_s=t_pre / args.specimens)
                print(f"  {m}: returned {fmt(r['returned_psnr'], 2)} dB in {r['wall_s']:.1f} s", flush=True)
                jpath.write_text(json.dumps(R, indent=1, default=str))
                write_markdown(R, out, args)
    print(f"total {time.perf_counter() - t_all:.0f} s")
    jpath.write_text(json.dumps(R, indent=1, default=str))
    write_markdown(R, out, args)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
