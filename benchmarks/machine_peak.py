"""The machine's fp32 matmul peak on 1 and 2 torch threads (``bench_step.matmul_peak_gflops``): the
number that tells benchmark rows from different machines apart (``bench_quality.py`` records it per
row as ``CPU N GFLOP/s``).

    .venv/bin/python benchmarks/machine_peak.py
"""

import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import matmul_peak_gflops  # noqa: E402

for t in (1, 2):
    torch.set_num_threads(t)
    print(f"fp32 matmul peak (1024³ torch.mm, best of 1.5 s), {t} thread(s): "
          f"{matmul_peak_gflops(torch.device('cpu')):.1f} GFLOP/s")
print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
