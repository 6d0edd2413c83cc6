"""A one-line duration estimate before long work (issue 11, item 10)."""

import pytest

from ctdip.cli.main import main
from ctdip.core.estimate import StepEstimate, format_duration


def test_estimate_from_the_first_steps_once():
    t = iter(range(100))
    lines = []
    est = StepEstimate(write=lines.append, clock=lambda: float(next(t)) * 0.5)  # 0.5 s per step
    for it in range(1, 400):
        est(it, 2000)
    # clock starts after step 1; after 5 more steps: 0.5 s/it x 2000 iterations = 1000 s
    assert lines == ["note: estimated 17 min for 2000 iterations (0.5 s/it)"]
    assert format_duration(45) == "45 s" and format_duration(3 * 3600) == "3.0 h"


def test_resumed_and_short_loops(monkeypatch):
    lines = []
    clock = iter(float(k) for k in range(100))
    est = StepEstimate(write=lines.append, clock=lambda: next(clock))
    for it in range(301, 320):
        est(it, 400)
    assert lines == ["note: estimated 1.7 min for the remaining 100 of 400 iterations (1 s/it)"]
    lines.clear()
    clock = iter(float(k) for k in range(100))
    est = StepEstimate(write=lines.append, clock=lambda: next(clock))
    for it in range(1, 20):
        est(it, 30)  # 30 s: below the one-minute threshold
    assert lines == []


@pytest.mark.parametrize("quiet", [False, True])
def test_dip_run_prints_the_estimate(tmp_path, capsys, monkeypatch, one_thread, quiet):
    monkeypatch.setenv("CTDIP_ESTIMATE_MIN_S", "0")  # force it on a tiny run
    scan = tmp_path / "scan"
    assert main(["simulate", str(scan), "--size", "24", "--angles", "12", "-q"]) == 0
    args = ["reconstruct", str(scan), "-m", "vanilla", "--network", "tiny", "-n", "12", "-o", str(tmp_path / "r")]
    assert main(args + (["-q"] if quiet else [])) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: estimated")]
    if quiet:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].endswith(" s/it)") and " for 12 iterations (" in notes[0]


def test_pretraining_prints_the_estimate(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setenv("CTDIP_ESTIMATE_MIN_S", "0")
    scan = tmp_path / "scan"
    assert main(["simulate", str(scan), "--size", "24", "--angles", "12", "-q"]) == 0
    assert main(["pretrain", "--scan", str(scan), "-o", str(tmp_path / "w.pt"), "--steps", "8", "--batch-size", "2",
                 "--network", "tiny"]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: estimated")]
    assert len(notes) == 1 and " for 8 pretrain steps (" in notes[0]
