"""The one supervised training loop of ctdip (EDIP pretraining, the DRUNet denoiser), with its files.

A :class:`TrainingTask` supplies the network, a batch sampler, a loss and a validation function;
a :class:`CheckpointPolicy` says when to validate and checkpoint and what counts as best.
:func:`train` runs, for steps ``k = k0 + 1 .. K``::

    batch_k = sample(G(seed, k - 1))            # generator seeded by (seed, step): resumable
    theta  <- Adam(theta, grad loss(f_theta, batch_k)),  lr_k from the one-cycle schedule
    every val_every steps and at k = K:  row <- validate(f_theta);  best.pt when row[best_key] improves
    every checkpoint_every steps:        step_NNNNNN.pt (and at k = K with periodic_at_end)
    at each validation or periodic checkpoint: state.pt + log.csv   (--resume restarts there)

and at the end ``last.pt`` and a final ``state.pt``. The one-cycle schedule (Smith 2018): a cosine
warm-up over the first 30 % of the steps from ``lr/25`` to ``lr``, then a cosine annealing to
``lr/25e4`` (``torch.optim.lr_scheduler.OneCycleLR``, no momentum cycling).

The training folder ``<out>.ckpt/`` beside the output (:func:`checkpoint_dir`) holds ``state.pt``
(network, optimiser, schedule, step, history, best, samples, the ``arch`` and data ``spec`` a
resume must match, and the seconds spent generating data ``gen_s`` and in optimiser steps
``train_s``), ``best.pt``, ``step_NNNNNN.pt``, ``last.pt`` and ``log.csv``: one row per validation
with ``step``, ``samples``, ``lr``, ``train_loss`` (the mean since the previous validation), the
validation's entries, ``samples_per_s`` (per second of data generation and optimiser steps) and
``time_s`` (seconds since the start, validation included). Each trainer then writes its output
from these files and returns a :class:`TrainingResult`.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ctdip.core.io import atomic_write_bytes, atomic_write_text
from ctdip.errors import UserError

#: ``progress(step, total, row)`` after every step (``row``: the step's log entries)
Progress = Callable[[int, int, dict], None]

LOG_COLUMNS = ["step", "samples", "lr", "train_loss", "val_loss", "val_psnr", "samples_per_s", "time_s"]


@dataclass(frozen=True)
class CheckpointPolicy:
    """When :func:`train` validates and writes checkpoints, and which validation is the best."""

    val_every: int  # validate every N steps (0: at the last step only)
    checkpoint_every: int  # periodic step_NNNNNN.pt every N steps (0: none)
    best_key: str  # the validation entry that ranks checkpoints, e.g. "val_psnr"
    maximize: bool  # True: a higher best_key is better
    best_name: str  # its name in the recorded best, {best_name: value, "step": k}
    periodic_at_end: bool = False  # also write step_<K>.pt at the last step

    def validates(self, step: int, total: int) -> bool:
        return (self.val_every > 0 and step % self.val_every == 0) or step == total

    def periodic(self, step: int) -> bool:
        return self.checkpoint_every > 0 and step % self.checkpoint_every == 0

    def improves(self, value: float, best: float) -> bool:
        return value > best if self.maximize else value < best


@dataclass
class TrainingTask:
    """What :func:`train` optimises: ``loss(net, sample(generator))`` over ``steps`` steps."""

    what: str  # "pretraining", "denoiser training": used in messages
    net: torch.nn.Module
    arch: dict  # build_network(arch) made net; recorded in state.pt
    spec: dict  # the data and schedule a resumed run must share; recorded in state.pt
    steps: int
    batch_size: int
    lr: float
    seed: int
    sample: Callable[[torch.Generator], Any]  # one batch, drawn with the step's generator
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    validate: Callable[[torch.nn.Module], dict]  # row entries; called in eval mode without gradients
    save_weights: Callable[[Path, str, TrainingState], None]  # (path, tag, state): a weights file
    first_row: dict = field(default_factory=dict)  # entries added to the step-0 validation row


@dataclass
class TrainingState:
    """Where a run stands (what ``state.pt`` records besides network, optimiser and schedule)."""

    step: int = 0
    history: list[dict] = field(default_factory=list)  # one row per validation
    best: dict = field(default_factory=dict)  # {best_name: value, "step": k or None}
    samples: int = 0
    gen_s: float = 0.0  # seconds generating batches
    train_s: float = 0.0  # seconds in optimiser steps

    @property
    def busy_s(self) -> float:
        return self.gen_s + self.train_s


@dataclass
class TrainingResult:
    """What a trainer returns; ``path`` is the weights file it wrote."""

    path: Path
    history: list[dict] = field(default_factory=list)  # one row per validation (the rows of log.csv)
    best_step: int | None = None  # step of best.pt (None: never validated after a step)
    best_value: float | None = None  # its validation figure (the policy's best_key)
    selected: str = ""  # which checkpoint was written to path, in words
    val: dict = field(default_factory=dict)  # a final validation of the written weights, if the trainer makes one
    samples_per_s: float = 0.0  # training samples per second of data generation + optimiser steps
    data_samples_per_s: float = 0.0  # ... per second of data generation alone
    wall_s: float = 0.0  # seconds of data generation + optimiser steps (validation excluded)

    @classmethod
    def from_state(cls, path: Path, state: TrainingState, policy: CheckpointPolicy, selected: str,
                   val: dict | None = None) -> TrainingResult:
        step = state.best.get("step")
        return cls(path=Path(path), history=state.history, best_step=step,
                   best_value=None if step is None else state.best[policy.best_name], selected=selected,
                   val=dict(val or {}), samples_per_s=state.samples / max(state.busy_s, 1e-9),
                   data_samples_per_s=state.samples / max(state.gen_s, 1e-9), wall_s=state.busy_s)


def checkpoint_dir(out: str | Path) -> Path:
    """Folder beside ``out`` holding ``state.pt`` (resume), ``best.pt``, ``step_NNNNNN.pt``, ``log.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".ckpt")


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of training step ``step`` (negative steps: fixed validation draws)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63 - 1))
    return g


def one_cycle(net: torch.nn.Module, lr: float, total_steps: int):
    """Adam with the one-cycle schedule (peak ``lr``, 30 % warm-up; module docstring)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.3,
                                                cycle_momentum=False)
    return opt, sched


# --------------------------------------------------------------------------- state files
def _load_state(path: Path, task: TrainingTask, device: torch.device, opt, sched) -> TrainingState:
    """Restore network, optimiser and schedule from ``state.pt``; a missing file or one made with
    another ``arch`` / ``spec`` is a :class:`UserError`."""
    if not path.exists():
        raise UserError(f"nothing to resume: no {task.what} state found", path=path)
    st = torch.load(path, map_location=device, weights_only=True)
    if st.get("arch") != task.arch or st.get("spec") != task.spec:
        raise UserError(f"the saved {task.what} state was made with other settings (architecture, data or "
                        "schedule); start afresh without --resume", path=path)
    task.net.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    # states written before one trainer served both kept the denoiser's time as one "busy_s"
    return TrainingState(step=int(st["step"]), history=list(st["history"]), best=dict(st["best"]),
                         samples=int(st["samples"]), gen_s=float(st.get("gen_s", 0.0)),
                         train_s=float(st.get("train_s", st.get("busy_s", 0.0))))


def _save_state(ckdir: Path, task: TrainingTask, opt, sched, state: TrainingState) -> None:
    """Write ``ckdir/state.pt`` and ``ckdir/log.csv`` (atomically)."""
    buf = io.BytesIO()
    torch.save({"model": task.net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": state.step, "history": state.history, "best": state.best, "samples": state.samples,
                "arch": task.arch, "spec": task.spec, "gen_s": state.gen_s, "train_s": state.train_s}, buf)
    atomic_write_bytes(ckdir / "state.pt", buf.getvalue())
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in state.history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(ckdir / "log.csv", text.getvalue())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the loop
def train(task: TrainingTask, policy: CheckpointPolicy, ckdir: Path, device: torch.device, resume: bool = False,
          progress: Progress | None = None, log: Callable[[str], None] | None = None) -> TrainingState:
    """Run the loop of the module docstring; returns the final state (files in ``ckdir``)."""
    net, total = task.net, int(task.steps)
    opt, sched = one_cycle(net, task.lr, total)
    if resume:
        state = _load_state(ckdir / "state.pt", task, device, opt, sched)
        if log:
            log(f"resuming {task.what} at step {state.step}/{total}")
    else:
        state = TrainingState(best={policy.best_name: -math.inf if policy.maximize else math.inf, "step": None})
    ckdir.mkdir(parents=True, exist_ok=True)

    def validate() -> dict:
        net.eval()
        with torch.no_grad():
            row = task.validate(net)
        net.train()
        return row

    if state.step == 0 and not state.history:
        state.history.append({"step": 0, "samples": 0, "lr": float(sched.get_last_lr()[0]), **validate(),
                              **task.first_row})
    net.train()
    t_start = time.perf_counter() - state.busy_s
    run_loss, run_n = 0.0, 0
    while state.step < total:
        t0 = time.perf_counter()
        batch = task.sample(step_generator(task.seed, state.step, device))
        _sync(device)
        t1 = time.perf_counter()
        loss = task.loss(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        _sync(device)
        state.gen_s += t1 - t0
        state.train_s += time.perf_counter() - t1
        state.step += 1
        state.samples += task.batch_size
        run_loss += float(loss.detach())
        run_n += 1
        row = {"step": state.step, "samples": state.samples, "lr": float(sched.get_last_lr()[0]),
               "train_loss": run_loss / run_n, "samples_per_s": state.samples / max(state.busy_s, 1e-9)}
        validated = policy.validates(state.step, total)
        if validated:
            row.update(validate())
        row["time_s"] = time.perf_counter() - t_start
        if validated:
            state.history.append(row)
            run_loss, run_n = 0.0, 0
            if policy.improves(row[policy.best_key], state.best[policy.best_name]):
                state.best = {policy.best_name: row[policy.best_key], "step": state.step}
                task.save_weights(ckdir / "best.pt", "best", state)
        periodic = policy.periodic(state.step)
        if periodic or (policy.periodic_at_end and policy.checkpoint_every > 0 and state.step == total):
            task.save_weights(ckdir / f"step_{state.step:06d}.pt", "periodic", state)
        if validated or periodic:
            _save_state(ckdir, task, opt, sched, state)
        if progress is not None:
            progress(state.step, total, row)
    task.save_weights(ckdir / "last.pt", "last", state)
    _save_state(ckdir, task, opt, sched, state)
    return state
