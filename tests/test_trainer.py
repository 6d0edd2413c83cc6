"""The one training loop (ctdip.training.trainer) behind `ctdip pretrain` and `ctdip pretrain denoiser`."""

from __future__ import annotations

import pytest
import torch

from ctdip.training.trainer import CheckpointPolicy, TrainingResult, TrainingTask, checkpoint_dir, train

TIMING = {"samples_per_s", "time_s"}


def _pretrain(out, progress=None, resume=False):
    from test_pretrain import make_problem

    from ctdip.networks import network_preset
    from ctdip.training.pretrain import PretrainConfig, pretrain_for_problem

    cfg = PretrainConfig(steps=6, batch_size=2, val_every=3, checkpoint_every=2, val_samples=2, seed=4)
    return pretrain_for_problem(make_problem(32, views=10), network_preset("tiny", 2), out, cfg,
                                progress=progress, resume=resume)


def _denoiser(out, progress=None, resume=False):
    from ctdip.training.denoiser import DenoiserConfig, train_denoiser

    cfg = DenoiserConfig(size="tiny", patch=16, batch_size=3, steps=6, val_every=3, checkpoint_every=2,
                         n_walnuts=2, noise="mixed", seed=4)
    return train_denoiser(out, cfg, progress=progress, resume=resume)


TRAINERS = {"pretrain": _pretrain, "denoiser": _denoiser}


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_both_trainers_resume_bit_identically_and_return_one_result_type(name, tmp_path, one_thread):
    run = TRAINERS[name]
    full = run(tmp_path / "full.pt")

    def stop_at_3(step, total, row):  # state.pt is written at the validation of step 3
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "part.pt", progress=stop_at_3)
    part = run(tmp_path / "part.pt", resume=True)
    for f in ("last.pt", "best.pt", "step_000004.pt", "step_000006.pt"):
        a = torch.load(tmp_path / "full.ckpt" / f, weights_only=True)
        b = torch.load(tmp_path / "part.ckpt" / f, weights_only=True)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), f
    assert (tmp_path / "part.ckpt" / "step_000002.pt").exists()  # written before the interruption

    def plain(history):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in history]

    assert plain(part.history) == plain(full.history) and [r["step"] for r in full.history] == [0, 3, 6]
    # one result type for both trainers, filled the same way
    for res in (full, part):
        assert type(res) is TrainingResult and res.path.exists()
        assert res.best_step in (3, 6) and res.samples_per_s > 0 and res.wall_s > 0
        key = "val_psnr" if name == "pretrain" else "val_loss"
        pick = max if name == "pretrain" else min
        assert res.best_value == pick(r[key] for r in res.history[1:])
    assert part.best_step == full.best_step and part.best_value == full.best_value
    assert bool(full.val) == (name == "denoiser")  # the denoiser re-validates the file it wrote


def test_policy_checkpoints_best_and_resume_refusal(tmp_path):
    """A toy task (fit w to 3): validation and checkpoint steps, best by a minimised key, log.csv."""
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1, bias=False)
    saved: list[tuple[str, int, str]] = []

    def task(spec):
        return TrainingTask("toy training", net, {"name": "linear"}, spec, steps=7, batch_size=5, lr=0.1, seed=0,
                            sample=lambda g: torch.randn(5, 1, generator=g),
                            loss=lambda m, x: torch.mean((m(x) - 3 * x) ** 2),
                            validate=lambda m: {"val_loss": float((m.weight - 3).abs())},
                            save_weights=lambda p, tag, st: saved.append((p.name, st.step, tag)))

    policy = CheckpointPolicy(val_every=3, checkpoint_every=2, best_key="val_loss", maximize=False, best_name="err",
                              periodic_at_end=True)
    ck = checkpoint_dir(tmp_path / "toy.pt")
    st = train(task({"v": 1}), policy, ck, torch.device("cpu"))
    assert [r["step"] for r in st.history] == [0, 3, 6, 7]
    errs = [r["val_loss"] for r in st.history]
    assert errs[-1] < errs[0]  # it learns
    assert st.best == {"err": min(errs[1:]), "step": st.history[1 + errs[1:].index(min(errs[1:]))]["step"]}
    periodic = [(s, t) for n, s, t in saved if t == "periodic"]
    assert periodic == [(2, "periodic"), (4, "periodic"), (6, "periodic"), (7, "periodic")]  # 7: periodic_at_end
    assert saved[-1] == ("last.pt", 7, "last") and st.samples == 35
    assert len((ck / "log.csv").read_text().splitlines()) == 1 + 4
    from ctdip.errors import UserError

    with pytest.raises(UserError, match="saved toy training state was made with other settings"):
        train(task({"v": 2}), policy, ck, torch.device("cpu"), resume=True)
    with pytest.raises(UserError, match="nothing to resume: no toy training state"):
        train(task({"v": 1}), policy, checkpoint_dir(tmp_path / "none.pt"), torch.device("cpu"), resume=True)


def test_rise_time_fine_tuning_through_the_engine_equals_a_plain_adam_loop(one_thread):
    """The engine's fine-tune (ctdip.training.selection) is exactly Adam on mean (A f(x_fbp) - y)^2."""
    from test_pretrain import make_problem

    from ctdip.core.metrics import psnr
    from ctdip.core.problem import Problem
    from ctdip.dip.engine import make_adam
    from ctdip.networks import build_network, network_preset
    from ctdip.training.selection import finetune_curve
    from ctdip.training.simulator import EllipseSimulator

    p = make_problem(32, views=10)
    sim = EllipseSimulator(p.A, p.A.geometry, p.volume)
    x_in, x_sl, y = sim.shepp_logan(torch.Generator().manual_seed(1), with_data=True)
    arch = network_preset("tiny", 2)
    torch.manual_seed(0)
    net = build_network(arch)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    curve = finetune_curve(net, arch, Problem(A=p.A, y=y[0], volume=p.volume, x_init=x_in[0]), x_sl[0], 5, 1e-3)

    net.load_state_dict(start)  # the same by hand, with the engine's Adam (fused where torch has it)
    opt = make_adam(net.parameters(), lr=1e-3)
    ref = []
    for _ in range(5):
        out = net(x_in)
        loss = torch.mean((p.A(out) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref.append(psnr(out.detach()[0], x_sl[0]))
    assert curve == ref and curve[-1] > curve[0]
