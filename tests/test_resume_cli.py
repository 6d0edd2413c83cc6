"""`ctdip reconstruct --resume` from the command line: a finished run is not recomputed, changed
settings are refused, an interrupt says how to continue (issue 11 item 11, issue 12 item 8)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ctdip.cli.main import main
from ctdip.dip.runs import RunFolder


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume") / "scan"
    assert main(["simulate", str(d), "--size", "32", "--angles", "20", "--noise", "0.05", "-q"]) == 0
    return d


def test_resume_of_a_finished_run_says_so(scan, tmp_path, capsys):
    run = tmp_path / "cg"
    assert main(["reconstruct", str(scan), "-m", "cgls", "-n", "4", "-o", str(run), "-q"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["reconstruct", "--resume", str(run)]) == 0
    cap = capsys.readouterr()
    assert cap.err.strip() == (f"note: {run} is finished (4 iteration(s)); nothing to resume. "
                               f"Its numbers: {run / 'summary.json'}")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing rewritten
    assert main(["reconstruct", "--resume", str(run), "--json"]) == 0
    assert '"method": "cgls"' in capsys.readouterr().out


def test_resume_refuses_changed_settings(scan, tmp_path, capsys):
    run = tmp_path / "tv"
    assert main(["reconstruct", str(scan), "-m", "tv", "--network", "tiny", "-n", "6", "-o", str(run), "-q"]) == 0
    (run / "summary.json").unlink()  # unfinished, as after a kill
    cfg = (run / "config.yaml").read_text()
    for args, flag in ((["-n", "5"], "--iterations 5"), (["--set", "ema_decay=0.5"], "--set ema_decay 0.5"),
                       (["--tv-weight", "0.5"], "--tv-weight 0.5"),
                       (["--angles", "10"], "--angles 10"), (["--seed", "3"], "--seed 3")):
        assert main(["reconstruct", "--resume", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {run}: {flag}: --resume continues the run with its recorded settings")
        assert "\n" not in err and err.endswith("; start a new run with -o to change them")
        assert (run / "config.yaml").read_text() == cfg  # config untouched
    # the recorded values themselves are fine
    assert main(["reconstruct", "--resume", str(run), "-n", "6", "-q"]) == 0
    assert RunFolder(run).read_summary()["iterations"] == 6


def test_interrupt_names_the_iteration_and_the_resume_command(scan, tmp_path):
    run = tmp_path / "long"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "ctdip.cli.main", "reconstruct", str(scan), "-m", "vanilla",
                          "--network", "tiny", "-n", "100000", "--log-every", "1", "-o", str(run), "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while not (run / "metrics.csv").exists() or len((run / "metrics.csv").read_text().splitlines()) < 3:
        assert time.time() - t0 < 60 and p.poll() is None
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    it = int(lines[0].split("iteration ")[1].split(",")[0])
    assert lines[0] == (f"interrupted at iteration {it}, checkpoint written; "
                        f"continue with ctdip reconstruct --resume {run}")
    assert it >= 2 and RunFolder(run).file("checkpoint.pt").exists()


def test_problem_from_run_is_the_runs_problem(scan, tmp_path):
    """One reader of how a run read its scan: the Problem rebuilt from config.yaml (what ctdip
    spectrum analyses) has the run's geometry, data, held-out views and scalings."""
    import torch

    from ctdip.core.data.loader import load_scan
    from ctdip.core.problem import Problem
    from ctdip.workflows.resume import problem_from_run
    from ctdip.workflows.spectrum import load_subject

    run = tmp_path / "h"
    assert main(["reconstruct", str(scan), "-m", "vanilla", "--network", "tiny", "-n", "2", "--angles", "12",
                 "--holdout", "0.25", "--backend", "torch", "-o", str(run), "-q"]) == 0
    cfg = RunFolder(run).read_config()
    p = problem_from_run(run)
    direct = Problem.from_scan(load_scan(scan, angles=12), backend="torch", holdout=0.25)
    assert p.A.geometry.hash() == cfg["geometry"]["hash"] == direct.A.geometry.hash()
    assert p.volume.hash() == cfg["volume"]["hash"] and p.A.backend == cfg["backend"] == "torch"
    assert torch.equal(p.y, direct.y) and torch.equal(p.y_held, direct.y_held) and p.y_held.shape[0] == 3
    assert p.scalings() == cfg["scalings"]
    # spectrum's subject is built on the same problem; a scan option given there replaces the recorded one
    assert load_subject(run).problem.A.geometry.hash() == cfg["geometry"]["hash"]
    assert problem_from_run(run, scan_options={"angles": 8, "size": None}).A.geometry.n_views == 6


def test_resume_settings_restore_the_recorded_ones(scan, tmp_path):
    from pathlib import Path

    from ctdip.errors import UserError
    from ctdip.workflows.resume import resume_settings, start_settings

    run = tmp_path / "s"
    assert main(["reconstruct", str(scan), "-m", "cgls", "-n", "3", "--angles", "10", "--seed", "4",
                 "--holdout", "0.1", "-o", str(run), "-q"]) == 0
    s = resume_settings(run)
    assert (s.method, s.params, s.scan, s.scan_options) == ("cgls", {"iterations": 3}, scan.resolve(), {"angles": 10})
    assert (s.seed, s.holdout, s.backend, s.output, s.resume) == (4, 0.1, "auto", Path(run), True)
    assert s.config_extra == {"setup": None, "backend_requested": "auto"}
    assert resume_settings(run, "cgls", {"iterations": 3}, seed=4).params == {"iterations": 3}  # repeating is fine
    with pytest.raises(UserError, match=r": --iterations 5: --resume continues"):
        resume_settings(run, params={"iterations": 5}, named_params=["iterations"])
    with pytest.raises(UserError, match="does not match the run's method 'cgls'"):
        resume_settings(run, "fbp")
    # a new run: the setup's scan options and method params under the command's own
    n = start_settings(scan, None, {"iterations": 2}, setup="walnut-2d-sparse-60", scan_options={"angles": 12})
    assert n.scan_options["angles"] == 12 and n.scan_options["slice"] == "+3" and n.method == "fbp"
    assert n.config_extra == {"setup": "walnut-2d-sparse-60", "backend_requested": "auto"} and not n.resume


def test_a_run_with_a_relative_network_yaml_resumes_from_another_directory(scan, tmp_path, monkeypatch):
    """``--network nets/mine.yaml`` given relative to the current directory is recorded as an
    absolute path, so ``--resume`` from elsewhere finds it (it said "network preset file not
    found" before)."""
    work, other = tmp_path / "work", tmp_path / "other"
    (work / "nets").mkdir(parents=True)
    other.mkdir()
    (work / "nets" / "mine.yaml").write_text("arch:\n  name: unet\n  channels: [8, 16, 16]\n  skip_channels: [4, 4, 4]\n")
    run = tmp_path / "rel"
    monkeypatch.chdir(work)
    assert main(["reconstruct", str(scan), "-m", "tv", "--network", "nets/mine.yaml", "-n", "6", "-o", str(run), "-q"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["params"]["network"] == str(work / "nets" / "mine.yaml")
    (run / "summary.json").unlink()  # unfinished, as after a kill
    monkeypatch.chdir(other)
    assert main(["reconstruct", "--resume", str(run), "-q"]) == 0
    assert RunFolder(run).read_summary()["iterations"] == 6
    assert main(["reconstruct", "--resume", str(run), "--network", str(work / "nets" / "mine.yaml"), "-q"]) == 0
