"""Shared machinery of the DIP methods: parameters, network and input, the normalised loss.

Every DIP method is a :class:`DIPMethod`: it resolves its parameters (engine-wide defaults
:data:`COMMON_DEFAULTS`, then ``presets/methods/<name>.yaml``, then the keyword arguments the
driver passes from the CLI), builds the network and its input, and hands itself to
:class:`ctdip.dip.engine.Engine` as the :class:`~ctdip.dip.engine.DIPModel`.

Loss normalisation (recorded in ``summary.json`` under ``loss_normalisation``)::

    data_fit(x) = ||A x - y||^2 / ||y||^2          (relative squared residual, 1 at x = 0)
    image terms  = means over voxels                (TV: mean_i |grad x|_i; penalties: mean (x-u)^2)

with ``y`` and images in the Problem's scaled units (images O(1), see ``Problem.intensity_scale``).
So a weight such as ``tv_weight`` means the same on every geometry, image size and data unit.
With ``view_batch`` K > 0 each step fits K random views S instead, ``(n/K) ||A_S x - y_S||^2 /
||y||^2`` (unbiased, handbook §5.3; ``ctdip.methods._view_subsets``); the logged ``data_fit`` stays
the full one.

Network inputs (``input``): ``noise`` (z ~ input_std N(0, 1), fixed), ``fbp`` (the Problem's
FBP/FDK), ``adjoint`` (A^T y / q99.9(|A^T y|)), ``learnable`` (noise z optimised with the network,
step size ``z_lr``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import yaml

from ctdip.core.io import preset_dir
from ctdip.core.validate import check_params, choice
from ctdip.dip.engine import DIPModel, Engine, EngineConfig, StepOut
from ctdip.errors import UserError
from ctdip.methods.base import Method, MethodResult, RunContext
from ctdip.priors.denoisers import tv_norm

PRESET_DIR = preset_dir("methods")

#: Engine-wide defaults (every DIP method accepts these); sources in ``COMMON_SOURCES``.
COMMON_DEFAULTS: dict[str, Any] = {
    "iterations": 2000,
    "lr": 1e-3,
    "optimizer": "adam",
    "grad_clip": 1.0,
    "network": "light",
    "input": "noise",
    "input_std": 0.1,
    "z_lr": None,
    "log_every": 10,
    "checkpoint_every": 500,
    "es_window": 100,
    "es_patience": 500,
    "es_delta": 0.0,
    "ema_decay": 0.99,
    "view_batch": 0,
    "lr_schedule": "constant",
}
COMMON_SOURCES = {
    "lr": "tuned here for the light network on CPU (handbook: 1e-4 with the paper network), benchmarks/results/methods.md",
    "input_std": "Baguer et al. 2020 (dival DIP reconstructor): z = 0.1 N(0, 1)",
    "es_window": "Wang et al. 2021 ES-WMV, W = 100",
    "es_patience": "tuned here (Wang et al. 2021 use P of the order of the window to 1000)",
    "ema_decay": "Liang et al. 2025 (self-guided DIP) output EMA",
    "lr_schedule": "constant (cosine: decay to 5 % of lr, ctdip.dip.engine.lr_factor)",
    "network": "light preset: paper layout with 32 channels (presets/networks/light.yaml)",
    "view_batch": "0 = every view each step; K = a random subset of K views per step (handbook §5.3, ctdip/methods/_view_subsets.py)",
}
INPUT_KINDS = ("noise", "fbp", "adjoint", "learnable")
OPTIMIZERS = ("adam", "adamw", "sgd", "lbfgs")


def load_method_preset(name: str) -> dict:
    """``{"params": {...}, "sources": {...}}`` of ``presets/methods/<name>.yaml`` (empty if absent)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        return {"params": {}, "sources": {}}
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return {"params": dict(data.get("params") or {}), "sources": dict(data.get("sources") or {})}


def _coerce(name: str, key: str, value: Any, default: Any) -> Any:
    """Convert a CLI string (``--set key=value``) to the type of the default."""
    if not isinstance(value, str) or isinstance(default, str):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if isinstance(default, bool):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(float(value)) if float(value).is_integer() else int(value)
        if isinstance(default, float):
            return float(value)
        return yaml.safe_load(value)
    except (ValueError, yaml.YAMLError):
        raise UserError(f"method '{name}': parameter '{key}' expects {type(default).__name__}, got '{value}'") from None


class DIPMethod(Method, DIPModel):
    """Base class of the DIP methods (see module docstring). Subclasses set ``name``, may add
    ``extra_defaults`` and override :meth:`setup`, :meth:`objective`, :meth:`after_step`,
    :meth:`final_image`, :meth:`choose_result` and the method-state hooks."""

    kind: ClassVar[str] = "dip"
    extra_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        preset = load_method_preset(self.name)
        defaults = {**COMMON_DEFAULTS, **self.extra_defaults, **preset["params"]}
        self.sources = {**COMMON_SOURCES, **preset["sources"]}
        unknown = sorted(k for k, v in params.items() if k not in defaults and v is not None)
        if unknown:
            raise UserError(
                f"method '{self.name}' has no parameter {', '.join(repr(u) for u in unknown)}; "
                f"known parameters: {', '.join(sorted(defaults))}")
        resolved = dict(defaults)
        for k, v in params.items():
            if v is not None:
                resolved[k] = _coerce(self.name, k, v, defaults[k])
        if resolved["input"] not in INPUT_KINDS:
            raise UserError(f"--input: must be one of {', '.join(INPUT_KINDS)}, got '{resolved['input']}'")
        resolved = check_params(resolved)
        choice(str(resolved["optimizer"]).lower(), "--set optimizer", OPTIMIZERS)
        from ctdip.dip.engine import LR_SCHEDULES

        choice(str(resolved["lr_schedule"]), "--set lr_schedule", LR_SCHEDULES)
        super().__init__(**resolved)
        self.p = resolved

    # ------------------------------------------------------------------ building blocks
    def network_arch(self, problem) -> dict:
        from ctdip.networks import network_preset, resolve_arch

        net = self.p["network"]
        if isinstance(net, dict):
            arch = dict(net)
            arch.setdefault("dim", problem.dim)
        else:
            arch = network_preset(net, problem.dim)
        if int(arch.get("dim", problem.dim)) != problem.dim:
            raise UserError(f"network '{net}' is {arch.get('dim')}D but the problem is {problem.dim}D "
                            f"(use a {problem.dim}D network preset)")
        return resolve_arch(arch, problem.image_shape)

    def make_input(self, problem, gen: torch.Generator) -> torch.Tensor:
        kind = self.p["input"]
        shape = (1, int(self.arch.get("in_channels", 1)), *problem.image_shape)
        if kind in ("noise", "learnable"):
            z = float(self.p["input_std"]) * torch.randn(shape, generator=gen)
        elif kind == "fbp":
            if problem.x_init is None:
                raise UserError(f"method '{self.name}': input 'fbp' needs an initial reconstruction; the problem has none")
            z = problem.to_image(problem.x_init).detach().cpu().expand(shape)
        else:  # adjoint
            with torch.no_grad():
                v = problem.adjoint(problem.y).reshape(1, 1, *problem.image_shape).cpu()
            q = float(torch.quantile(v.abs().flatten()[:: max(1, v.numel() // 1_000_000)], 0.999))
            z = (v / (q if q > 0 else 1.0)).expand(shape)
        return z.float().to(problem.device).clone()  # never a view of the problem's tensors

    def data_fit(self, x: torch.Tensor) -> torch.Tensor:
        """``||A x - y||^2 / ||y||^2`` for network-shaped x (any batch size: mean over the batch).

        With ``view_batch`` K > 0, inside a step: the unbiased subset estimate
        ``(n / K) ||A_S x - y_S||^2 / ||y||^2`` on the step's views S (``_view_subsets``)."""
        views = getattr(self, "_views", None)
        if views is None:
            r = self.problem.forward(x) - self.problem.y
            scale = 1.0
        else:
            r = self._view_op(self.problem.to_volume(x), views) - self.problem.y[torch.as_tensor(views, device=x.device)]
            scale = self._n_views / len(views)
        n = x.shape[0]
        return scale * (r * r).sum() / (n * self._ynorm2)

    @staticmethod
    def tv(x: torch.Tensor) -> torch.Tensor:
        return tv_norm(x)

    # ------------------------------------------------------------------ DIPModel hooks
    def setup(self, problem, gen: torch.Generator) -> None:
        """Method-specific state, after network and input exist."""

    def before_step(self, it: int, gen: torch.Generator) -> None:
        """With ``view_batch`` K > 0: draw this step's K views from the engine's generator."""
        if self._view_batch:
            from ctdip.methods._view_subsets import draw_views

            self._views = draw_views(self._n_views, self._view_batch, gen)

    @torch.no_grad()
    def logged_data_fit(self, image: torch.Tensor) -> float | None:
        """The full-data fit for metrics rows when the steps fit view subsets."""
        if not self._view_batch:
            return None
        r = self.problem.forward(image) - self.problem.y
        return float((r * r).sum() / (image.shape[0] * self._ynorm2))

    def param_groups(self, lr: float) -> list[dict]:
        groups = [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr": lr}]
        if self.z.requires_grad:
            groups.append({"params": [self.z], "lr": float(self.p["z_lr"] or lr)})
        return groups

    def objective(self, it: int, gen: torch.Generator) -> StepOut:
        x = self.network(self.z)
        fit = self.data_fit(x)
        return StepOut(loss=fit, image=x, data_fit=fit)

    def method_state(self) -> dict:
        return {}

    def load_method_state(self, state: dict) -> None:
        pass

    def choose_result(self, res) -> torch.Tensor:
        """The returned reconstruction from the engine's result (default: the final image)."""
        return res.image

    # ------------------------------------------------------------------ run
    def preflight(self, problem) -> None:
        """Resolve the network (preset name or YAML, its dimension), build it (or read and check
        the weights file), and open the denoiser, so that a mistake fails before the run folder."""
        self.problem = problem
        if getattr(self, "ctx", None) is None:
            self.ctx = RunContext(quiet=True)
        self.arch = self.network_arch(problem)
        self.check_network(problem)
        if self.p.get("denoiser") is not None:
            from ctdip.methods._splitting import make_denoiser

            make_denoiser(self)

    def check_network(self, problem) -> None:
        """Build the network once (a bad architecture file fails here, before any output)."""
        from ctdip.networks import build_network

        build_network(self.arch)

    def run(self, problem, ctx: RunContext | None = None) -> MethodResult:
        ctx = ctx or RunContext()
        self.problem = problem
        self._ynorm2 = float((problem.y * problem.y).sum().clamp_min(1e-30))
        self._setup_view_subsets(problem)
        self.ctx = ctx
        seed = int(ctx.seed)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.arch = self.network_arch(problem)
        self.network = self.build_network(problem)
        self.z = self.make_input(problem, gen)
        if self.p["input"] == "learnable":
            self.z.requires_grad_(True)
        self.setup(problem, gen)
        cfg = EngineConfig(
            iterations=int(self.p["iterations"]), lr=float(self.p["lr"]), optimizer=str(self.p["optimizer"]),
            grad_clip=float(self.p["grad_clip"]) if self.p["grad_clip"] else None,
            log_every=max(1, int(self.p["log_every"])), checkpoint_every=int(self.p["checkpoint_every"] or 0),
            es_window=int(self.p["es_window"]), es_patience=int(self.p["es_patience"]),
            es_delta=float(self.p["es_delta"]), ema_decay=float(self.p["ema_decay"]),
            lr_schedule=str(self.p["lr_schedule"]),
        )
        loss_info = {"data_fit": "||A x - y||^2 / ||y||^2", "y_norm2": self._ynorm2,
                     "image_terms": "mean over voxels", "intensity_scale": float(problem.intensity_scale),
                     "opnorm": float(problem.opnorm)}
        if self._view_batch:
            loss_info["view_batch"] = self._view_batch
            loss_info["data_fit_step"] = "(n/K) ||A_S x - y_S||^2 / ||y||^2 on K random views S (unbiased); logged data_fit: full"
        self.engine = Engine(problem, ctx, cfg, method_name=self.name, params=self.p, loss_info=loss_info)
        res = self.engine.run(self)
        self._views = None  # later data_fit calls see every view
        recon = self.choose_result(res)
        extras = {k: problem.to_volume(v)[0, 0] for k, v in res.picks.items() if k in ("es", "best", "ema")}
        summary = {
            "method": self.name, **res.summary,
            "network": {"arch": self.arch, "parameters": sum(p.numel() for p in self.network.parameters())},
            "input": self.p["input"], "params": {k: v for k, v in self.p.items() if not isinstance(v, dict)},
            **self.extra_summary(),
        }
        if problem.reference is not None and recon is not res.image:
            summary["returned_psnr"] = self.engine.picks.psnr(recon)
        return MethodResult(recon=problem.to_volume(recon)[0, 0], extras=extras, summary=summary,
                            history=res.history)

    def _setup_view_subsets(self, problem) -> None:
        from ctdip.methods._view_subsets import ViewSubset, check_view_batch

        self._n_views = int(problem.y.shape[0])
        self._view_batch = check_view_batch(self.p.get("view_batch", 0) or 0, self._n_views, self.name)
        self._views = None
        self._view_op = ViewSubset(problem.A) if self._view_batch else None

    def build_network(self, problem) -> torch.nn.Module:
        from ctdip.networks import build_network

        return build_network(self.arch).to(problem.device)

    def extra_summary(self) -> dict:
        return {}
