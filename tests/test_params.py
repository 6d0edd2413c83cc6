"""The one parameter resolver (ctdip.methods.params): presets, old names, dashes, unknown keys."""

import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_methods import make_problem  # noqa: E402

from ctdip.dip.context import RunContext
from ctdip.dip.engine import EngineConfig
from ctdip.errors import UserError
from ctdip.methods import REGISTRY, get_method
from ctdip.methods import params as mp
from ctdip.workflows.reconstruct import resolve_method

FAST = {"network": "tiny", "iterations": 6, "lr": 0.01, "log_every": 2, "checkpoint_every": 0, "es_window": 3}


@pytest.fixture
def preset_dir(tmp_path, monkeypatch):
    """An empty presets/methods folder in place of the shipped one."""
    monkeypatch.setattr(mp, "PRESET_DIR", tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_resolves_its_preset(name):
    cls = get_method(name)
    assert cls.name == name  # the preset file is found under the registered name
    preset = mp.load_preset(name)
    assert preset["path"] is not None and preset["params"]
    m = cls()
    assert {k: m.params[k] for k in preset["params"]} == preset["params"]
    assert set(preset["sources"]) <= set(m.params) and set(m.sources) >= set(preset["sources"])
    assert resolve_method(name)[5] == m.params


def test_unknown_key_is_refused_with_the_known_list():
    with pytest.raises(UserError) as e:
        resolve_method("admm", {"nosuch": 1, "rho": 2.0})
    msg = e.value.message
    assert "\n" not in msg and msg.startswith("method 'admm' has no parameter 'nosuch'; known parameters: ")
    known = msg.split("known parameters: ")[1].split(", ")
    assert known == sorted(get_method("admm")().params) and "u_every" in known and "inner" not in known
    with pytest.raises(UserError, match=r"method 'cgls' has no parameter 'lr'; known parameters: iterations, log_every$"):
        get_method("cgls")(lr=0.1)


def test_value_source_entries_and_stray_preset_keys(preset_dir):
    (preset_dir / "cgls.yaml").write_text(yaml.safe_dump(
        {"params": {"iterations": {"value": 7, "source": "chosen in a test"}, "log_every": 2},
         "sources": {"log_every": "also a test"}}))
    m = get_method("cgls")()
    assert m.params == {"iterations": 7, "log_every": 2}
    assert m.sources == {"iterations": "chosen in a test", "log_every": "also a test"}
    name, _, preset, overrides, _, resolved = resolve_method("cgls", {"log_every": 5})
    assert preset["params"] == {"iterations": 7, "log_every": 2} and preset["path"] == str(preset_dir / "cgls.yaml")
    assert overrides == {"log_every": 5} and resolved == {"iterations": 7, "log_every": 5}
    (preset_dir / "vanilla.yaml").write_text(yaml.safe_dump({"params": {"lr": {"value": 0.02, "source": "s"}}}))
    v = get_method("vanilla")()
    assert v.params["lr"] == 0.02 and v.sources["lr"] == "s"
    # a preset key the method does not know is an error naming the preset file (classical methods
    # dropped it silently before, DIP methods accepted it)
    for method in ("cgls", "vanilla"):
        (preset_dir / f"{method}.yaml").write_text(yaml.safe_dump({"params": {"iterations": 3, "bogus": 1}}))
        with pytest.raises(UserError, match=f"method '{method}' has no parameter 'bogus'") as e:
            get_method(method)()
        assert str(e.value.path) == str(preset_dir / f"{method}.yaml")


def test_strings_are_coerced_to_the_type_of_the_default():
    m = get_method("edip")(force="yes", iterations="7", lr="2e-3", grad_clip=1)
    assert m.params["force"] is True and m.params["iterations"] == 7 and m.params["lr"] == 2e-3
    assert isinstance(m.params["grad_clip"], float)
    assert get_method("cgls")(iterations="12").params["iterations"] == 12
    with pytest.raises(UserError, match="method 'edip': parameter 'force' expects bool, got 'maybe'"):
        get_method("edip")(force="maybe")


@pytest.mark.parametrize("method,old,new", [("admm", "inner", "u_every"), ("hqs-denoiser", "inner", "u_every"),
                                            ("red", "inner", "u_every"), ("tv-hqs", "inner", "u_every"),
                                            ("aseq", "inner", "block_steps")])
def test_old_names_resolve_like_the_new_ones(method, old, new):
    a = resolve_method(method, {old: 3})
    b = resolve_method(method, {new: 3})
    assert a[5] == b[5] and a[5][new] == 3 and old not in a[5]
    assert a[3] == b[3] == {new: 3}  # config.yaml records the current name
    assert resolve_method(method, {old: 3, new: 3})[5][new] == 3
    with pytest.raises(UserError, match=f"'{old}' and '{new}' name the same parameter"):
        resolve_method(method, {old: 3, new: 4})
    with pytest.raises(UserError, match=f"--set {old}: "):  # the error names the option as given
        resolve_method(method, {old: 0})
    with pytest.raises(UserError, match=f"--set {new}: "):
        resolve_method(method, {new: 0})


@pytest.mark.parametrize("method,old,new", [("aseq", "inner", "block_steps"), ("admm", "inner", "u_every")])
def test_old_names_give_the_same_output(method, old, new, one_thread):
    problem = make_problem(n=32, views=20)
    extra = {"denoiser": "tv"} if method == "admm" else {}
    outs = []
    for key in (old, new):
        m = get_method(method)(**FAST, **extra, **{key: 2})
        outs.append(m.run(problem, RunContext(seed=1, quiet=True)))
    assert torch.equal(outs[0].recon, outs[1].recon)
    assert [r["loss"] for r in outs[0].history] == [r["loss"] for r in outs[1].history]


def test_dashes_become_underscores_for_reconstruct_and_batch(tmp_path):
    from ctdip.cli._options import parse_set
    from ctdip.core.data.simulate import simulate
    from ctdip.workflows.batch import recorded_settings, requested_settings
    from ctdip.workflows.reconstruct import reconstruct

    assert parse_set(["log-every=2"]) == {"log_every": 2}
    assert resolve_method("cgls", {"log-every": 2, " iterations ": 4})[5] == {"iterations": 4, "log_every": 2}
    assert requested_settings("cgls", {"log-every": 2})["params"] == {"iterations": 30, "log_every": 2}
    assert requested_settings("aseq", {"inner": 4})["params"] == requested_settings("aseq", {"block-steps": 4})["params"]
    simulate(tmp_path / "scan", phantom="shepp-logan", geometry="fan", size=16, angles=8, noise=0.02)
    rs = reconstruct(tmp_path / "scan", "cgls", {"log-every": 2, "iterations": 3}, tmp_path / "run")
    assert rs.config["params"] == {"iterations": 3, "log_every": 2}
    assert rs.config["overrides"] == {"log_every": 2, "iterations": 3}
    # a run recorded under an old name compares equal to the same settings under the new one
    old_cfg = {"method": "aseq", "params": {**requested_settings("aseq")["params"]}}
    old_cfg["params"]["inner"] = old_cfg["params"].pop("block_steps")
    assert recorded_settings(old_cfg)["params"] == requested_settings("aseq")["params"]


def test_engine_options_are_declared_once():
    defaults = EngineConfig.param_defaults()
    assert EngineConfig.from_params(defaults) == EngineConfig()
    assert set(defaults) <= set(get_method("vanilla")().params)
    assert set(EngineConfig.param_sources()) <= set(get_method("vanilla")().sources)
    cfg = EngineConfig.from_params({**defaults, "grad_clip": 0, "checkpoint_every": None, "log_every": 0, "lr": 1})
    assert (cfg.grad_clip, cfg.checkpoint_every, cfg.log_every, cfg.lr) == (None, 0, 1, 1.0)
    assert "betas" not in defaults and "ssim_every_log" not in defaults  # internal, not method parameters


def test_auto_is_kept_where_the_rule_allows_it():
    assert get_method("tv")(tv_weight="auto").params["tv_weight"] == "auto"  # README: --set tv_weight=auto
    assert get_method("pdhg-tv")(tv_weight=0.01).params["tv_weight"] == 0.01
    with pytest.raises(UserError, match=r"--lr: must be a finite number in \(0, 1\], got 'auto'"):
        get_method("tv")(lr="auto")  # a numeric parameter's rule judges a string: the message names the flag


def test_cli_old_name_same_recon_and_resume_compares_current_names(run_cli, tmp_path, capsys, one_thread):
    from ctdip.core.data.simulate import simulate
    from ctdip.dip.runs import RunFolder

    simulate(tmp_path / "scan", phantom="shepp-logan", geometry="fan", size=16, angles=8, noise=0.02)
    base = ["reconstruct", tmp_path / "scan", "-m", "aseq", "-n", "4", "--network", "tiny", "--seed", "2", "-q"]
    assert run_cli(*base, "--set", "inner=2", "-o", tmp_path / "old") == 0
    assert run_cli(*base, "--set", "block-steps=2", "-o", tmp_path / "new") == 0
    assert (tmp_path / "old" / "recon.tif").read_bytes() == (tmp_path / "new" / "recon.tif").read_bytes()
    cfg = RunFolder(tmp_path / "old").read_config()
    assert cfg["params"]["block_steps"] == 2 and "inner" not in cfg["params"] and cfg["overrides"]["block_steps"] == 2
    capsys.readouterr()
    assert run_cli("reconstruct", "--resume", tmp_path / "old", "--set", "inner=3", "-q") == 2
    err = capsys.readouterr().err
    assert "--set inner 3: --resume continues the run with its recorded settings (inner = 2)" in err
    assert run_cli("reconstruct", "--resume", tmp_path / "old", "--set", "inner=2", "-q") == 0  # finished: a note
