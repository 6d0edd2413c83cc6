"""The one optimisation loop every DIP method shares, with its callbacks.

A method supplies a :class:`DIPModel` (network, input, an ``objective`` for one step and optional
``after_step`` / ``final_image`` hooks); :class:`Engine` runs::

    for t = t0+1 .. T:
        model.before_step(t)                          # e.g. draw this step's view subset
        L_t, x_t = model.objective(t)                 # x_t: the iterate (network output)
        theta <- Adam(theta, grad L_t), gradients clipped to ||g||_2 <= grad_clip
                 (optimizer adam, adamw, sgd; or lbfgs: one L-BFGS iteration with a strong-Wolfe
                  line search, history 10, no clipping, for methods with few parameters)
        model.after_step(t, x_t)                      # e.g. an auxiliary/dual update, z <- f(z)
        stop if model.stop_after(t)                   # a method's own stopping rule (aseq)
        callbacks: EMA, ES-WMV, best/min-loss picks, metrics row every n, checkpoint every M,
                   SIGTERM/SIGINT and the time budget; a one-line duration estimate after
                   the first steps when the run will take over a minute (ctdip.core.estimate)

Callbacks (each has a ``state_dict`` saved in the checkpoint, so a resumed run is bit-identical):

* **Learning-rate schedule** (``lr_schedule``): constant, or a cosine decay to 5 % (:func:`lr_factor`).
* **Output EMA**: ``x_ema <- beta x_ema + (1 - beta) x_t`` (``ema_decay`` beta, 0.99).
* **ES-WMV** (Wang et al. 2021, "Early stopping for deep image prior"; handbook Alg. 2): the
  windowed moving variance of the last W iterates,
  ``VAR_t = 1/W sum_{w<W} ||x_{t-w} - mean_W(x)||^2 / n`` (n voxels). The iterate of smallest
  VAR_t is the early-stopped pick (``recon_es.tif``); a new minimum counts as progress when
  ``VAR_t < (1 - delta) VAR_min``; with ``stop_early`` the run ends after ``patience`` iterations
  without progress.
* **Picks**: the minimum-loss iterate (EDIP, Barbano et al. 2022) and, with a reference, the
  peak-PSNR iterate (``recon_best.tif``).
* **Held-out views** (``--holdout``): the relative residual ``||A_h x - y_h||^2 / ||y_h||^2`` on
  views kept out of the fit, logged as ``holdout``: a no-reference quality signal.
  :class:`HoldoutStop` keeps the logged iterate of least held-out residual (the reference-free
  stopping point of ``output: holdout``); with ``stop_early`` the run ends after ``es_patience``
  iterations without a new minimum.
* **Checkpoints** every M iterations, at the end, on SIGTERM/SIGINT (then :class:`RunInterrupted`, a
  ``KeyboardInterrupt``)
  and at the time budget (then :class:`~ctdip.errors.TimeLimitReached`), written atomically.

Checkpoint (a plain dict, ``torch.load(weights_only=True)``-safe)::

    {"format": "ctdip-checkpoint/1", "method", "iteration", "total_iterations", "network_arch",
     "network" (state_dict), "z", "optimizer", "method_state", "engine_state", "rng", "history",
     "elapsed_s", "params"}
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable

import torch

from ctdip.dip.context import RunContext
from ctdip.errors import TimeLimitReached, UserError

if TYPE_CHECKING:
    from ctdip.core.problem import Problem

CHECKPOINT_FORMAT = "ctdip-checkpoint/1"


# ============================================================================ data types
class RunInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during a run, raised after the checkpoint of ``iteration`` was written."""

    def __init__(self, iteration: int, run_path=None, signum: int | None = None):
        self.iteration, self.run_path, self.signum = int(iteration), run_path, signum
        super().__init__(f"signal {signum}: checkpoint written at iteration {iteration}")



@dataclass
class StepOut:
    """What ``DIPModel.objective`` returns for one step."""

    loss: torch.Tensor  # scalar, differentiable
    image: torch.Tensor  # the iterate x_t, network-shaped (1, 1, *image_shape)
    data_fit: float | torch.Tensor = float("nan")
    reg: float | torch.Tensor = 0.0

    def plus(self, reg: torch.Tensor) -> "StepOut":
        """This data-term step with the regulariser ``reg`` added: ``loss = data_fit + reg``."""
        return StepOut(loss=self.loss + reg, image=self.image, data_fit=self.data_fit, reg=reg)


class DIPModel:
    """Interface the engine drives; ``ctdip.methods._dip.DIPMethod`` implements it.

    Attributes: ``network`` (nn.Module), ``arch`` (plain dict), ``z`` (input tensor, possibly a
    leaf with ``requires_grad``), ``name``.
    """

    name: str = "dip"
    network: torch.nn.Module
    arch: dict
    z: torch.Tensor

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr": lr}]

    def before_step(self, it: int, gen: torch.Generator) -> None:
        """Called before ``objective`` (e.g. to draw a random view subset with the seeded ``gen``)."""

    def objective(self, it: int, gen: torch.Generator) -> StepOut:  # pragma: no cover - interface
        raise NotImplementedError

    def logged_data_fit(self, image: torch.Tensor) -> float | None:
        """The data fit to log for a metrics row, when the step's own is only an estimate (view
        subsets); None: log the step's ``data_fit``."""
        return None

    def after_step(self, it: int, image: torch.Tensor, gen: torch.Generator) -> None:
        """Called after the optimiser step with the detached iterate (no gradients)."""

    def stop_after(self, it: int, out: dict) -> bool:
        """The method's own stopping rule (e.g. ``aseq``'s discrepancy principle): True ends the
        run after iteration ``it``; ``out`` has the step's ``loss``, ``data_fit`` and ``reg``."""
        return False

    @torch.no_grad()
    def final_image(self, engine: "Engine") -> torch.Tensor:
        """The returned reconstruction (default: the network at its final parameters)."""
        return self.network(self.z).detach()

    def method_state(self) -> dict:
        return {}

    def load_method_state(self, state: dict) -> None:
        pass


def _option(default: Any, convert: Callable[[Any], Any], source: str | None = None) -> Any:
    """A field of :class:`EngineConfig` that is also a parameter of every DIP method: its default,
    how a resolved parameter value becomes the field's value, and where the default comes from."""
    return field(default=default, metadata={"param": True, "convert": convert, "source": source})


@dataclass
class EngineConfig:
    """Options of the loop. The fields made by :func:`_option` are parameters of every DIP method
    (``--set KEY=VALUE``): :meth:`param_defaults`, :meth:`param_sources` and :meth:`from_params`
    read them from here, so a new engine option is declared once."""

    iterations: int = _option(2000, int)
    lr: float = _option(1e-3, float, "tuned here for the light network on CPU (handbook: 1e-4 with the paper "
                                     "network), benchmarks/results/methods.md")
    optimizer: str = _option("adam", str)
    grad_clip: float | None = _option(1.0, lambda v: float(v) if v else None)
    log_every: int = _option(10, lambda v: max(1, int(v)))
    checkpoint_every: int = _option(500, lambda v: int(v or 0))
    es_window: int = _option(100, int, "Wang et al. 2021 ES-WMV, W = 100")
    es_patience: int = _option(500, int, "tuned here (Wang et al. 2021 use P of the order of the window to 1000)")
    es_delta: float = _option(0.0, float)
    ema_decay: float = _option(0.99, float, "Liang et al. 2025 (self-guided DIP) output EMA")
    lr_schedule: str = _option("constant", str, "constant (cosine: decay to 5 % of lr, ctdip.dip.engine.lr_factor)")
    # not method parameters
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    ssim_every_log: bool = True

    @classmethod
    def _params(cls) -> list:
        return [f for f in fields(cls) if f.metadata.get("param")]

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """``{name: default}`` of the options that are method parameters."""
        return {f.name: f.default for f in cls._params()}

    @classmethod
    def param_sources(cls) -> dict[str, str]:
        """``{name: source}`` of the defaults that have one."""
        return {f.name: f.metadata["source"] for f in cls._params() if f.metadata["source"]}

    @classmethod
    def from_params(cls, params: dict) -> "EngineConfig":
        """The configuration of a method's resolved parameters (options it lacks keep their default)."""
        return cls(**{f.name: f.metadata["convert"](params.get(f.name, f.default)) for f in cls._params()})


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, it: int, total: int) -> float:
    """Learning-rate multiplier at iteration ``it`` of ``total``: 1 (``constant``) or the cosine
    decay ``0.05 + 0.95 (1 + cos(pi (it-1) / total)) / 2`` from 1 to 0.05 (``cosine``), which damps
    the late Adam oscillations (PSNR spikes) a constant rate leaves in the iterates."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.05 + 0.475 * (1.0 + math.cos(math.pi * (it - 1) / max(total, 1)))
    raise UserError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got '{schedule}'")


def make_adam(params, name: str = "adam", **kw) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (or ``AdamW``) with the fused kernel where torch has it for these
    tensors: one kernel for all parameters instead of a loop of small ops per tensor, 2.9-3.6x
    cheaper on CPU (``benchmarks/results/step.md``); the update is Adam's to float rounding. A torch
    or device without it gets the default implementation."""
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    params = list(params)  # a generator would be used up by a failed first attempt
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kw)


@dataclass
class EngineResult:
    image: torch.Tensor  # final reconstruction (network-shaped)
    picks: dict[str, torch.Tensor] = field(default_factory=dict)  # es, best, ema, min_loss
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


# ============================================================================ callbacks
class Callback:
    """One per-iteration feature of the loop; its state travels in the checkpoint."""

    name = "callback"

    def on_iteration(self, eng: "Engine", it: int, x: torch.Tensor, out: dict) -> bool:
        """Return True to stop the run after this iteration."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OutputEMA(Callback):
    """Exponential moving average of the iterates, ``x_ema <- beta x_ema + (1-beta) x_t``."""

    name = "ema"

    def __init__(self, decay: float):
        self.decay = float(decay)
        self.value: torch.Tensor | None = None

    def ready(self, it: int) -> bool:
        """Whether the EMA is a candidate output at iteration ``it``: its first iterate, where it
        started, weighs less than 5 % (``beta^t < 0.05``; 300 iterations at beta = 0.99)."""
        return self.value is not None and self.decay ** it < 0.05

    def on_iteration(self, eng, it, x, out):
        if self.value is None:
            self.value = x.clone()
        else:
            self.value.mul_(self.decay).add_(x, alpha=1 - self.decay)
        return False

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class EarlyStoppingWMV(Callback):
    """ES-WMV: windowed moving variance of the iterates (Wang et al. 2021), see module docstring."""

    name = "es"

    def __init__(self, window: int, patience: int, delta: float = 0.0, stop: bool = False):
        if window < 2:
            raise UserError(f"es_window must be at least 2, got {window}")
        self.window, self.patience, self.delta, self.stop = int(window), int(patience), float(delta), bool(stop)
        self.buffer: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.count = 0  # iterates seen
        self.var = float("nan")
        self.var_min = float("inf")
        self.ref_min = float("inf")  # minimum that last reset the patience counter
        self.best_iter: int | None = None
        self.best: torch.Tensor | None = None
        self.since = 0
        self.stopped_at: int | None = None

    def on_iteration(self, eng, it, x, out):
        # running per-voxel sums over the window (float64), updated in O(n) per iteration
        if self.buffer is None:
            self.buffer = torch.zeros((self.window, *x.shape), dtype=x.dtype, device=x.device)
            self.sum = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            self.sumsq = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        slot = self.count % self.window
        x64 = x.to(torch.float64)
        if self.count >= self.window:
            old = self.buffer[slot].to(torch.float64)
            self.sum.sub_(old)
            self.sumsq.sub_(old * old)
        self.sum.add_(x64)
        self.sumsq.add_(x64 * x64)
        self.buffer[slot].copy_(x)
        self.count += 1
        if self.count < self.window:
            return False
        mean = self.sum / self.window
        self.var = float((self.sumsq / self.window - mean * mean).clamp_min(0).mean())
        if self.var < self.var_min:
            self.var_min = self.var
            self.best_iter = it
            self.best = x.clone()
        if self.var < (1 - self.delta) * self.ref_min:
            self.ref_min = self.var
            self.since = 0
        else:
            self.since += 1
        if self.stop and self.since >= self.patience:
            self.stopped_at = it
            return True
        return False

    def state_dict(self):
        return {k: getattr(self, k, None) for k in
                ("buffer", "sum", "sumsq", "count", "var", "var_min", "ref_min", "best_iter", "best", "since", "stopped_at")}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


class Picks(Callback):
    """Minimum-loss iterate (EDIP) and, with a reference, the peak-PSNR iterate."""

    name = "picks"

    def __init__(self, reference: torch.Tensor | None):
        self.reference = reference
        self.data_range = float(reference.max() - reference.min()) if reference is not None else None
        self.min_loss = float("inf")
        self.min_loss_iter: int | None = None
        self.min_loss_image: torch.Tensor | None = None
        self.peak_psnr = -float("inf")
        self.peak_iter: int | None = None
        self.peak_image: torch.Tensor | None = None
        self.last_psnr = float("nan")

    def psnr(self, x: torch.Tensor) -> float:
        mse = float(((x.reshape(self.reference.shape) - self.reference) ** 2).mean())
        return float("inf") if mse == 0 else 10 * math.log10(self.data_range**2 / mse)

    def on_iteration(self, eng, it, x, out):
        loss = out["loss"]
        if loss < self.min_loss:
            self.min_loss, self.min_loss_iter, self.min_loss_image = loss, it, x.clone()
        if self.reference is not None:
            p = self.psnr(x)
            self.last_psnr = p
            if p > self.peak_psnr:
                self.peak_psnr, self.peak_iter, self.peak_image = p, it, x.clone()
        return False

    def state_dict(self):
        return {k: getattr(self, k) for k in ("min_loss", "min_loss_iter", "min_loss_image",
                                              "peak_psnr", "peak_iter", "peak_image", "last_psnr")}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


class HoldoutStop(Callback):
    """The reference-free stopping point: the logged iterate whose held-out-view residual
    ``||A_h x - y_h||^2 / ||y_h||^2`` is smallest (a network that has started to fit the noise
    predicts the views it never saw worse). Evaluated every ``every`` iterations, for the iterate
    and for the output EMA (``output: holdout-ema``; the EMA becomes a candidate once its first
    iterate weighs less than 5 %, ``beta^t < 0.05``: 300 iterations at beta = 0.99; in a shorter run
    ``holdout-ema`` returns the iterate pick). With ``stop`` the run ends once ``patience``
    iterations have passed without a new minimum."""

    name = "holdout"

    def __init__(self, every: int, patience: int, stop: bool = False):
        self.every, self.patience, self.stop = max(1, int(every)), int(patience), bool(stop)
        self.best = float("inf")
        self.best_iter: int | None = None
        self.image: torch.Tensor | None = None
        # the same choice among the output EMA's values (output: holdout-ema)
        self.ema_best = float("inf")
        self.ema_iter: int | None = None
        self.ema_image: torch.Tensor | None = None
        self.last: tuple[int, float] | None = None  # (iteration, residual of its iterate), read by the log row
        self.stopped_at: int | None = None

    def on_iteration(self, eng, it, x, out):
        if it % self.every and it != 1:
            return False
        r = holdout_residual(eng.problem, x)
        self.last = (it, r)
        if r < self.best:
            self.best, self.best_iter, self.image = r, it, x.clone()
        if eng.ema.ready(it):  # the EMA starts at the first iterate (OutputEMA.ready)
            ema = eng.ema.value
            r = holdout_residual(eng.problem, ema)
            if r < self.ema_best:
                self.ema_best, self.ema_iter, self.ema_image = r, it, ema.clone()
        last = max(self.best_iter or 0, self.ema_iter or 0)
        if self.stop and self.best_iter is not None and it - last >= self.patience:
            self.stopped_at = it
            return True
        return False

    def evidence(self, problem) -> dict:
        def num(v):
            return None if math.isinf(v) else v

        return {"rule": "logged iterate (holdout) or output-EMA value (holdout-ema) of least held-out-view "
                        "residual ||A_h x - y_h||^2 / ||y_h||^2",
                "iter": self.best_iter, "holdout_residual": num(self.best),
                "ema_iter": self.ema_iter, "ema_holdout_residual": num(self.ema_best),
                "held_out_views": int(problem.y_held.shape[0]), "fitted_views": int(problem.y.shape[0]),
                "evaluated_every": self.every, "stopped_at": self.stopped_at}

    def state_dict(self):
        return {k: getattr(self, k) for k in ("best", "best_iter", "image", "ema_best", "ema_iter", "ema_image",
                                              "stopped_at")}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


# ============================================================================ engine
class Engine:
    """Runs a :class:`DIPModel` on a Problem within a RunContext (see module docstring)."""

    def __init__(self, problem: Problem, ctx: RunContext, config: EngineConfig, *, method_name: str = "dip",
                 params: dict | None = None, extra_callbacks: list[Callback] | None = None,
                 loss_info: dict | None = None):
        self.problem, self.ctx, self.cfg = problem, ctx, config
        self.method_name = method_name
        self.params = dict(params or {})
        self.loss_info = dict(loss_info or {})
        ref = problem.reference
        self.reference = None if ref is None else problem.to_image(ref).to(problem.device)
        self.ema = OutputEMA(config.ema_decay)
        self.es = EarlyStoppingWMV(config.es_window, config.es_patience, config.es_delta,
                                   stop=bool(ctx.stop_early))
        self.picks = Picks(self.reference)
        self.callbacks: list[Callback] = [self.ema, self.es, self.picks, *(extra_callbacks or [])]
        self.holdout: HoldoutStop | None = None
        self.model_stopped_at: int | None = None  # the iteration at which the method's stop_after ended the run
        if problem.A_held is not None and problem.y_held is not None:
            self.holdout = HoldoutStop(config.log_every, config.es_patience, stop=bool(ctx.stop_early))
            self.callbacks.append(self.holdout)
        self.history: list[dict] = []
        self.iteration = 0
        self.elapsed_before = 0.0
        self._signal: int | None = None
        self.gen: torch.Generator | None = None

    # ------------------------------------------------------------------ helpers
    def _make_optimizer(self, model: DIPModel) -> torch.optim.Optimizer:
        groups = model.param_groups(self.cfg.lr)
        name = self.cfg.optimizer.lower()
        if name in ("adam", "adamw"):
            return make_adam(groups, name, lr=self.cfg.lr, betas=tuple(self.cfg.betas),
                             weight_decay=self.cfg.weight_decay)
        if name == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=0.9, weight_decay=self.cfg.weight_decay)
        if name == "lbfgs":  # one L-BFGS iteration per engine iteration (meant for few parameters)
            params = [p for g in groups for p in g["params"]]
            return torch.optim.LBFGS(params, lr=self.cfg.lr, max_iter=1, max_eval=25, history_size=10,
                                     line_search_fn="strong_wolfe")
        raise UserError(f"unknown optimizer '{self.cfg.optimizer}'; choose adam, adamw, sgd or lbfgs")

    def _rng_state(self) -> dict:
        st = {"torch": torch.get_rng_state(), "engine": self.gen.get_state()}
        if torch.cuda.is_available():
            st["cuda"] = torch.cuda.get_rng_state_all()
        return st

    def _set_rng_state(self, st: dict) -> None:
        torch.set_rng_state(st["torch"])
        self.gen.set_state(st["engine"])
        if "cuda" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda"])

    def checkpoint_dict(self, model: DIPModel, opt: torch.optim.Optimizer, elapsed: float) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "method": self.method_name,
            "iteration": self.iteration,
            "total_iterations": self.cfg.iterations,
            "network_arch": dict(model.arch),
            "network": {k: v.detach().clone() for k, v in model.network.state_dict().items()},
            "z": model.z.detach().clone(),
            "optimizer": opt.state_dict(),
            "method_state": model.method_state(),
            "engine_state": {cb.name: cb.state_dict() for cb in self.callbacks},
            "rng": self._rng_state(),
            "history": list(self.history),
            "elapsed_s": float(elapsed),
            "params": _plain_params(self.params),
            "loss": self.loss_info,
        }

    def save_checkpoint(self, model, opt, elapsed: float) -> None:
        run = self.ctx.run
        if run is not None:
            run.save_checkpoint(self.checkpoint_dict(model, opt, elapsed))

    def _restore(self, model: DIPModel, opt: torch.optim.Optimizer) -> bool:
        run = self.ctx.run
        if not self.ctx.resume or run is None:
            return False
        try:
            ck = run.load_checkpoint()
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot read checkpoint ({type(e).__name__})", path=run.file("checkpoint.pt")) from None
        if ck is None:
            return False
        path = run.file("checkpoint.pt")
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"not a ctdip checkpoint (expected format '{CHECKPOINT_FORMAT}')", path=path)
        if ck.get("method") != self.method_name:
            raise UserError(f"checkpoint is from method '{ck.get('method')}', not '{self.method_name}'", path=path)
        if ck.get("network_arch") != dict(model.arch):
            raise UserError("checkpoint network architecture differs from this run's", path=path)
        model.network.load_state_dict(ck["network"])
        with torch.no_grad():
            model.z.copy_(ck["z"].to(model.z.device))
        opt.load_state_dict(ck["optimizer"])
        model.load_method_state(ck["method_state"])
        for cb in self.callbacks:
            if cb.name in ck["engine_state"]:
                cb.load_state_dict(_to_device(ck["engine_state"][cb.name], self.problem.device))
        self._set_rng_state(ck["rng"])
        self.iteration = int(ck["iteration"])
        self.history = list(ck["history"])
        self.elapsed_before = float(ck["elapsed_s"])
        run.write_metrics(self.history)  # drop rows logged after the checkpoint
        return True

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            self._signal = signum

        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old[s] = signal.signal(s, handler)
            except (ValueError, OSError):
                pass
        return old

    @staticmethod
    def _restore_signals(old):
        for s, h in old.items():
            signal.signal(s, h)

    # ------------------------------------------------------------------ metrics
    def _row(self, it: int, out: dict, x: torch.Tensor, elapsed: float) -> dict:
        from ctdip.core.metrics import ssim

        row = {"iter": it, "loss": out["loss"], "data_fit": out["data_fit"], "reg": out["reg"],
               "wmv": self.es.var if self.es.count >= self.es.window else None,
               "time_s": round(elapsed, 4)}
        if self.reference is not None:
            row["psnr"] = self.picks.last_psnr
            if self.cfg.ssim_every_log:
                row["ssim"] = ssim(x.reshape(self.reference.shape)[0, 0], self.reference[0, 0],
                                   data_range=self.picks.data_range)
        if self.holdout is not None:  # HoldoutStop has evaluated this iterate when it was due
            last = self.holdout.last
            row["holdout"] = last[1] if last is not None and last[0] == it else holdout_residual(self.problem, x)
        return row

    def _lbfgs_step(self, model: DIPModel, opt: torch.optim.LBFGS, it: int) -> StepOut:
        """One L-BFGS iteration: the closure re-evaluates the objective at each line-search point
        (no gradient clipping: it would corrupt the curvature pairs); the step's iterate and loss
        are those of the first evaluation, at the parameters before the update (as for Adam)."""
        first: list[StepOut] = []

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            s = model.objective(it, self.gen)
            s.loss.backward()
            if not first:
                first.append(StepOut(loss=s.loss.detach(), image=s.image.detach(), data_fit=_f(s.data_fit), reg=_f(s.reg)))
            return s.loss

        opt.step(closure)
        return first[0]

    # ------------------------------------------------------------------ the loop
    def run(self, model: DIPModel) -> EngineResult:
        cfg = self.cfg
        device = self.problem.device
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(self.ctx.seed) + 7919)
        opt = self._make_optimizer(model)
        base_lrs = [float(g["lr"]) for g in opt.param_groups]
        lr_factor(cfg.lr_schedule, 1, cfg.iterations)  # refuse an unknown schedule before the loop
        resumed = self._restore(model, opt)
        run = self.ctx.run
        if run is not None and not resumed and self.iteration == 0 and run.file("metrics.csv").exists():
            run.write_metrics([])
        trainable = [p for g in opt.param_groups for p in g["params"]]
        t_start = time.perf_counter()
        limit = self.ctx.time_limit_s
        step_times: list[float] = []
        pending: list[dict] = []
        old = self._install_signals()
        stopped = False
        from ctdip.core.estimate import StepEstimate

        estimate = StepEstimate("iterations", "it", enabled=not self.ctx.quiet)

        def elapsed() -> float:
            return self.elapsed_before + (time.perf_counter() - t_start)

        def flush():
            if run is not None and pending:
                run.append_metrics(pending)
            pending.clear()

        try:
            while self.iteration < cfg.iterations and not stopped:
                if self._signal is not None:
                    flush()
                    self.save_checkpoint(model, opt, elapsed())
                    raise RunInterrupted(self.iteration, None if run is None else run.path, self._signal)
                t0 = time.perf_counter()
                it = self.iteration + 1
                opt.zero_grad(set_to_none=True)
                model.before_step(it, self.gen)
                if cfg.lr_schedule != "constant":  # the step size of this iteration (used by opt.step)
                    f = lr_factor(cfg.lr_schedule, it, cfg.iterations)
                    for g, lr0 in zip(opt.param_groups, base_lrs):
                        g["lr"] = lr0 * f
                if isinstance(opt, torch.optim.LBFGS):
                    step = self._lbfgs_step(model, opt, it)
                else:
                    step = model.objective(it, self.gen)
                    step.loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    opt.step()
                x = step.image.detach()
                model.after_step(it, x, self.gen)
                self.iteration = it
                out = {"loss": float(step.loss.detach()), "data_fit": _f(step.data_fit), "reg": _f(step.reg)}
                if not math.isfinite(out["loss"]):
                    raise UserError(f"--lr: the loss became {out['loss']} at iteration {it} (the optimisation "
                                    f"diverged at learning rate {cfg.lr:g}); use a smaller --lr")
                for cb in self.callbacks:
                    stopped = cb.on_iteration(self, it, x, out) or stopped
                if model.stop_after(it, out):
                    stopped, self.model_stopped_at = True, it
                if it % cfg.log_every == 0 or it == 1 or it == cfg.iterations or stopped:
                    full_fit = model.logged_data_fit(x)
                    if full_fit is not None:
                        out["data_fit"] = full_fit
                    row = self._row(it, out, x, elapsed())
                    self.history.append(row)
                    pending.append(row)
                    flush()
                self.ctx.report(it, cfg.iterations, self.history[-1] if self.history else out)
                estimate(it, cfg.iterations)
                step_times.append(time.perf_counter() - t0)
                if cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < cfg.iterations and not stopped:
                    self.save_checkpoint(model, opt, elapsed())
                if limit is not None and self.iteration < cfg.iterations and not stopped:
                    recent = step_times[-20:]
                    need = 2 * (sum(recent) / len(recent)) + 1.0
                    if elapsed() - self.elapsed_before + need >= float(limit):
                        flush()
                        self.save_checkpoint(model, opt, elapsed())
                        raise TimeLimitReached(
                            f"time limit of {limit:g} s reached at iteration {self.iteration}; "
                            "checkpoint written, continue with --resume")
            flush()
            self.save_checkpoint(model, opt, elapsed())
        finally:
            self._restore_signals(old)

        final = model.final_image(self).detach()
        picks = {"ema": self.ema.value, "es": self.es.best, "min_loss": self.picks.min_loss_image}
        if self.reference is not None:
            picks["best"] = self.picks.peak_image
        if self.holdout is not None:  # a run too short for the EMA to be a candidate: the iterate pick
            picks["holdout"] = self.holdout.image
            picks["holdout-ema"] = self.holdout.ema_image if self.holdout.ema_image is not None else self.holdout.image
        picks = {k: v for k, v in picks.items() if v is not None}
        return EngineResult(image=final, picks=picks, summary=self.summary(final, picks), history=self.history)

    # ------------------------------------------------------------------ summary
    def summary(self, final: torch.Tensor, picks: dict) -> dict:
        s: dict[str, Any] = {
            "iterations": self.iteration,
            "total_iterations": self.cfg.iterations,
            "stopped_early": self.es.stopped_at is not None or self.model_stopped_at is not None
                             or (self.holdout is not None and self.holdout.stopped_at is not None),
            "es_iter": self.es.best_iter,
            "es_wmv": None if math.isinf(self.es.var_min) else self.es.var_min,
            "min_loss_iter": self.picks.min_loss_iter,
            "min_loss": None if math.isinf(self.picks.min_loss) else self.picks.min_loss,
            "train_time_s": round(self.elapsed_before, 3),
            "loss_normalisation": self.loss_info,
        }
        if self.history:
            s["train_time_s"] = self.history[-1]["time_s"]
        if self.reference is not None:
            from ctdip.core.metrics import ssim

            dr = self.picks.data_range
            s["peak_psnr"] = self.picks.peak_psnr
            s["peak_iter"] = self.picks.peak_iter
            s["final_psnr"] = self.picks.psnr(final)
            s["final_ssim"] = ssim(final.reshape(self.reference.shape)[0, 0], self.reference[0, 0], data_range=dr)
            if "es" in picks:
                s["es_psnr"] = self.picks.psnr(picks["es"])
            if "ema" in picks:
                s["ema_psnr"] = self.picks.psnr(picks["ema"])
        if self.holdout is not None:
            s["final_holdout"] = holdout_residual(self.problem, final)
            s["holdout_stop"] = self.holdout.evidence(self.problem)
            if self.reference is not None and self.holdout.image is not None:
                s["holdout_stop"]["psnr"] = self.picks.psnr(self.holdout.image)
            if self.reference is not None and self.holdout.ema_image is not None:
                s["holdout_stop"]["ema_psnr"] = self.picks.psnr(self.holdout.ema_image)
        return s


# ============================================================================ utilities
def holdout_residual(problem, x: torch.Tensor) -> float:
    """``||A_held x - y_held||^2 / ||y_held||^2`` for a network-shaped image ``x``."""
    with torch.no_grad():
        r = problem.A_held(problem.to_volume(x)).reshape(problem.y_held.shape) - problem.y_held
        return float((r * r).sum() / (problem.y_held * problem.y_held).sum().clamp_min(1e-30))


def _f(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _plain_params(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[k] = str(v)
    return out

