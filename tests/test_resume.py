"""Checkpoint / resume: an interrupted run continues to exactly the uninterrupted result (CPU)."""

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_methods import make_problem  # noqa: E402

from ctdip.dip.context import RunContext
from ctdip.dip.runs import RunFolder
from ctdip.errors import TimeLimitReached, UserError
from ctdip.methods import get_method

P = {"network": "tiny", "iterations": 24, "lr": 0.01, "log_every": 4, "checkpoint_every": 8, "es_window": 5}


@pytest.fixture(scope="module")
def problem():
    return make_problem(n=32, views=24)


def _run(name, problem, folder, resume=False, progress=None, seed=5, **kw):
    ctx = RunContext(run=RunFolder(folder).create(exist_ok=True), seed=seed, resume=resume, progress=progress)
    return get_method(name)(**{**P, **kw}).run(problem, ctx)


def _rows(folder):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in RunFolder(folder).read_metrics()]


@pytest.mark.parametrize("name", ["vanilla", "self-guided", "aseq", "red"])
def test_sigint_then_resume_equals_uninterrupted(problem, tmp_path, name):
    full = _run(name, problem, tmp_path / "full")

    def interrupt(it, total, row):
        if it == 13:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        _run(name, problem, tmp_path / "cut", progress=interrupt)
    ck = RunFolder(tmp_path / "cut").load_checkpoint()
    assert ck["iteration"] == 13 and ck["format"] == "ctdip-checkpoint/1"
    resumed = _run(name, problem, tmp_path / "cut", resume=True)
    assert torch.equal(full.recon, resumed.recon)
    for k in full.extras:
        assert torch.equal(full.extras[k], resumed.extras[k]), k
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    assert full.summary["es_iter"] == resumed.summary["es_iter"]


def test_crash_resumes_from_last_periodic_checkpoint(problem, tmp_path):
    full = _run("tv", problem, tmp_path / "full")

    def crash(it, total, row):
        if it == 21:
            raise RuntimeError("node died")

    with pytest.raises(RuntimeError):
        _run("tv", problem, tmp_path / "cut", progress=crash)
    assert RunFolder(tmp_path / "cut").load_checkpoint()["iteration"] == 16
    assert max(r["iter"] for r in RunFolder(tmp_path / "cut").read_metrics()) == 20  # rows past the checkpoint
    resumed = _run("tv", problem, tmp_path / "cut", resume=True)
    assert torch.equal(full.recon, resumed.recon)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_time_limit_checkpoints_and_raises(problem, tmp_path):
    with pytest.raises(TimeLimitReached, match="time limit"):
        ctx = RunContext(run=RunFolder(tmp_path / "t").create(), seed=5, time_limit_s=0.001)
        get_method("vanilla")(**P).run(problem, ctx)
    assert TimeLimitReached.exit_code == 3
    ck = RunFolder(tmp_path / "t").load_checkpoint()
    assert 1 <= ck["iteration"] < P["iterations"]
    full = _run("vanilla", problem, tmp_path / "full")
    resumed = _run("vanilla", problem, tmp_path / "t", resume=True)
    assert torch.equal(full.recon, resumed.recon)


def test_final_checkpoint_rebuilds_the_network(problem, tmp_path):
    from ctdip.networks import build_network

    res = _run("vanilla", problem, tmp_path / "r")
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == P["iterations"]
    for key in ("network_arch", "network", "z", "optimizer", "method_state", "rng", "engine_state", "history"):
        assert key in ck
    net = build_network(ck["network_arch"])
    net.load_state_dict(ck["network"])
    with torch.no_grad():
        assert torch.equal(net(ck["z"])[0, 0], res.recon[0])


def test_resume_refuses_other_method(problem, tmp_path):
    _run("vanilla", problem, tmp_path / "r", iterations=4)
    with pytest.raises(UserError, match="checkpoint is from method 'vanilla', not 'tv'"):
        _run("tv", problem, tmp_path / "r", resume=True)
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        _run("vanilla", problem, tmp_path / "r", resume=True)
