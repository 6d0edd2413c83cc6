"""``--set ensemble=N``: N network seeds, recon.tif = their mean, recon_std.tif = their spread;
members are ordinary run folders, a killed ensemble resumes where it was."""

import json
import os
import signal

import numpy as np
import pytest
import tifffile

from ctdip.cli.main import main
from ctdip.core.data.simulate import simulate
from ctdip.errors import UserError

P = {"iterations": 12, "network": "tiny", "log_every": 4, "checkpoint_every": 4, "lr": 0.01}


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("s") / "scan"
    simulate(d, phantom="walnut", geometry="fan", size=32, angles=20, noise=0.05, seed=2)
    return d


def _recon(path):
    return tifffile.imread(path / "recon.tif").astype(np.float64)


def test_ensemble_is_the_mean_of_its_seeds_runs(scan, tmp_path, one_thread):
    from ctdip.workflows.reconstruct import reconstruct

    rs = reconstruct(scan, "vanilla", {**P, "ensemble": 3}, output=tmp_path / "ens", seed=4)
    singles = [_recon(reconstruct(scan, "vanilla", P, output=tmp_path / f"s{s}", seed=s).path) for s in (4, 5, 6)]
    members = [tmp_path / "ens" / "members" / f"seed{s}" for s in (4, 5, 6)]
    for single, member in zip(singles, members):  # a member is the single run of its seed
        np.testing.assert_allclose(_recon(member), single, rtol=1e-5, atol=1e-6)
        assert json.loads((member / "summary.json").read_text())["iterations"] == 12
    stack = np.stack(singles)
    np.testing.assert_allclose(_recon(rs.path), stack.mean(axis=0), rtol=1e-4, atol=1e-5)
    std = tifffile.imread(rs.path / "recon_std.tif").astype(np.float64)
    np.testing.assert_allclose(std, stack.std(axis=0, ddof=1), rtol=1e-3, atol=1e-5)
    assert std.max() > 0  # the seeds differ
    ens = rs.summary["result"]["ensemble"]
    assert ens["n"] == 3 and [m["seed"] for m in ens["members"]] == [4, 5, 6]
    # scored (Jensen): the mean's squared error is at most the members' mean squared error
    mse = [10 ** (-m["returned"]["psnr"] / 10) for m in ens["members"]]
    assert 10 ** (-rs.summary["returned"]["psnr"] / 10) <= np.mean(mse) * (1 + 1e-6)
    assert rs.summary["iterations"] == 12 and "recon_std.tif" in rs.summary["files"]
    from ctdip.workflows.evaluate import load_entry

    assert load_entry(rs.path).method == "vanilla x3"  # ctdip evaluate names the ensemble
    import yaml

    cfg = yaml.safe_load((members[1] / "config.yaml").read_text())  # resumable alone, as one run
    assert cfg["seed"] == 5 and cfg["params"]["ensemble"] == 1 and "ensemble" not in cfg["overrides"]


def test_killed_ensemble_resumes_to_the_uninterrupted_result(scan, tmp_path, one_thread, capsys):
    from ctdip.workflows.reconstruct import reconstruct

    params = {**P, "ensemble": 2}
    full = reconstruct(scan, "vanilla", params, output=tmp_path / "full")

    class Kill:
        verbose = False

        def on_warning(self, m): ...
        def on_start(self, m, p): ...
        def on_stop(self): ...
        def on_finish(self, r): ...

        def on_progress(self, it, total, metrics):
            assert total == 24  # one bar over both members
            if it == 18:  # member 2, its iteration 6
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as err:
        reconstruct(scan, "vanilla", params, output=tmp_path / "cut", reporter=Kill())
    assert err.value.run_path == tmp_path / "cut"  # the CLI names the ensemble's folder to resume
    assert (tmp_path / "cut" / "members" / "seed0" / "summary.json").is_file()
    assert not (tmp_path / "cut" / "recon.tif").exists()
    first = (tmp_path / "cut" / "members" / "seed0" / "recon.tif").stat().st_mtime_ns
    assert main(["spectrum", str(tmp_path / "cut"), "--rank", "2"]) == 2  # one network per member
    assert "members/seed0" in capsys.readouterr().err
    assert main(["reconstruct", "--resume", str(tmp_path / "cut"), "-q"]) == 0
    assert (tmp_path / "cut" / "members" / "seed0" / "recon.tif").stat().st_mtime_ns == first  # not rerun
    np.testing.assert_allclose(_recon(tmp_path / "cut"), _recon(full.path), rtol=1e-5, atol=1e-6)


def test_ensemble_must_be_a_positive_integer_and_dip_only(scan, tmp_path, capsys):
    from ctdip.methods import get_method

    with pytest.raises(UserError, match="ensemble"):
        get_method("vanilla")(ensemble=0)
    assert main(["reconstruct", str(scan), "-m", "fbp", "--set", "ensemble=3", "-o", str(tmp_path / "f")]) == 2
    assert "ensemble" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_members_share_one_cross_validation(scan, tmp_path, one_thread):
    from ctdip.workflows.reconstruct import reconstruct

    params = {**P, "iterations": 4, "tv_weight": "auto", "cv_grid": "1e-4:0.1:4", "cv_iterations": 20,
              "ensemble": 2}
    reconstruct(scan, "tv", params, output=tmp_path / "e")
    choices = [json.loads((tmp_path / "e" / "members" / f"seed{s}" / "summary.json").read_text())["result"]
               ["tv_weight_choice"] for s in (0, 1)]
    assert choices[0] == choices[1]  # the same evidence, wall time included: made once
    single = reconstruct(scan, "tv", {**params, "ensemble": 1}, output=tmp_path / "s", seed=1)
    assert single.summary["result"]["tv_weight_choice"]["chosen"] == choices[1]["chosen"]
