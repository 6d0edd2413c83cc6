"""Educated warm starts for DIP (EDIP): supervised pretraining of the U-Net on synthetic ellipses.

Protocol (Barbano et al. 2022, "An educated warm start for deep image prior-based micro CT
reconstruction", IEEE TCI), as implemented here for *the target geometry* ``(A, FBP)``:

1. **Phantoms.** Random ellipses (2D) / ellipsoids (3D) drawn on the fly with
   ``ctdip.core.data.phantoms.random_ellipses``: random centre, semi-axes, orientation and intensity,
   intensities ``~ U(-0.4, 1)`` summed where ellipses overlap and the image normalised to [0, 1];
   about 40 ellipses per image.
2. **Data.** ``y = A x + eta`` with white Gaussian noise ``eta ~ N(0, (0.05 * mean|A x|)^2)``
   (5 % relative noise), computed in batches with the project's own ``RayTransform`` on the
   training device: ``A`` is applied to a batch ``(N, z, y, x)`` in one call.
3. **Input / target.** The network input is the FBP/FDK of the noisy data,
   ``x_fbp = FBP(y)`` (the same filter ``Problem.from_scan`` uses, so that in ``reconstruct`` the
   EDIP method feeds ``problem.x_init`` to a network trained on exactly that kind of input). The
   loss is the MSE to the phantom: ``L(theta) = mean || f_theta(x_fbp) - x ||^2``.
4. **Intensity convention.** ``Problem`` scales real data by ``s = 1 / q99.9(FBP)`` so its images
   are O(1). Each simulated pair ``(x_fbp, x)`` is multiplied by its own ``s_i = 1/q99.9(x_fbp,i)``
   (``scale="auto"``), so the network sees inputs with exactly the statistics of
   ``problem.x_init`` and outputs images in the problem's scaled units.
5. **Optimiser.** Adam with a one-cycle learning-rate schedule (cosine warm-up over the first
   30 % of the steps from ``lr/25`` to ``lr``, then cosine annealing to ``lr/25e4``), mini-batches,
   a number of epochs of ``samples`` fresh draws (or an explicit number of steps).
6. **Validation and selection.** Every ``val_every`` steps: the MSE on a fixed set of validation
   ellipses and the PSNR on a Shepp–Logan phantom simulated with the same geometry and noise.
   ``best.pt`` keeps the best Shepp–Logan PSNR, ``step_NNNNNN.pt`` are periodic checkpoints.
   With ``select="rise-time"`` (the paper's protocol), every periodic checkpoint is fine-tuned as
   a DIP on the Shepp–Logan data, ``min_theta ||A f_theta(x_fbp) - y||^2`` with Adam (lr 1e-4) for
   ``select_iters`` iterations, and the checkpoint that first reaches the common target PSNR
   (the lowest of the candidates' steady PSNRs, minus 0.1 dB) is written as the result.

Data generation is deterministic per step (the generator of step ``k`` is seeded with
``(seed, k)``), so ``--resume`` continues exactly where an interrupted run stopped.

Warm-start cache: :func:`ensure_warm_start` looks for
``$CTDIP_CACHE_DIR/warmstarts/<geometry_key>_<archhash>.pt`` (default cache dir
``$XDG_CACHE_HOME/ctdip`` or ``~/.cache/ctdip``) and, when missing, announces and runs a short
pretraining (:data:`WARM_START_DEFAULTS`) and caches the result. Nothing is ever downloaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ctdip.core.io import atomic_write_bytes, atomic_write_text, cache_dir
from ctdip.errors import UserError

Progress = Callable[[int, int, dict], None]

#: Short pretraining run by :func:`ensure_warm_start` when no cached warm start exists.
WARM_START_DEFAULTS: dict[str, Any] = {"steps": 300, "batch_size": 8, "lr": 1e-3, "val_every": 100,
                                       "checkpoint_every": 0}


@dataclass
class PretrainConfig:
    """Hyperparameters of a pretraining run (all recorded in the weights file's ``data_spec``)."""

    samples: int = 2000  # fresh phantoms per epoch
    epochs: int = 1
    steps: int | None = None  # overrides samples * epochs / batch_size
    batch_size: int = 8
    lr: float = 1e-3  # peak learning rate of the one-cycle schedule
    noise: float = 0.05  # white noise std relative to mean |A x|
    n_ellipses: int = 40
    fbp_filter: str = "ram-lak"
    scale: str = "auto"  # "auto": s_i = 1/q99.9(FBP_i) as Problem does; "none"
    val_samples: int = 16
    val_every: int = 50
    checkpoint_every: int = 200  # periodic checkpoints (0: none)
    select: str = "psnr"  # psnr | rise-time | last
    select_iters: int = 300
    select_lr: float = 1e-4
    seed: int = 0

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(self.samples * self.epochs / self.batch_size))

    def validate(self) -> None:
        from ctdip.core.validate import LEARNING_RATE, NONNEG, NONNEG_INT, POSITIVE_INT, Rule

        for opt, name, rule in (("--samples", "samples", POSITIVE_INT), ("--epochs", "epochs", POSITIVE_INT),
                                ("--steps", "steps", Rule(integer=True, minimum=1, optional=True)),
                                ("--batch-size", "batch_size", POSITIVE_INT), ("--lr", "lr", LEARNING_RATE),
                                ("--noise", "noise", NONNEG), ("--ellipses", "n_ellipses", POSITIVE_INT),
                                ("--val-every", "val_every", POSITIVE_INT),
                                ("--checkpoint-every", "checkpoint_every", NONNEG_INT),
                                ("--select-iters", "select_iters", POSITIVE_INT),
                                ("--set select_lr", "select_lr", LEARNING_RATE)):
            setattr(self, name, rule(getattr(self, name), opt))
        if self.select not in ("psnr", "rise-time", "last"):
            raise UserError(f"unknown --select '{self.select}'; choose psnr, rise-time or last")
        if self.scale not in ("auto", "none"):
            raise UserError(f"unknown --scale '{self.scale}'; choose auto or none")


@dataclass
class PretrainResult:
    path: Path
    history: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_psnr: float | None = None
    selected: str = ""
    samples_per_s: float = 0.0
    data_samples_per_s: float = 0.0
    wall_s: float = 0.0


# --------------------------------------------------------------------------- helpers
def arch_hash(arch: dict) -> str:
    """Stable short hash of an architecture dict."""
    return hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _geometry_key(geometry, volume) -> str:
    from ctdip.networks import weights as W

    return W.geometry_key(geometry, volume)


def warm_start_path(geometry, volume, arch: dict) -> Path:
    return cache_dir() / "warmstarts" / f"{_geometry_key(geometry, volume)}_{arch_hash(arch)}.pt"


def _net_input(v: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, z, y, x) volumes -> (N, 1, H, W) in 2D or (N, 1, D, H, W) in 3D."""
    return v if dim == 2 else v.unsqueeze(1)


def _from_net(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x if dim == 2 else x.squeeze(1)


class EllipseSimulator:
    """Batched (FBP of noisy data, phantom) pairs for one geometry, on the operator's device.

    ``sample(n, generator)`` returns ``(x_fbp, x)``, both ``(n, z, y, x)``, scaled per sample as
    :class:`Problem` scales real data (see the module docstring).
    """

    def __init__(self, A, geometry, volume, noise: float = 0.05, n_ellipses: int = 40,
                 fbp_filter: str = "ram-lak", scale: str = "auto", device: str | torch.device = "cpu"):
        self.A, self.geometry, self.volume = A, geometry, volume
        self.noise, self.n_ellipses, self.fbp_filter, self.scale = noise, n_ellipses, fbp_filter, scale
        self.device = torch.device(device)
        self.shape = tuple(int(s) for s in volume.shape)
        self.dim = 2 if self.shape[0] == 1 else 3
        self._batched_fbp: bool | None = None

    def phantoms(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from ctdip.core.data.phantoms import random_ellipses

        shape = self.shape[1:] if self.dim == 2 else self.shape
        x = random_ellipses(n, shape, generator=generator, device=self.device, n_ellipses=self.n_ellipses)
        x = x.to(self.device, torch.float32)
        return x.reshape(n, *self.shape)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """FBP/FDK of a batch (N, angles, rows, cols) -> (N, z, y, x); one call when supported."""
        from ctdip.core.operators import fbp

        n = y.shape[0]
        if self._batched_fbp is not False:
            try:
                out = fbp(y, self.geometry, self.volume, filter=self.fbp_filter)
                if tuple(out.shape) == (n, *self.shape):
                    self._batched_fbp = True
                    return out.to(self.device)
            except Exception:
                if self._batched_fbp:
                    raise
            self._batched_fbp = False
        return torch.stack([fbp(y[i], self.geometry, self.volume, filter=self.fbp_filter).reshape(self.shape)
                            for i in range(n)]).to(self.device)

    def simulate(self, x: torch.Tensor, generator: torch.Generator, with_data: bool = False):
        """Noisy data and FBP for phantoms ``x`` (N, z, y, x); returns scaled ``(x_fbp, x)``
        (and the scaled noisy data ``y`` as a third item when ``with_data``)."""
        with torch.no_grad():
            y = self.A(x)
            if self.noise > 0:
                amp = y.abs().flatten(1).mean(1).reshape(-1, *([1] * (y.dim() - 1)))
                eta = torch.randn(y.shape, generator=generator, device=generator.device, dtype=y.dtype)
                y = y + self.noise * amp * eta.to(y.device)
            xf = self.fbp(y)
            if self.scale == "auto":
                flat = xf.flatten(1)
                step = max(1, flat.shape[1] // 1_000_000)
                q = torch.quantile(flat[:, ::step].float(), 0.999, dim=1)
                s = torch.where(q > 0, 1.0 / q, torch.ones_like(q)).reshape(-1, *([1] * (xf.dim() - 1)))
                xf, x = xf * s, x * s
                y = y * s.reshape(-1, *([1] * (y.dim() - 1)))
            return (xf, x, y) if with_data else (xf, x)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.simulate(self.phantoms(n, generator), generator)

    def shepp_logan(self, generator: torch.Generator, with_data: bool = False):
        """The validation pair: Shepp–Logan phantom of the volume's grid, same noise and scaling."""
        from ctdip.core.data.phantoms import shepp_logan

        shape = self.shape[1:] if self.dim == 2 else self.shape
        x = torch.as_tensor(shepp_logan(shape), dtype=torch.float32, device=self.device)
        return self.simulate(x.reshape(1, *self.shape), generator, with_data)


def _generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63 - 1))
    return g


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    from ctdip.core.metrics import psnr

    return psnr(x, ref)


# --------------------------------------------------------------------------- weights io
def _save_weights(path: Path, net: torch.nn.Module, arch: dict, geometry, volume, spec: dict,
                  extra: dict) -> None:
    from ctdip.networks import weights as W

    W.save_weights(path, net.state_dict(), arch, kind="unet", geometry_key=_geometry_key(geometry, volume),
                   data_spec=spec, extra=extra)


def _save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _write_log(path: Path, history: list[dict]) -> None:
    cols = ["step", "samples", "lr", "train_loss", "val_loss", "val_psnr", "samples_per_s", "time_s"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _one_cycle(net: torch.nn.Module, lr: float, total_steps: int):
    """Adam with the one-cycle schedule (peak ``lr``, 30 % warm-up) used by both trainers."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.3,
                                                cycle_momentum=False)
    return opt, sched


def _optimiser_step(opt, sched, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def _load_training_state(state_path: Path, device: torch.device, arch: dict, spec: dict, net: torch.nn.Module,
                         opt, sched, *, what: str, mismatch: str) -> dict:
    """Restore network, optimiser and schedule from ``state.pt`` (``--resume``) and return the state.

    A missing file or one made with another ``arch`` / ``spec`` is a :class:`UserError`."""
    if not state_path.exists():
        raise UserError(f"nothing to resume: no {what} state found", path=state_path)
    st = torch.load(state_path, map_location=device, weights_only=True)
    if st.get("arch") != arch or st.get("spec") != spec:
        raise UserError(mismatch, path=state_path)
    net.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    return st


def _save_training_state(ckdir: Path, net: torch.nn.Module, opt, sched, **fields: Any) -> None:
    """Write ``ckdir/state.pt`` (network, optimiser, schedule and ``fields``) and ``ckdir/log.csv``
    (from ``fields["history"]``)."""
    _save_state(ckdir / "state.pt", {"model": net.state_dict(), "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), **fields})
    _write_log(ckdir / "log.csv", fields["history"])


def checkpoint_dir(out: str | Path) -> Path:
    """Folder beside ``out`` holding ``state.pt`` (resume), ``best.pt``, ``step_NNNNNN.pt``, ``log.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".ckpt")


# --------------------------------------------------------------------------- pretraining
def pretrain(
    A,
    geometry,
    volume,
    arch: dict,
    out: str | Path,
    config: PretrainConfig | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> PretrainResult:
    """Pretrain ``build_network(arch)`` on ellipses for ``(geometry, volume)``; write ``out``.

    ``A`` is a ``RayTransform`` for ``(geometry, volume)`` (its device is the training device
    unless ``device`` is given). Returns the history (one row per validation) and the selection.
    """
    from ctdip.networks import build_network

    cfg = config or PretrainConfig()
    cfg.validate()
    out = Path(out)
    dev = torch.device(device) if device is not None else _operator_device(A)
    ckdir = checkpoint_dir(out)
    sim = EllipseSimulator(A, geometry, volume, cfg.noise, cfg.n_ellipses, cfg.fbp_filter, cfg.scale, dev)
    dim = sim.dim
    total = cfg.total_steps

    torch.manual_seed(cfg.seed)
    net = build_network(arch).to(dev)
    opt, sched = _one_cycle(net, cfg.lr, total)
    spec = {"phantoms": "random_ellipses", "n_ellipses": cfg.n_ellipses, "noise_rel": cfg.noise,
            "input": f"fbp:{cfg.fbp_filter}", "scale": cfg.scale, "batch_size": cfg.batch_size,
            "steps": total, "lr": cfg.lr, "schedule": "one-cycle", "seed": cfg.seed,
            "volume_shape": list(sim.shape)}

    # fixed validation data
    gval = _generator(cfg.seed, -1, dev)
    val_in, val_x = sim.sample(cfg.val_samples, gval)
    sl_in, sl_x = sim.shepp_logan(_generator(cfg.seed, -2, dev))

    step, history, best = 0, [], {"psnr": -math.inf, "step": None}
    samples_done, gen_s, train_s = 0, 0.0, 0.0
    state_path = ckdir / "state.pt"
    if resume:
        st = _load_training_state(state_path, dev, arch, spec, net, opt, sched, what="pretraining",
                                  mismatch="the saved pretraining state was made with other settings "
                                           "(architecture, data or schedule); start afresh without --resume")
        step, history, best = int(st["step"]), list(st["history"]), dict(st["best"])
        samples_done = int(st["samples"])
        gen_s, train_s = float(st.get("gen_s", 0.0)), float(st.get("train_s", 0.0))
        if log:
            log(f"resuming pretraining at step {step}/{total}")

    def validate() -> dict:
        net.eval()
        with torch.no_grad():
            vl = 0.0
            for i in range(0, cfg.val_samples, cfg.batch_size):
                p = _from_net(net(_net_input(val_in[i:i + cfg.batch_size], dim)), dim)
                vl += float(((p - val_x[i:i + cfg.batch_size]) ** 2).sum())
            vl /= val_x.numel()
            sl = _from_net(net(_net_input(sl_in, dim)), dim)
            vp = _psnr(sl[0], sl_x[0])
        net.train()
        return {"val_loss": vl, "val_psnr": vp}

    def save_state() -> None:
        _save_training_state(ckdir, net, opt, sched, step=step, history=history, best=best, samples=samples_done,
                             arch=arch, spec=spec, gen_s=gen_s, train_s=train_s)

    def extra(tag: str) -> dict:
        return {"step": step, "tag": tag, "best_step": best["step"], "val_psnr_shepp_logan": best["psnr"]}

    ckdir.mkdir(parents=True, exist_ok=True)
    if step == 0 and not history:
        r = {"step": 0, "samples": 0, "lr": float(sched.get_last_lr()[0]), "train_loss": None,
             **validate(), "samples_per_s": 0.0, "time_s": 0.0}
        history.append(r)
    net.train()
    t_start = time.perf_counter() - gen_s - train_s
    run_loss, run_n = 0.0, 0
    while step < total:
        t0 = time.perf_counter()
        xin, xt = sim.sample(cfg.batch_size, _generator(cfg.seed, step, dev))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        pred = _from_net(net(_net_input(xin, dim)), dim)
        loss = torch.mean((pred - xt) ** 2)
        _optimiser_step(opt, sched, loss)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        gen_s += t1 - t0
        train_s += t2 - t1
        step += 1
        samples_done += cfg.batch_size
        run_loss += float(loss.detach())
        run_n += 1
        row = {"step": step, "samples": samples_done, "lr": float(sched.get_last_lr()[0]),
               "train_loss": run_loss / run_n, "samples_per_s": samples_done / max(gen_s + train_s, 1e-9)}
        do_val = (cfg.val_every > 0 and step % cfg.val_every == 0) or step == total
        if do_val:
            row.update(validate())
            row["time_s"] = time.perf_counter() - t_start
            history.append(row)
            run_loss, run_n = 0.0, 0
            if row["val_psnr"] > best["psnr"]:
                best = {"psnr": row["val_psnr"], "step": step}
                _save_weights(ckdir / "best.pt", net, arch, geometry, volume, spec, extra("best"))
        if cfg.checkpoint_every > 0 and (step % cfg.checkpoint_every == 0 or step == total):
            _save_weights(ckdir / f"step_{step:06d}.pt", net, arch, geometry, volume, spec, extra("periodic"))
        if do_val or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0):
            save_state()
        if progress is not None:
            progress(step, total, row)
    _save_weights(ckdir / "last.pt", net, arch, geometry, volume, spec, extra("last"))
    save_state()

    # selection
    selected = "last"
    src = ckdir / "last.pt"
    if cfg.select == "psnr" and (ckdir / "best.pt").exists():
        selected, src = f"best Shepp-Logan PSNR (step {best['step']})", ckdir / "best.pt"
    elif cfg.select == "rise-time":
        cands = sorted(ckdir.glob("step_*.pt")) or [ckdir / "last.pt"]
        if (ckdir / "best.pt").exists():
            cands.append(ckdir / "best.pt")
        src, rt = select_by_rise_time(cands, A, sim, cfg, dev, log=log)
        selected = f"shortest rise time on Shepp-Logan ({src.name}, {rt})"
    atomic_write_bytes(out, src.read_bytes())
    n_samp = samples_done
    return PretrainResult(path=out, history=history, best_step=best["step"],
                          best_psnr=None if best["step"] is None else best["psnr"], selected=selected,
                          samples_per_s=n_samp / max(gen_s + train_s, 1e-9),
                          data_samples_per_s=n_samp / max(gen_s, 1e-9), wall_s=gen_s + train_s)


def _operator_device(A) -> torch.device:
    for name in ("device",):
        d = getattr(A, name, None)
        if d is not None:
            return torch.device(d)
    return torch.device("cpu")


# --------------------------------------------------------------------------- rise-time selection
def dip_finetune_curve(net: torch.nn.Module, A, x_in: torch.Tensor, y: torch.Tensor, ref: torch.Tensor,
                       iters: int, lr: float = 1e-4, dim: int = 2) -> list[float]:
    """PSNR curve of a DIP fine-tuning ``min ||A f(x_in) - y||^2`` (Adam) started from ``net``."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    inp = _net_input(x_in, dim)
    curve = []
    for _ in range(iters):
        out = _from_net(net(inp), dim)
        loss = torch.mean((A(out) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(_psnr(out.detach()[0], ref[0]))
    return curve


def select_by_rise_time(candidates: list[Path], A, sim: EllipseSimulator, cfg: PretrainConfig,
                        device: torch.device, log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """Pick the checkpoint whose DIP fine-tuning on Shepp–Logan rises fastest (EDIP's protocol).

    Every candidate is fine-tuned for ``cfg.select_iters`` iterations; the common target is the
    lowest steady PSNR (median of the last 10 %) among the candidates, and the rise time is the
    first iteration within 0.1 dB of it. Ties go to the higher steady PSNR.
    """
    from ctdip.core.metrics import rise_time, steady_psnr
    from ctdip.networks import weights as W

    x_in, x_sl, y = sim.shepp_logan(_generator(cfg.seed, -3, device), with_data=True)
    curves = {}
    for c in candidates:
        net = W.build_from_weights(W.load_weights(c, kind="unet"), c).to(device)
        curves[c] = dip_finetune_curve(net, A, x_in, y, x_sl, cfg.select_iters, cfg.select_lr, sim.dim)
    steadies = {c: steady_psnr(v) for c, v in curves.items()}
    target = min(steadies.values())
    rts = {c: rise_time(range(1, len(v) + 1), v, target) or len(v) + 1 for c, v in curves.items()}
    best = min(candidates, key=lambda c: (rts[c], -steadies[c]))
    if log:
        for c in candidates:
            log(f"  {c.name}: rise time {rts[c]} it, steady PSNR {steadies[c]:.2f} dB")
    return best, f"rise time {rts[best]} it to {target - 0.1:.2f} dB"


# --------------------------------------------------------------------------- warm-start cache
def _problem_geometry(problem) -> tuple[Any, Any]:
    A = problem.A
    geometry = getattr(A, "geometry", None)
    if geometry is None:
        raise ValueError("problem.A has no .geometry; cannot pretrain a warm start for it")
    volume = getattr(A, "volume", None) or problem.volume
    return geometry, volume


def pretrain_for_problem(problem, arch: dict, out: str | Path, config: PretrainConfig | None = None,
                         **kw) -> PretrainResult:
    """:func:`pretrain` on the geometry of ``problem`` (reuses its operator and device)."""
    geometry, volume = _problem_geometry(problem)
    return pretrain(problem.A, geometry, volume, arch, out, config, device=problem.device, **kw)


def ensure_warm_start(problem, arch: dict, quiet: bool = False, **opts: Any) -> Path:
    """Path of cached EDIP weights for ``problem``'s geometry and ``arch``; pretrain them if missing.

    ``opts`` override :data:`WARM_START_DEFAULTS` / :class:`PretrainConfig` fields (``steps``,
    ``batch_size``, ``lr``, ``seed`` ...); ``progress=`` and ``log=`` callables are passed on.
    The announcement goes to stderr unless ``quiet``.
    """
    geometry, volume = _problem_geometry(problem)
    path = warm_start_path(geometry, volume, arch)
    if path.exists():
        return path
    progress = opts.pop("progress", None)
    log = opts.pop("log", None)
    fields = set(PretrainConfig.__dataclass_fields__)
    unknown = set(opts) - fields
    if unknown:
        raise TypeError(f"unknown pretraining options: {', '.join(sorted(unknown))}")
    cfg = replace(PretrainConfig(), **{**WARM_START_DEFAULTS, **opts})
    if not quiet:
        sys.stderr.write(f"no cached EDIP warm start for this geometry and network; pretraining one "
                         f"({cfg.total_steps} steps x {cfg.batch_size} ellipse phantoms), cached as {path}\n")
        sys.stderr.flush()
        from ctdip.core.estimate import StepEstimate

        estimate, shown = StepEstimate("warm-start pretraining steps", "step"), progress or _line_progress

        def progress(step: int, total: int, row: dict) -> None:  # the lines, and one estimate
            shown(step, total, row)
            estimate(step, total)
    pretrain_for_problem(problem, arch, path, cfg, progress=progress, log=log)
    shutil.rmtree(checkpoint_dir(path), ignore_errors=True)
    return path


def _line_progress(step: int, total: int, row: dict) -> None:
    """One stderr line per validation (used by :func:`ensure_warm_start` inside ``reconstruct``)."""
    if row.get("val_psnr") is not None:
        sys.stderr.write(f"  warm start step {step}/{total}: Shepp-Logan PSNR {row['val_psnr']:.2f} dB, "
                         f"{row.get('samples_per_s', 0):.1f} samples/s\n")
        sys.stderr.flush()


def config_dict(cfg: PretrainConfig) -> dict:
    return asdict(cfg)
