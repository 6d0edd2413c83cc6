"""The GPU check's CPU-side pieces (benchmarks/gpu_check.sh, gpu_payload.py, bench_step.py): what
the one H200 run (benchmarks/results/gpu.md) found broken stays fixed without a GPU."""

import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_check_script_parses_and_runs_the_payloads_methods():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    import gpu_payload

    methods = re.search(r'^METHODS="([a-z -]+)"', script.read_text(), re.M)
    assert methods, "step b's METHODS not found"
    # every method step b reconstructs with the matrix backend has its matrices in the payload
    assert set(methods.group(1).split()) <= set(gpu_payload.CHECKED_METHODS)


def test_bench_step_3d_phantom_fits_the_cone_fov_above_64():
    """Above n = 64 the cone FOV of bench_step's geometry holds n + 1 slices; the 128³ case crashed
    on the H200 with a 128³ phantom."""
    import bench_step

    prob = bench_step.make_problem(65, 3, "matrix", torch.device("cpu"), views=2)
    assert tuple(prob.image_shape) == (66, 65, 65)
    assert torch.isfinite(prob.y).all() and float(prob.y.abs().max()) > 0
