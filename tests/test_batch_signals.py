"""`ctdip batch` and signals, with the real command in a subprocess (local executor, --jobs 2, three
tiny simulated scans): SIGINT once / twice, SIGTERM and SIGKILL to the parent; then a re-run that
finishes everything bit-identically to an uninterrupted batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ctdip.dip.runs import RunFolder

NAMES = ("s1", "s2", "s3")
# TV-DIP with the tiny network: ~5 ms per iteration at 32^2 on one thread, so 400 iterations take
# seconds: the two running specimens are surely mid-run when the signal comes
ARGS = ("--method", "tv", "--network", "tiny", "--jobs", "2")
LONG = ("-n", "20000")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from ctdip.core.data.simulate import simulate

    root = tmp_path_factory.mktemp("signal_scans")
    for i, n in enumerate(NAMES):
        simulate(root / n, phantom="walnut", geometry="fan", angles=16, size=32, noise=0.05, seed=i)
    return root


def _start(scans: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ctdip.cli.main", "batch", *[str(scans / n) for n in NAMES], *ARGS, *extra,
           "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``, read from /proc."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_running(proc: subprocess.Popen, out: Path, names=("s1", "s2"), min_iter: int = 10,
                  timeout: float = 60) -> set[int]:
    """Wait until ``names`` have logged ``min_iter`` iterations; returns the batch's processes."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        rows = [RunFolder(out / n).read_metrics() if (out / n / "metrics.csv").exists() else [] for n in names]
        if all(r and r[-1]["iter"] >= min_iter for r in rows):
            kids = _children(proc.pid)
            assert len(kids) >= 2  # two workers (and multiprocessing's resource tracker)
            return kids
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"batch did not start in {timeout} s: {proc.communicate()}")


def _finish(proc: subprocess.Popen, kids: set[int], timeout: float = 30) -> tuple[int, str]:
    t0 = time.time()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"batch still running {timeout} s after the signal")
    while any(_alive(k) for k in kids) and time.time() - t0 < 10:  # the resource tracker exits on EOF
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "processes outlived the batch"
    return proc.returncode, err


def _status(out: Path) -> dict:
    return {e["specimen"]: e for e in json.loads((out / "batch_status.json").read_text())}


N_SHORT = ("-n", "400")


def test_sigint_once_then_rerun_is_bit_identical(scans, tmp_path):
    out = tmp_path / "runs"
    proc = _start(scans, out, *N_SHORT)
    kids = _wait_running(proc, out)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc, kids)
    assert code == 130, err
    assert "Traceback" not in err
    st = _status(out)
    assert [st[n]["state"] for n in NAMES] == ["interrupted", "interrupted", "not_started"]
    its = [st[n]["iteration"] for n in ("s1", "s2")]
    assert all(10 <= i < 400 for i in its), its
    for n, i in zip(("s1", "s2"), its):
        assert f"  {n}: interrupted at iteration {i}, checkpoint written\n" in err
    assert "  s3: not started\n" in err and err.splitlines()[-5].startswith("SIGINT: batch stopped")
    assert not (out / "s3").exists() or not any((out / "s3").iterdir())

    # the same command again finishes everything: 2 resumed, 1 new
    proc = _start(scans, out, *N_SHORT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [e["state"] for e in _status(out).values()] == ["finished"] * 3
    assert (out / "batch_summary.csv").read_text().count("\n") == 4

    # an uninterrupted batch, in-process (same worker function and torch thread count)
    import torch

    from ctdip.workflows.batch import SlurmOptions, cpu_count, run_batch

    n_threads = torch.get_num_threads()
    ref = tmp_path / "ref"
    try:
        res = run_batch([scans / n for n in NAMES], "tv", ref, params={"network": "tiny", "iterations": 400},
                        executor="debug", slurm=SlurmOptions(cpus=max(1, cpu_count() // 2)), live=False,
                        stream=open(os.devnull, "w"))
    finally:
        torch.set_num_threads(n_threads)
    assert [s.state for s in res.specimens] == ["finished"] * 3
    for n in NAMES:
        a = tifffile.imread(out / n / "recon.tif")
        b = tifffile.imread(ref / n / "recon.tif")
        assert a.size == 32 * 32 and a.shape == b.shape and np.array_equal(a, b), n
    assert RunFolder(out / "s1").read_config()["resumed"] == 1


def test_sigint_twice_ends_at_once(scans, tmp_path):
    out = tmp_path / "runs"
    proc = _start(scans, out, *LONG)
    kids = _wait_running(proc, out, min_iter=1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc, kids)
    assert code == 130 and "Traceback" not in err, err
    st = _status(out)
    assert st["s3"]["state"] == "not_started"
    assert {st[n]["state"] for n in ("s1", "s2")} == {"interrupted"}


def test_sigterm_to_the_parent(scans, tmp_path):
    out = tmp_path / "runs"
    proc = _start(scans, out, *LONG)
    kids = _wait_running(proc, out, min_iter=1)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc, kids)
    assert code == 143 and "Traceback" not in err, err
    assert "SIGTERM: batch stopped" in err
    st = _status(out)
    for n in ("s1", "s2"):
        assert st[n]["state"] == "interrupted" and st[n]["iteration"] >= 1
        assert RunFolder(out / n).file("checkpoint.pt").exists()


def test_workers_stop_when_the_parent_is_killed(scans, tmp_path):
    out = tmp_path / "runs"
    proc = _start(scans, out, *LONG)
    kids = _wait_running(proc, out, min_iter=1)
    proc.kill()  # SIGKILL: no chance to forward anything
    proc.communicate(timeout=30)
    t0 = time.time()
    while any(_alive(k) for k in kids) and time.time() - t0 < 30:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "workers outlived a SIGKILLed parent"
    # they checkpointed on the way out (SIGTERM from the parent-death signal)
    for n in ("s1", "s2"):
        assert RunFolder(out / n).file("checkpoint.pt").exists()
