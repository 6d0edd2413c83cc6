"""A 3D TV-DIP gets the 3D defaults of ``presets/methods/tv.yaml`` (``params_3d:``) for every
parameter the caller does not give, a 2D one keeps the 2D defaults, and a 3D run prints the
benchmark's note (``benchmarks/results/3d.md``)."""

import pytest

from ctdip.core.data.loader import load_scan
from ctdip.core.problem import Problem
from ctdip.methods import get_method


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from ctdip.cli.main import main

    d = tmp_path_factory.mktemp("scans")
    assert main(["simulate", str(d / "cone"), "--geometry", "cone", "--size", "16", "--angles", "24",
                 "--noise", "0.02", "--seed", "1", "--quiet"]) == 0
    assert main(["simulate", str(d / "fan"), "--geometry", "fan", "--size", "32", "--angles", "24",
                 "--noise", "0.02", "--seed", "1", "--quiet"]) == 0
    return d


def problem(path, mode):
    return Problem.from_scan(load_scan(path, mode=mode, print_warnings=False))


def test_3d_problem_gets_3d_defaults_and_given_keys_win(scans):
    p3 = problem(scans / "cone", "3d")
    m = get_method("tv")()
    m.preflight(p3)
    keys = ("iterations", "input", "input_skip", "network", "tv_weight", "lr", "lr_schedule", "output")
    assert {k: m.params[k] for k in keys} == {"iterations": 800, "input": "fbp", "input_skip": True, "network": "3d-skip",
                                              "tv_weight": 0.005, "lr": 0.001, "lr_schedule": "constant",
                                              "output": "method"}
    assert m.arch["skip_channels"] == [4, 4, 4] and m.arch["dim"] == 3
    assert "benchmarks/results/3d.md" in m.sources["input"]
    given = get_method("tv")(input="noise", network="3d", iterations=7)
    given.preflight(p3)
    assert (given.params["input"], given.params["network"], given.params["iterations"]) == ("noise", "3d", 7)
    assert given.params["input_skip"] is True and given.params["tv_weight"] == 0.005


def test_2d_problem_keeps_2d_defaults(scans):
    m = get_method("tv")()
    m.preflight(problem(scans / "fan", "2d"))
    keys = ("iterations", "input", "input_skip", "network", "tv_weight", "lr", "lr_schedule", "output")
    assert {k: m.params[k] for k in keys} == {"iterations": 3000, "input": "noise", "input_skip": False, "network": "light",
                                              "tv_weight": "auto", "lr": 0.002, "lr_schedule": "cosine", "output": "ema"}


def test_input_skip_starts_at_the_fdk_and_improves_it(scans, one_thread):
    """x = z + f(z) from the FDK: the first iterate is near the FDK and 30 steps improve on it."""
    from ctdip.core.metrics import psnr
    from ctdip.dip.context import RunContext

    p3 = problem(scans / "cone", "3d")
    fdk = psnr(p3.x_init, p3.reference)
    res = get_method("tv")(iterations=30, log_every=10, checkpoint_every=0).run(p3, RunContext(seed=0, quiet=True))
    curve = [r["psnr"] for r in res.history]
    assert curve[-1] > fdk + 0.3 and curve[-1] > curve[0]
    returned = psnr(res.recon.reshape(p3.reference.shape), p3.reference)  # z + f(z), not f(z) alone
    assert abs(returned - curve[-1]) < 0.5
    noise = get_method("tv")(iterations=30, log_every=10, checkpoint_every=0, input="noise", input_skip=False, network="3d")
    assert noise.run(p3, RunContext(seed=0, quiet=True)).history[-1]["psnr"] < curve[-1] - 3


def test_3d_run_prints_the_benchmark_note(scans, tmp_path, capsys):
    from ctdip.cli.main import main

    assert main(["reconstruct", str(scans / "cone"), "--mode", "3d", "-m", "tv", "-n", "2",
                 "-o", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "note: at 64³ from 60 cone views a 3D TV-DIP with the 3D defaults needed ~455 iterations" in err
    assert "benchmarks/results/3d.md" in err and "2 iterations are likely too few" in err
    assert main(["reconstruct", str(scans / "fan"), "-m", "tv", "-n", "2", "-o", str(tmp_path / "r2")]) == 0
    assert "benchmarks/results/3d.md" not in capsys.readouterr().err


def test_note_says_too_few_only_below_the_measured_count():
    from ctdip.methods.tv import BENCH_3D, note_3d

    n = BENCH_3D["iterations_to_fdk3"]
    assert "too few" in note_3d(n - 1) and "too few" not in note_3d(800)


def test_tv_hqs_keeps_its_former_schedule_in_3d(scans):
    """tv-hqs took tv's 2D schedule (cosine, EMA, 3000 iterations); 3D keeps the untuned old one."""
    keys = ("iterations", "lr", "lr_schedule", "output")
    m3 = get_method("tv-hqs")()
    m3.preflight(problem(scans / "cone", "3d"))
    assert {k: m3.params[k] for k in keys} == {"iterations": 2000, "lr": 0.001, "lr_schedule": "constant",
                                               "output": "method"}
    m2 = get_method("tv-hqs")()
    m2.preflight(problem(scans / "fan", "2d"))
    assert {k: m2.params[k] for k in keys} == {"iterations": 3000, "lr": 0.002, "lr_schedule": "cosine", "output": "ema"}
