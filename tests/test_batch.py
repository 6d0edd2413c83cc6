"""`ctdip batch`: local pool over simulated specimens (runs, summary, skip, failure), resume,
Slurm through submitit (debug executor, and the sbatch script submitted to a stand-in sbatch)."""

from __future__ import annotations

import io
import os
import stat
import sys

import pytest

from ctdip.dip.runs import RunFolder
from ctdip.errors import UserError
from ctdip.workflows.batch import (
    SlurmOptions,
    parse_mem_gb,
    parse_time_minutes,
    plan,
    run_batch,
    run_specimen,
    slurm_parameters,
)


@pytest.fixture(scope="module")
def specimens(tmp_path_factory):
    """Three small simulated fan-beam scans (32 px, 20 views) and one with a truncated TIFF."""
    from ctdip.core.data.simulate import simulate

    root = tmp_path_factory.mktemp("specimens")
    for i in range(3):
        simulate(root / f"s{i}", phantom="walnut", geometry="fan", angles=20, size=32, noise=0.05, seed=i)
    bad = root / "bad"
    simulate(bad, phantom="walnut", geometry="fan", angles=20, size=32, noise=0.05, seed=9)
    data = (bad / "projections.tif").read_bytes()
    (bad / "projections.tif").write_bytes(data[: len(data) // 3])
    return root


def test_local_batch_runs_skips_and_reports_failures(specimens, tmp_path, run_cli, capsys):
    scans = [specimens / n for n in ("s0", "s1", "bad", "s2")]
    out = tmp_path / "runs"
    code = run_cli("batch", *scans, "--method", "fbp", "-o", out, "--jobs", "2")
    cap = capsys.readouterr()
    assert code == 1  # one failure, listed
    assert "1 of 4 specimen(s) failed" in cap.err and "bad: " in cap.err and "projections.tif" in cap.err
    for n in ("s0", "s1", "s2"):
        assert RunFolder(out / n).is_finished()
    assert not RunFolder(out / "bad").is_finished()
    lines = (out / "batch_summary.csv").read_text().splitlines()
    assert lines[0].startswith("name,method,psnr") and len(lines) == 4
    psnrs = [float(line.split(",")[2]) for line in lines[1:]]
    assert all(15 < p < 40 for p in psnrs)  # scored against each specimen's own reference
    # the summary reproduces the run's own final PSNR
    s0 = RunFolder(out / "s0").read_summary()
    assert psnrs[0] == pytest.approx(s0["final"]["psnr"], abs=1e-3)
    assert "s0" in cap.out and "fbp" in cap.out  # the final table on stdout

    # second call: the finished specimens are skipped (untouched), the corrupted one fails again
    mtime = (out / "s1" / "recon.tif").stat().st_mtime_ns
    stream = io.StringIO()
    res = run_batch([specimens / "s0", specimens / "s1", specimens / "s2"], "fbp", out, jobs=2, live=False,
                    stream=stream)
    assert [s.state for s in res.specimens] == ["done"] * 3 and not res.failures
    assert "finished before, skipped" in stream.getvalue()
    assert (out / "s1" / "recon.tif").stat().st_mtime_ns == mtime
    assert len(res.rows) == 3 and res.rows[1]["psnr"] == pytest.approx(psnrs[1], abs=1e-6)


def test_unfinished_run_is_resumed(specimens, tmp_path):
    out = tmp_path / "runs"
    r = run_specimen(str(specimens / "s0"), str(out / "s0"), "cgls", {"iterations": 5})
    assert r["ok"], r
    (out / "s0" / "summary.json").unlink()  # as if killed before the end
    specs = plan([specimens / "s0", specimens / "s1"], out)
    assert [s.state for s in specs] == ["resume", "new"]
    res = run_batch([specimens / "s0"], "cgls", out, params={"iterations": 5}, executor="debug", live=False,
                    stream=io.StringIO())
    assert res.specimens[0].state == "finished", res.specimens[0].error
    assert RunFolder(out / "s0").read_config().get("resumed") == 1


def test_slurm_path_with_submitit_debug_executor(specimens, tmp_path):
    import submitit

    out = tmp_path / "runs"
    opts = SlurmOptions(partition="gpu", time="00:30:00", gpus=1, mem="8G", cpus=2, array_parallelism=2)
    res = run_batch([specimens / "s0", specimens / "s2"], "fbp", out, executor="debug", slurm=opts, live=False,
                    stream=io.StringIO())
    assert len(res.jobs) == 2 and all(isinstance(j, submitit.local.debug.DebugJob) for j in res.jobs)
    sub = res.jobs[0].submission()
    assert sub.function is run_specimen
    assert sub.args[:3] == (str((specimens / "s0").resolve()), str((out / "s0").resolve()), "fbp")
    # a Slurm time limit makes each run checkpoint and stop 5 minutes before it
    assert sub.args[5]["time_limit"] == pytest.approx(25 * 60)
    assert sub.args[6] == 2  # torch threads = --cpus
    assert [s.state for s in res.specimens] == ["finished", "finished"]
    assert RunFolder(out / "s2").is_finished() and len(res.rows) == 2


def _fake_slurm_bin(tmp_path):
    """Stand-ins for srun/sbatch: sbatch records the script it was given and answers like Slurm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{tmp_path}/submitted.sh"\necho x >> "{tmp_path}/n_sbatch"\n'
                                    'echo "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    # sacct: the array's tasks are still pending/running
    (bin_dir / "sacct").write_text('#!/bin/sh\necho "JobID|State|NodeList"\necho "4242_0|RUNNING|n1"\n'
                                   'echo "4242_1|PENDING|"\necho "4242_2|PENDING|"\n')
    for f in ("sbatch", "srun", "sacct"):
        (bin_dir / f).chmod((bin_dir / f).stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_sbatch_parameters_submitted(specimens, tmp_path, monkeypatch, run_cli, capsys):
    monkeypatch.setenv("PATH", f"{_fake_slurm_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "runs"
    args = ("batch", specimens / "s0", specimens / "s1", specimens / "s2", "--method", "fbp",
            "--executor", "slurm", "-o", out, "--partition", "gpu-a100", "--time", "1:30:00", "--gpus", "1",
            "--mem", "16G", "--cpus", "4", "--array-parallelism", "2", "--slurm-setup", "module load cuda",
            "--no-wait")
    code = run_cli(*args)
    assert code == 0, capsys.readouterr().err
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu-a100", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --mem=16GB", "#SBATCH --cpus-per-task=4", "#SBATCH --array=0-2%2",
                 "#SBATCH --job-name=ctdip-fbp", "#SBATCH --nodes=1", "module load cuda"):
        assert line in script, line
    assert "submitit.core._submit" in script and str(out / "slurm") in script
    import json

    status = json.loads((out / "batch_status.json").read_text())
    assert [s["job_id"] for s in status] == ["4242_0", "4242_1", "4242_2"]
    assert all(s["state"] == "queued" for s in status)
    # the same command again while Slurm still runs them: nothing is submitted twice
    assert run_cli(*args) == 0
    assert (tmp_path / "n_sbatch").read_text().count("x") == 1
    assert [s["job_id"] for s in json.loads((out / "batch_status.json").read_text())] == ["4242_0", "4242_1", "4242_2"]


def test_slurm_option_parsing_and_errors(tmp_path, monkeypatch):
    assert parse_time_minutes("90") == 90 and parse_time_minutes("01:30:00") == 90
    assert parse_time_minutes("1-00:00") == 1440 and parse_time_minutes("10:30") == 11
    assert parse_mem_gb("16G") == 16 and parse_mem_gb("512M") == 0.5 and parse_mem_gb("1T") == 1024
    p = slurm_parameters(SlurmOptions(partition="p", time="2:00:00", gpus=2, mem="1.5G", array_parallelism=3), "j")
    assert p == {"name": "j", "nodes": 1, "tasks_per_node": 1, "timeout_min": 120, "gpus_per_node": 2,
                 "slurm_mem": "1536M", "slurm_partition": "p", "slurm_array_parallelism": 3}
    with pytest.raises(UserError, match="not a Slurm time"):
        parse_time_minutes("1h")
    with pytest.raises(UserError, match="not a memory size"):
        parse_mem_gb("lots")
    with pytest.raises(UserError, match="unknown method"):
        run_batch([tmp_path], "no-such-method", tmp_path / "o")
    with pytest.raises(UserError, match="no such scan folder"):
        plan([tmp_path / "missing"], tmp_path / "o")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'ctdip\[slurm\]'"):
        run_batch([tmp_path], "fbp", tmp_path / "o", executor="slurm", live=False, stream=io.StringIO())


def test_live_table_renders(tmp_path):
    from ctdip.workflows.batch import Progress, Specimen

    specs = [Specimen("walnut1", tmp_path, tmp_path / "r1", state="running", started=0.0),
             Specimen("walnut2", tmp_path, tmp_path / "r2", state="failed", error="projections.tif: bad")]
    RunFolder(tmp_path / "r1").create().write_metrics([{"iter": 40, "psnr": 27.125}])
    stream = io.StringIO()
    with Progress(specs, live=True, stream=stream) as prog:
        prog.update()
    text = stream.getvalue()
    for word in ("specimen", "walnut1", "running", "40", "27.12", "walnut2", "failed", "projections.tif: bad"):
        assert word in text, word


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_changed_settings_are_refused_or_rerun(specimens, tmp_path, run_cli, capsys):
    import json

    out = tmp_path / "runs"
    scans = [specimens / "s0", specimens / "s1"]
    res = run_batch(scans, "cgls", out, params={"iterations": 3}, executor="debug", live=False, stream=io.StringIO())
    assert [s.state for s in res.specimens] == ["finished", "finished"]
    # library callers get the same status and summary files as the command
    assert [p.name for p in res.files] == ["batch_status.json", "batch_summary.csv", "batch_summary.md",
                                           "batch_summary.json"]
    status = json.loads((out / "batch_status.json").read_text())
    assert [(e["specimen"], e["state"]) for e in status] == [("s0", "finished"), ("s1", "finished")]
    assert len((out / "batch_summary.csv").read_text().splitlines()) == 3
    before = _tree(out)

    # other iterations: refused before any work, one line naming the specimens and the change
    code = run_cli("batch", *scans, "--method", "cgls", "-n", "5", "-o", out)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {out}: 2 specimens (s0, s1) were run")
    assert "(s0: iterations 3 -> 5)" in err and "--rerun" in err
    assert _tree(out) == before  # nothing written, nothing removed
    # the same settings: skipped
    res = run_batch(scans, "cgls", out, params={"iterations": 3}, executor="debug", live=False, stream=io.StringIO())
    assert [s.state for s in res.specimens] == ["done", "done"]

    # an unfinished run with another scan option is refused too
    (out / "s1" / "summary.json").unlink()
    code = run_cli("batch", specimens / "s1", "--method", "cgls", "-n", "3", "--angles", "10", "-o", out)
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: {out / 's1'}: started with other settings (scan.angles (unset) -> 10); "
                                 "add --rerun to redo it from scratch, or choose another -o\n")
    with pytest.raises(UserError, match=r"seed 0 -> 3"):
        run_batch([specimens / "s1"], "cgls", out, params={"iterations": 3}, options={"seed": 3}, executor="debug")

    # --rerun redoes both from scratch (finished s0, unfinished s1); --set keys take dashes like reconstruct
    code = run_cli("batch", *scans, "--method", "cgls", "-n", "5", "--set", "log-every=2", "--rerun", "-o", out,
                   "--jobs", "1")
    assert code == 0, capsys.readouterr().err
    for n in ("s0", "s1"):
        cfg = RunFolder(out / n).read_config()
        assert cfg["params"]["iterations"] == 5 and cfg["params"]["log_every"] == 2 and "resumed" not in cfg
        assert [r["iter"] for r in RunFolder(out / n).read_metrics()][-1] == 5
    # and a rerun of a run that already has these settings does nothing
    res = run_batch(scans, "cgls", out, params={"iterations": 5, "log_every": 2}, rerun=True, executor="debug",
                    live=False, stream=io.StringIO())
    assert [s.state for s in res.specimens] == ["done", "done"]


def test_set_keys_turn_dashes_into_underscores(specimens, tmp_path):
    from ctdip.cli._options import parse_set
    from ctdip.workflows.batch import requested_settings

    params = parse_set(["log-every=2", "iterations=4"])
    assert params == {"log_every": 2, "iterations": 4}
    assert requested_settings("cgls", params)["params"] == {"iterations": 4, "log_every": 2}
    with pytest.raises(UserError, match="has no parameter 'no_such'"):
        requested_settings("cgls", parse_set(["no-such=1"]))


def test_worker_checkpoints_on_sigterm_and_stops_on_a_signal_outside_the_loop(specimens, tmp_path, monkeypatch,
                                                                          one_thread):
    """What a Slurm task does on `scancel` (SIGTERM, with submitit's 'bypass' handler installed):
    the DIP run checkpoints at its iteration and returns 'interrupted'; the handler is restored."""
    import signal

    from ctdip.dip.runs import RunFolder as RF

    def bypass(signum, frame):  # submitit's handler: logs and ignores SIGTERM
        pass

    old = signal.signal(signal.SIGTERM, bypass)
    append = RF.append_metrics

    def append_then_signal(self, rows):  # "scancel" at iteration 1, inside the engine loop
        append(self, rows)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        monkeypatch.setattr(RF, "append_metrics", append_then_signal)
        r = run_specimen(str(specimens / "s0"), str(tmp_path / "a"), "tv", {"network": "tiny", "iterations": 50})
        assert signal.getsignal(signal.SIGTERM) is bypass
    finally:
        signal.signal(signal.SIGTERM, old)
        monkeypatch.undo()
    assert r == {"ok": False, "interrupted": True, "signal": signal.SIGTERM, "iteration": 1,
                 "error": "interrupted at iteration 1, checkpoint written"}
    # a signal while the scan is being read (no engine handler yet) stops the run at once
    import ctdip.core.data.loader as loader

    load = loader.load_scan

    def load_then_signal(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return load(*a, **k)

    monkeypatch.setattr(loader, "load_scan", load_then_signal)
    r = run_specimen(str(specimens / "s1"), str(tmp_path / "b"), "tv", {"network": "tiny", "iterations": 50})
    assert r["interrupted"] and r["signal"] == signal.SIGINT and r["iteration"] is None
    assert r["error"] == "interrupted before its first checkpoint"
    assert not (tmp_path / "b").exists()


def test_ctrl_c_while_following_slurm_jobs(specimens, tmp_path, monkeypatch, run_cli, capsys):
    """Ctrl-C stops following (the jobs keep running on the cluster), writes the status with the
    job ids and exits 130; the same command later follows the same jobs."""
    import json
    import signal

    import ctdip.workflows.batch.slurm as batch_slurm

    monkeypatch.setenv("PATH", f"{_fake_slurm_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    calls = []

    def touched_then_ctrl_c(run_dir, t):  # called while following the queued jobs
        calls.append(run_dir)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return False

    monkeypatch.setattr(batch_slurm, "_touched_since", touched_then_ctrl_c)
    out = tmp_path / "runs"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    code = run_cli("batch", specimens / "s0", specimens / "s1", "--method", "fbp", "--executor", "slurm", "-o", out)
    err = capsys.readouterr().err
    assert code == 130
    assert f"SIGINT: batch stopped; status in {out / 'batch_status.json'}\n" in err
    assert "  s0: queued on Slurm (job 4242_0)\n" in err and "  s1: queued on Slurm (job 4242_1)\n" in err
    status = json.loads((out / "batch_status.json").read_text())
    assert [(e["state"], e["job_id"]) for e in status] == [("queued", "4242_0"), ("queued", "4242_1")]
    assert signal.getsignal(signal.SIGINT) is before  # the command's handler is gone


def test_pool_replaces_a_worker_that_dies(specimens, tmp_path):
    """A worker killed during a task (out of memory, ...): that specimen fails with the reason, a
    new worker takes the rest of the queue."""
    import multiprocessing as mp
    import signal

    from ctdip.workflows.batch import Specimen, StopControl, run_pool, specimen_line

    results, started = {}, []

    def on_start(name):
        started.append(name)
        if name == "s0":
            for p in mp.active_children():
                if p.name == "ctdip-batch-worker":
                    os.kill(p.pid, signal.SIGKILL)

    def task(name):
        return {"scan": str(specimens / name), "run_dir": str(tmp_path / name), "method": "fbp"}

    left = run_pool(["s0", "s1"], task, on_start=on_start, on_result=results.__setitem__, n_jobs=1, threads=1,
                    stop=StopControl())
    assert left == [] and started == ["s0", "s1"]
    assert results["s0"] == {"ok": False, "interrupted": False, "killed": False,
                             "error": "worker ended (killed by SIGKILL)"}
    assert results["s1"]["ok"] and RunFolder(tmp_path / "s1").is_finished()
    assert not [p for p in mp.active_children() if p.name == "ctdip-batch-worker"]
    s = Specimen("s0", tmp_path, tmp_path / "s0", state="interrupted", error="killed by the second signal")
    assert specimen_line(s) == "s0: killed by the second signal (no checkpoint yet: starts again)"
    s.iteration = 40
    assert specimen_line(s) == "s0: killed by the second signal (resumes from its checkpoint at iteration 40)"
