"""Behaviour-preservation check for refactors: one small run of every method through the CLI.

Simulates a 32² fan-beam walnut (20 views, 5 % noise), runs ``ctdip reconstruct`` for every
registered method with a fixed seed and a few iterations, and writes, per method, the SHA-256 of
``recon.tif``, the sorted list of files written, the ``metrics.csv`` header and the returned PSNR.
It only uses the command line, so the same script runs before and after a change of the package
layout::

    python benchmarks/refactor_identity.py before.json
    # ... refactor ...
    python benchmarks/refactor_identity.py after.json --compare before.json

``--compare`` exits 1 and names every method whose recon, files or numbers differ.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = ["fbp", "cgls", "pdhg-tv", "vanilla", "tv", "tv-hqs", "admm", "hqs-denoiser", "red", "self-guided",
           "aseq", "edip", "edip-fe", "subspace-dip", "recommended"]
# a few iterations each; the warm-started methods use weights pretrained here (tiny, 4 steps)
WARM = ["-n", "6", "--network", "tiny", "--weights", "w.pt"]
EXTRA = {"fbp": [], "cgls": ["-n", "5"], "pdhg-tv": ["-n", "20"], "edip": WARM, "edip-fe": WARM,
         "subspace-dip": WARM}
DIP_DEFAULT = ["-n", "6", "--network", "tiny"]


def ctdip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ctdip")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CTDIP_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_all(work: Path) -> dict:
    p = ctdip("simulate", "scan", "--size", "32", "--angles", "20", "--noise", "0.05", "-q", cwd=work)
    if p.returncode:
        raise SystemExit(p.stderr)
    p = ctdip("pretrain", "--scan", "scan", "--network", "tiny", "--steps", "4", "--batch-size", "2",
              "--val-every", "2", "--checkpoint-every", "2", "--seed", "1", "-o", "w.pt", "-q", cwd=work)
    if p.returncode:
        raise SystemExit(p.stderr)
    out = {"pretrain": {"weights_sha256": "(contains timestamps; not compared)"}}
    for m in METHODS:
        run = work / f"run_{m}"
        args = EXTRA.get(m, DIP_DEFAULT)
        p = ctdip("reconstruct", "scan", "-m", m, "-o", str(run), "--seed", "3", "-q", *args, cwd=work)
        if p.returncode:
            out[m] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        summary = json.loads((run / "summary.json").read_text())
        header = []
        if (run / "metrics.csv").exists():
            with open(run / "metrics.csv") as f:
                header = next(csv.reader(f), [])
        out[m] = {"recon_sha256": sha(run / "recon.tif"),
                  "files": sorted(str(q.relative_to(run)) for q in run.rglob("*") if q.is_file()),
                  "metrics_header": header,
                  "returned_psnr": (summary.get("returned") or {}).get("psnr")}
        print(f"{m:14s} {out[m]['recon_sha256']}  psnr={out[m]['returned_psnr']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--compare")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = run_all(Path(d))
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    if not a.compare:
        return 0
    old = json.loads(Path(a.compare).read_text())
    bad = [m for m in sorted(set(old) | set(res)) if old.get(m) != res.get(m)]
    for m in bad:
        print(f"DIFFERS {m}: before {old.get(m)}\n        after  {res.get(m)}")
    print("identical for all methods" if not bad else f"{len(bad)} method(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
