"""EDIP warm starts vs vanilla DIP, and ADMM with the trained denoiser vs the TV prox (issue 5).

Setup: 128^2 procedural walnut slice (``ctdip.core.data.phantoms.walnut``), fan beam over 360 degrees
(192 detector pixels of 1 mm, source-origin 512 mm, source-detector 768 mm), 20 views, Gaussian
noise 5 % of mean |Ax|, matrix backend, one CPU thread, network preset ``light`` for every DIP run.

1. Pretraining (``ctdip.training.pretrain.pretrain_for_problem``) on ellipses for exactly this geometry:
   ``--pretrain-steps`` steps of ``--batch-size`` phantoms; cost = wall time, samples/s.
2. DIP runs of ``--iterations`` iterations: ``vanilla`` (noise input), ``vanilla`` (FBP input),
   ``edip`` and ``edip-fe`` from the pretrained weights (method presets otherwise).
   Rise time = first logged iteration whose PSNR reaches vanilla (noise input)'s steady PSNR
   (median of its last 10 %) minus 0.1 dB (``ctdip.core.metrics.rise_time``), EDIP paper's definition.
3. A DRUNet denoiser (``ctdip.training.denoiser.train_denoiser``), then ``admm`` with it and with
   the TV prox (preset sigma and rho): peak and final PSNR.

    .venv/bin/python benchmarks/bench_edip.py                         # everything (~1 h on a shared 2-core box)
    .venv/bin/python benchmarks/bench_edip.py --iterations 500 --pretrain-steps 100 --denoiser-steps 200
    .venv/bin/python benchmarks/bench_edip.py --stages pretrain dip &   # two processes, one results file
    .venv/bin/python benchmarks/bench_edip.py --stages denoiser admm

Results: ``benchmarks/results/edip.md`` (and ``edip.json``), rewritten after each stage; the
weights go to ``--work`` (default ``benchmarks/.work``), which is not committed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_methods import make_problem  # noqa: E402  (the same walnut problem as the methods table)


def run_method(name: str, problem, params: dict, seed: int = 0) -> dict:
    from ctdip.dip.context import RunContext
    from ctdip.methods import get_method

    t = time.perf_counter()
    try:
        res = get_method(name)(**params).run(problem, RunContext(seed=seed, quiet=True))
    except Exception as e:  # noqa: BLE001 - record and continue with the other runs
        return {"method": name, "params": _plain(params), "error": f"{type(e).__name__}: {e}"}
    s = res.summary
    out = {k: s.get(k) for k in ("peak_psnr", "peak_iter", "final_psnr", "returned_psnr", "iterations")}
    out.update(method=name, params=_plain(params), wall_s=time.perf_counter() - t)
    out["curve"] = [(int(r["iter"]), r.get("psnr"), r.get("time_s")) for r in res.history if r.get("psnr") is not None]
    return out


def _plain(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def rise(curve: list, target: float) -> tuple[int | None, float | None]:
    """(iteration, seconds) at which a curve first reaches ``target - 0.1`` dB."""
    from ctdip.core.metrics import rise_time

    it = rise_time([c[0] for c in curve], [c[1] for c in curve], target)
    if it is None:
        return None, None
    t = next((c[2] for c in curve if c[0] == it), None)
    return it, t


def _command() -> str:
    return " ".join([".venv/bin/python", "benchmarks/bench_edip.py", *(f"'{a}'" if " " in a else a
                                                                      for a in sys.argv[1:])])


def fmt(v, nd=2):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def write_markdown(R: dict, args, path: Path) -> None:
    from ctdip.core.metrics import steady_psnr

    cmds = R.get("commands") or [_command()]
    L = ["# EDIP warm start vs vanilla DIP; ADMM with a trained denoiser vs TV prox", "",
         "Commands (stages run as separate processes write into one results file):", "",
         *[f"    {c}" for c in cmds], "",
         f"Setup: {args.size}² procedural walnut slice, fan beam 360°, {int(1.5 * args.size)} detector pixels, "
         f"{args.views} views, Gaussian noise {args.noise:g} × mean|Ax|, matrix backend, seed 0, "
         f"{args.threads} CPU thread(s) on a shared 2-core machine (wall times are indicative, other jobs ran "
         f"concurrently). Network `{args.network}` for every DIP run, {args.iterations} iterations, PSNR logged "
         "every 10 iterations against the phantom. Method parameters from `presets/methods/*.yaml`.", ""]
    pt = R.get("pretrain")
    if pt:
        L += ["## Pretraining (ellipses for this geometry)", "",
              "| steps × batch | samples | wall s | samples/s (all) | samples/s (data generation alone) | "
              "best Shepp–Logan PSNR | at step |", "|---|---|---|---|---|---|---|",
              f"| {pt['steps']} × {pt['batch_size']} | {pt['samples']} | {fmt(pt['wall_s'], 0)} | "
              f"{fmt(pt['samples_per_s'], 1)} | {fmt(pt['data_samples_per_s'], 0)} | {fmt(pt['best_psnr'])} | "
              f"{pt['best_step']} |", "",
              "Validation during pretraining (Shepp–Logan PSNR of the network applied to its FBP, and MSE "
              "on 16 fixed ellipse phantoms):", "",
              "| step | val PSNR (SL) | val MSE (ellipses) |", "|---|---|---|"]
        L += [f"| {h['step']} | {fmt(h['val_psnr'])} | {fmt(h['val_loss'], 5)} |" for h in pt["history"]]
        L += [""]
    runs = R.get("runs", {})
    van = runs.get("vanilla")
    if van and "curve" in van:
        target = steady_psnr([c[1] for c in van["curve"]])
        L += ["## Rise time (iterations to vanilla's steady PSNR − 0.1 dB)", "",
              f"Vanilla DIP (noise input) steady PSNR: **{target:.2f} dB** (median of its last 10 %); "
              f"target {target - 0.1:.2f} dB. FBP: {fmt(R.get('fbp_psnr'))} dB.", "",
              "| run | rise time (it) | time to rise (s) | first logged PSNR | peak PSNR | peak it | final PSNR | "
              "returned PSNR | wall s (all its) |", "|---|---|---|---|---|---|---|---|---|"]
        rts = {}
        for key, r in runs.items():
            if "error" in r:
                L.append(f"| {key} | error: {r['error'][:100]} | | | | | | | |")
                continue
            it, t = rise(r["curve"], target)
            rts[key] = it
            first = r["curve"][0][1] if r["curve"] else None
            L.append(f"| {key} | {fmt(it)} | {fmt(t, 1)} | {fmt(first)} | {fmt(r.get('peak_psnr'))} | "
                     f"{fmt(r.get('peak_iter'))} | {fmt(r.get('final_psnr'))} | {fmt(r.get('returned_psnr'))} | "
                     f"{fmt(r.get('wall_s'), 0)} |")
        L += [""]
        v_it, e_it = rts.get("vanilla"), rts.get("edip")
        if v_it and e_it is not None:
            ratio = e_it / v_it
            L += [f"Goal `edip` rise time ≤ 1/4 of vanilla's: {e_it} / {v_it} = {ratio:.3f} → "
                  f"**{'met' if ratio <= 0.25 else 'NOT met'}**."]
            if pt:
                L += [f"Counting the pretraining ({fmt(pt['wall_s'], 0)} s, done once per geometry and cached) "
                      f"in edip's time to rise: {fmt(pt['wall_s'] + (rise(runs['edip']['curve'], target)[1] or 0), 0)} s."]
            L += [""]
    dn = R.get("denoiser")
    if dn:
        L += ["## Denoiser training (DRUNet)", "",
              f"`{dn['size']}` DRUNet, {dn['steps']} steps × {dn['batch_size']} patches of {dn['patch']}², "
              f"sigma ~ U(0, {dn['sigma_max']}), sources ellipses + walnut phantoms; {fmt(dn['wall_s'], 0)} s, "
              f"{fmt(dn['samples_per_s'], 0)} samples/s.", "",
              "| sigma | MSE noisy | MSE denoised | PSNR gain dB |", "|---|---|---|---|"]
        for s, (mn, md) in dn["val"].items():
            L.append(f"| {s} | {mn:.3e} | {md:.3e} | {10 * math.log10(mn / md):.2f} |")
        L += [""]
    adm = R.get("admm", {})
    if adm:
        L += ["## ADMM: trained denoiser vs TV prox", "",
              "| denoiser | sigma | peak PSNR | peak it | final PSNR | returned PSNR | wall s |",
              "|---|---|---|---|---|---|---|"]
        for key, r in adm.items():
            if "error" in r:
                L.append(f"| {key} | error: {r['error'][:100]} | | | | | |")
                continue
            L.append(f"| {key} | {r['params'].get('sigma', '')} | {fmt(r.get('peak_psnr'))} | "
                     f"{fmt(r.get('peak_iter'))} | {fmt(r.get('final_psnr'))} | {fmt(r.get('returned_psnr'))} | "
                     f"{fmt(r.get('wall_s'), 0)} |")
        L += [""]
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--network", default="light")
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--denoiser-steps", type=int, default=1500)
    ap.add_argument("--denoiser-size", default="small")
    ap.add_argument("--admm-sigmas", type=float, nargs="*", default=[0.1, 0.05])
    ap.add_argument("--edip-lrs", type=float, nargs="*", default=[],
                    help="extra edip runs with these learning rates (preset: 1e-4, the paper's)")
    ap.add_argument("--dip-runs", nargs="*", default=None, help="only these run labels of the dip stage")
    ap.add_argument("--stages", nargs="*", default=["pretrain", "dip", "denoiser", "admm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=str(ROOT / ".work"))
    ap.add_argument("--out", default=str(ROOT / "results" / "edip.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ctdip.core.metrics import psnr
    from ctdip.networks import network_preset
    from ctdip.training.denoiser import DenoiserConfig, train_denoiser
    from ctdip.training.pretrain import PretrainConfig, pretrain_for_problem

    out, work = Path(args.out), Path(args.work)
    out.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    jpath = out.with_suffix(".json")
    R: dict = {}

    def save():
        # several processes may run different --stages on the same results: merge with the file
        disk = json.loads(jpath.read_text()) if jpath.exists() else {}
        for key in ("fbp_psnr", "pretrain", "denoiser"):
            if key in R:
                disk[key] = R[key]
        for key in ("runs", "admm"):
            if key in R:
                disk.setdefault(key, {}).update(R[key])
        if _command() not in disk.setdefault("commands", []):
            disk["commands"].append(_command())
        tmp = jpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(disk, indent=1, default=str))
        tmp.replace(jpath)
        write_markdown(disk, args, out)

    problem = make_problem(args.size, args.views, args.noise)
    R["fbp_psnr"] = psnr(problem.x_init, problem.reference)
    weights = work / f"edip_{args.size}_{args.views}.pt"
    if "pretrain" in args.stages:
        cfg = PretrainConfig(steps=args.pretrain_steps, batch_size=args.batch_size, val_every=max(1, args.pretrain_steps // 10),
                             checkpoint_every=0)
        t = time.perf_counter()
        res = pretrain_for_problem(problem, network_preset(args.network, 2), weights, cfg,
                                   log=lambda m: print(m, flush=True))
        R["pretrain"] = {"steps": cfg.total_steps, "batch_size": cfg.batch_size,
                         "samples": cfg.total_steps * cfg.batch_size, "wall_s": time.perf_counter() - t,
                         "samples_per_s": res.samples_per_s, "data_samples_per_s": res.data_samples_per_s,
                         "best_psnr": res.best_value, "best_step": res.best_step,
                         "history": [{k: h.get(k) for k in ("step", "val_psnr", "val_loss")} for h in res.history]}
        print(f"pretrain: {R['pretrain']['wall_s']:.0f} s, best SL PSNR {res.best_value:.2f}", flush=True)
        save()
    if "dip" in args.stages:
        base = {"iterations": args.iterations, "network": args.network, "log_every": 10, "checkpoint_every": 0}
        plan = [("vanilla", "vanilla", {}), ("vanilla (fbp input)", "vanilla", {"input": "fbp"}),
                ("edip", "edip", {"weights": str(weights)}), ("edip-fe", "edip-fe", {"weights": str(weights)})]
        plan += [(f"edip (lr {lr:g})", "edip", {"weights": str(weights), "lr": lr}) for lr in args.edip_lrs]
        if args.dip_runs:
            plan = [p for p in plan if p[0] in args.dip_runs]
        R.setdefault("runs", {})
        for key, name, extra in plan:
            r = run_method(name, problem, {**base, **extra})
            R["runs"][key] = r
            print(f"{key}: " + ", ".join(f"{k}={fmt(v)}" for k, v in r.items() if k not in ("curve", "params")),
                  flush=True)
            save()
    den = work / "drunet.pt"
    if "denoiser" in args.stages:
        dcfg = DenoiserConfig(size=args.denoiser_size, patch=64, batch_size=16, steps=args.denoiser_steps,
                              lr=1e-3, sigma_max=0.2, val_every=max(1, args.denoiser_steps // 5),
                              checkpoint_every=0)
        res = train_denoiser(den, dcfg, log=lambda m: print(m, flush=True))
        R["denoiser"] = {"size": dcfg.size, "steps": dcfg.steps, "batch_size": dcfg.batch_size, "patch": dcfg.patch,
                         "sigma_max": dcfg.sigma_max, "wall_s": res.wall_s, "samples_per_s": res.samples_per_s,
                         "val": {str(k): v for k, v in res.val.items()}}
        print(f"denoiser: {res.val}", flush=True)
        save()
    if "admm" in args.stages:
        base = {"iterations": args.iterations, "network": args.network, "log_every": 10, "checkpoint_every": 0}
        R.setdefault("admm", {})
        plan = [("tv prox", {"denoiser": "tv"})]
        plan += [(f"DRUNet (sigma {s:g})", {"denoiser": str(den), "sigma": s}) for s in args.admm_sigmas]
        for key, extra in plan:
            r = run_method("admm", problem, {**base, **extra})
            r.pop("curve", None)
            R["admm"][key] = r
            print(f"admm {key}: " + ", ".join(f"{k}={fmt(v)}" for k, v in r.items() if k != "params"), flush=True)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
