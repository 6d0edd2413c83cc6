"""Build ``benchmarks/gpu_payload/``: what ``benchmarks/gpu_check.sh`` needs on a GPU machine
without astra-toolbox, pytest or network, built here on CPU (with ASTRA). Git-ignored; a few MB.

* ``cache/``: a ``$CTDIP_CACHE_DIR`` holding the system matrices (and operator norms) of every
  geometry the check uses: those of ``tests/test_device.py`` (filled by running that file here on
  CPU with this cache) and of the comparison scan. Matrices are re-saved as compressed ``.npz``
  (``numpy.load`` reads both forms; the arrays are unchanged).
* ``scan64/``: a simulated 64² fan-beam walnut scan (30 views, 5 % Gaussian noise), the input
  of the CUDA-vs-CPU runs (simulating needs ASTRA's matrix; reconstructing from the cache does not).
* ``pylib/``: pure-Python pytest (with pluggy, iniconfig, packaging), put on ``PYTHONPATH`` by
  the check only when the GPU machine's Python has no pytest.
* ``MANIFEST.txt``: every file with its size and SHA-256 (first 16 hex), the commit it was built
  from and the command.

    .venv/bin/python benchmarks/gpu_payload.py            # about 1 min
    .venv/bin/python benchmarks/gpu_payload.py --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PURE_PYTHON = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py")
CHECKED_METHODS = ("fbp", "vanilla", "tv")  # the methods gpu_check.sh step b runs (keep in step)
MAX_MB = 40  # the working tree and the payload travel together, at most 64 MiB in all


def run(cmd: list[str], env: dict) -> None:
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def copy_pure_python(dest: Path) -> list[str]:
    """Copy the pure-Python test runner packages (and their dist-info) into ``dest``."""
    import importlib.metadata as md

    dest.mkdir(parents=True)
    copied = []
    for name in PURE_PYTHON:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"error: {name} is not installed here (pip install pytest)")
        src = Path(spec.origin)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        if src.name == "__init__.py":
            shutil.copytree(src.parent, dest / src.parent.name, ignore=ignore)
        else:
            shutil.copy2(src, dest / src.name)
        copied.append(name)
    for dist in ("pytest", "pluggy", "iniconfig", "packaging"):
        d = md.distribution(dist)
        info = Path(d._path)  # type: ignore[attr-defined]
        shutil.copytree(info, dest / info.name, ignore=shutil.ignore_patterns("RECORD"))
    return copied


def compress_matrices(cache: Path) -> None:
    for f in sorted((cache / "matrices").glob("*.npz")):
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        tmp = f.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        with np.load(tmp) as z:  # the same arrays, bit for bit
            assert all(np.array_equal(z[k], arrays[k]) for k in arrays)
        os.replace(tmp, f)


def manifest(out: Path, argv: list[str]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "ctdip", "tests"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    lines = [f"# built by: python benchmarks/gpu_payload.py {' '.join(argv)}",
             f"# from commit {commit}{' (with uncommitted changes in ctdip/ or tests/)' if dirty else ''}", ""]
    total = 0
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        if "pylib" in f.relative_to(out).parts[:1]:
            continue
        b = f.stat().st_size
        total += b
        lines.append(f"{b:>10}  {hashlib.sha256(f.read_bytes()).hexdigest()[:16]}  {f.relative_to(out)}")
    pylib = sum(p.stat().st_size for p in (out / "pylib").rglob("*") if p.is_file())
    lines += ["", f"pylib/: {pylib / 2**20:.1f} MiB (pytest, pluggy, iniconfig, packaging)",
              f"total: {(total + pylib) / 2**20:.1f} MiB"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_payload"))
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = out / "cache"
    env = {**os.environ, "CTDIP_CACHE_DIR": str(cache), "CTDIP_TEST_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "CTDIP_TEST_THREADS": "1"}
    py = sys.executable
    cli = [py, "-c", "import sys; from ctdip.cli.main import main; sys.exit(main())"]
    print("running tests/test_device.py on CPU to fill the matrix cache ...", flush=True)
    run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py"], env)
    print("simulating scan64 ...", flush=True)
    run([*cli, "simulate", str(out / "scan64"), "--size", "64", "--angles", "30", "--noise", "0.05",
         "--seed", "0", "-q"], env)
    # the matrices and norms of the check's runs: each method's own views (vanilla's held-out
    # stop splits the views into a fitted and a held-out set, each with its own matrix)
    with tempfile.TemporaryDirectory() as d:
        for method in CHECKED_METHODS:
            iters = [] if method == "fbp" else ["-n", "2"]
            run([*cli, "reconstruct", str(out / "scan64"), "-m", method, *iters, "--backend", "matrix",
                 "-o", str(Path(d) / method), "-q"], env)
    compress_matrices(cache)
    copy_pure_python(out / "pylib")
    text = manifest(out, argv if argv is not None else sys.argv[1:])
    (out / "MANIFEST.txt").write_text(text)
    print(text)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    if size > MAX_MB:
        raise SystemExit(f"error: payload is {size:.1f} MiB, over {MAX_MB} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
