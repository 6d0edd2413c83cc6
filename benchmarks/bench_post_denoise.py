"""How strong should the final denoiser pass of ``recommended`` / ``admm`` be? (tuning objects only)

``post_denoise`` f returns ``D(x_out, f * eta)`` instead of ``x_out`` (``ctdip.methods.admm``:
``eta`` is the noise level of the held-out-view CV, ``D`` the shipped learned denoiser). This
script runs a method with its shipped defaults (``post_denoise`` forced to 0) on a *tuning* object
of ``benchmarks/bench_quality.py`` (head-CT slices z = 30/50/70, walnut seed 1), keeps the run
folder, and scores ``D(recon, f * eta)`` against the reference for a grid of f. The reference
only scores; the factor it selects becomes a default, which the benchmark objects then test.

    .venv/bin/python benchmarks/bench_post_denoise.py --object ct70 --views 20 --method recommended
    .venv/bin/python benchmarks/bench_post_denoise.py --object walnut --views 20 --method recommended

A run folder that already holds ``summary.json`` is scored again without a new run (``--runs``).
Results are appended to ``benchmarks/results/quality_post_denoise.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_quality import scans  # noqa: E402

FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--object", required=True, help="ct30 | ct50 | ct70 | walnut (tuning objects)")
    ap.add_argument("--views", type=int, required=True)
    ap.add_argument("--method", default="recommended")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default="/tmp/ctdip_post_denoise", help="folder for the kept run folders")
    ap.add_argument("--tta", action="store_true",
                    help="also score the eight-fold flip/rotation average of the denoiser (dihedral_mean)")
    ap.add_argument("--out", default=str(HERE / "results" / "quality_post_denoise.md"))
    args = ap.parse_args(argv)
    import tifffile
    import torch

    from ctdip.core import metrics
    from ctdip.core.problem import Problem
    from ctdip.priors.denoisers import load_denoiser
    from ctdip.workflows.reconstruct import reconstruct

    torch.set_num_threads(args.threads)
    scan = scans([args.object], [args.views], True, ["poisson"])[0][3]()  # refuses a benchmark slice
    run_dir = Path(args.runs) / f"{args.object}_{args.views}_{args.method}"
    if not (run_dir / "summary.json").exists():
        reconstruct(scan, args.method, {"checkpoint_every": 0, "post_denoise": 0.0}, output=run_dir, backend="auto")
    summary = json.loads((run_dir / "summary.json").read_text())
    wall = summary.get("wall_time_s")
    result = summary.get("result", summary)
    eta = (result.get("sigma_choice") or {}).get("noise_level")
    if eta is None:
        raise SystemExit(f"error: {args.method} recorded no CV noise level (sigma_choice): nothing to scale")
    ref = np.asarray(scan.reference, dtype=np.float64)
    rec = np.asarray(tifffile.imread(run_dir / "recon.tif"), dtype=np.float64).reshape(ref.shape)
    scale = Problem.from_scan(scan).intensity_scale  # the run's image scale, in which sigma is given
    D = load_denoiser("learned", device="cpu")
    x = torch.from_numpy(rec).float().reshape(1, 1, *ref.shape[-2:]) * scale
    rows = []
    for f in FACTORS:
        with torch.no_grad():
            d = x if f == 0 else D(x, f * eta)
        d = (d / scale).numpy().reshape(ref.shape)
        rows.append({"factor": f, "sigma": f * eta, "psnr": metrics.psnr(d, ref), "ssim": metrics.ssim(d, ref)})
        print(f"post_denoise {f:4.2f} (sigma {f * eta:.4f}): PSNR {rows[-1]['psnr']:.2f}  SSIM {rows[-1]['ssim']:.4f}",
              flush=True)
        if args.tta and f > 0:
            with torch.no_grad():
                dt = (dihedral_mean(D, x, f * eta) / scale).numpy().reshape(ref.shape)
            rows[-1].update(psnr_tta=metrics.psnr(dt, ref), ssim_tta=metrics.ssim(dt, ref))
            print(f"   x8 flips/rotations: PSNR {rows[-1]['psnr_tta']:.2f}  SSIM {rows[-1]['ssim_tta']:.4f}", flush=True)
    entry = {"object": args.object, "views": args.views, "method": args.method, "eta": eta,
             "family": result.get("family"), "run_wall_s": wall, "load": os.getloadavg()[0],
             "command": ".venv/bin/python benchmarks/bench_post_denoise.py " + shlex.join(argv or sys.argv[1:]),
             "rows": rows}
    out = Path(args.out)
    jpath = out.with_suffix(".json")
    entries = json.loads(jpath.read_text()) if jpath.exists() else []
    entries = [e for e in entries if (e["object"], e["views"], e["method"]) != (args.object, args.views, args.method)]
    entries.append(entry)
    jpath.write_text(json.dumps(entries, indent=1) + "\n")
    write_markdown(entries, out)
    return 0


def dihedral_mean(D, x, sigma: float):
    """The mean of ``g^-1 D(g x, sigma)`` over the eight flips and quarter-turns g of the image
    plane (test-time augmentation: the denoiser's errors that depend on orientation average out)."""
    import torch

    outs = []
    for k in range(4):
        for flip in (False, True):
            g = torch.rot90(x, k, dims=(-2, -1))
            g = torch.flip(g, dims=(-1,)) if flip else g
            d = D(g, sigma)
            d = torch.flip(d, dims=(-1,)) if flip else d
            outs.append(torch.rot90(d, -k, dims=(-2, -1)))
    return torch.stack(outs).mean(0)


def write_markdown(entries: list[dict], path: Path) -> None:
    lines = ["# Final denoiser pass (`post_denoise`): strength chosen on the tuning objects", "",
             "Generated by `benchmarks/bench_post_denoise.py` (its docstring has the protocol). Each row: one run "
             "of the method with its shipped defaults and `post_denoise` 0 on a tuning object, then its returned "
             "`recon.tif` through the shipped learned denoiser at sigma = f · η (η: the run's CV noise level, "
             "`summary.json` `sigma_choice.noise_level`), scored against the reference. f = 0 is the run's own "
             "returned image.", ""]
    header = "| object | method | η | " + " | ".join(f"f = {f:g}" for f in FACTORS) + " | best f |"
    lines += [header, "|" + "---|" * (len(FACTORS) + 4)]
    for e in entries:
        best = max(e["rows"], key=lambda r: r["psnr"])
        cells = [f"{r['psnr']:.2f} ({r['ssim']:.3f})" for r in e["rows"]]
        label = f"{e['object']}, {e['views']} views" + (" (TV family)" if e.get("family") == "tv" else "")
        lines.append(f"| {label} | {e['method']} | {e['eta']:.4f} | " + " | ".join(cells) + f" | {best['factor']:g} |")
    tta = [e for e in entries if any("psnr_tta" in r for r in e["rows"])]
    if tta:
        lines += ["", "With `--tta`: the same runs' images through `dihedral_mean` (the denoiser's output averaged "
                  "over the eight flips and quarter-turns of the image), f > 0:", "",
                  "| object | method | " + " | ".join(f"f = {f:g}" for f in FACTORS[1:]) + " |",
                  "|" + "---|" * (len(FACTORS) + 1)]
        for e in tta:
            cells = [f"{r['psnr_tta']:.2f} ({r['ssim_tta']:.3f}), {r['psnr_tta'] - r['psnr']:+.2f}"
                     for r in e["rows"] if "psnr_tta" in r]
            lines.append(f"| {e['object']}, {e['views']} views | {e['method']} | " + " | ".join(cells) + " |")
        lines += ["", "Each cell: PSNR (SSIM), and its gain over the single pass of the table above."]
    lines += ["", "PSNR in dB (SSIM). Commands: " + "; ".join(f"`{e['command']}`" for e in entries), ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
