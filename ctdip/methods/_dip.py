"""Shared machinery of the DIP methods: parameters, network and input, the normalised loss.

Every DIP method is a :class:`DIPMethod`: its parameters are the engine's options
(:class:`~ctdip.dip.engine.EngineConfig`), the network and input options (:data:`MODEL_OPTIONS`)
and its own ``defaults``, resolved with ``presets/methods/<name>.yaml`` and the keyword arguments
the driver passes from the CLI by :func:`ctdip.methods.params.resolve`. It builds the network and
its input, and hands itself to :class:`ctdip.dip.engine.Engine` as the
:class:`~ctdip.dip.engine.DIPModel`.

Loss normalisation (recorded in ``summary.json`` under ``loss_normalisation``)::

    data_fit(x) = ||A x - y||^2 / ||y||^2          (relative squared residual, 1 at x = 0)
    image terms  = means over voxels                (TV: mean_i |grad x|_i; penalties: mean (x-u)^2)

with ``y`` and images in the Problem's scaled units (images O(1), see ``Problem.intensity_scale``).
So a weight such as ``tv_weight`` means the same on every geometry, image size and data unit.
With ``view_batch`` K > 0 each step fits K random views S instead, ``(n/K) ||A_S x - y_S||^2 /
||y||^2`` (unbiased, handbook §5.3; ``ctdip.methods._view_subsets``); the logged ``data_fit`` stays
the full one.

Defaults by dimension: ``presets/methods/<name>.yaml`` may hold a ``params_3d:`` map (with
``sources_3d:``) of defaults for 3D problems; :meth:`DIPMethod.use_dim_defaults` puts them in
place of ``params:`` once the problem is known, for every key the caller did not give.

Network inputs (``input``): ``noise`` (z ~ input_std N(0, 1), fixed), ``fbp`` (the Problem's
FBP/FDK), ``adjoint`` (A^T y / q99.9(|A^T y|)), ``learnable`` (noise z optimised with the network,
step size ``z_lr``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ctdip.core.validate import choice
from ctdip.dip.context import RunContext, seed_everything
from ctdip.dip.engine import LR_SCHEDULES, DIPModel, Engine, EngineConfig, StepOut, lr_factor
from ctdip.errors import UserError
from ctdip.methods.base import Method, MethodResult
from ctdip.priors.tv import tv_norm

if TYPE_CHECKING:
    from ctdip.core.problem import Problem

#: options of every DIP method's network and input: ``name: (default, source or None)``; the
#: engine's options are declared in :class:`ctdip.dip.engine.EngineConfig`
MODEL_OPTIONS: dict[str, tuple[Any, str | None]] = {
    "network": ("light", "light preset: paper layout with 32 channels (presets/networks/light.yaml)"),
    "input": ("noise", None),
    "input_std": (0.1, "Baguer et al. 2020 (dival DIP reconstructor): z = 0.1 N(0, 1)"),
    "z_lr": (None, None),
    "input_noise": (0.0, "0 = off; s > 0: every training step feeds z + s N(0, I), drawn afresh (Ulyanov et al. "
                         "2018, reg_noise_std); logging passes and the final image use z"),
    "view_batch": (0, "0 = every view each step; K = a random subset of K views per step (handbook §5.3, "
                      "ctdip/methods/_view_subsets.py)"),
    "output": ("method", "method = the method's own returned image (final network output for most; see its docstring)"),
    "ensemble": (1, "1 = one network seed; N > 1 = the mean of N seeds' returned images, their spread as "
                    "recon_std.tif (ctdip/workflows/ensemble.py; N runs' time)"),
    "holdout_fraction": (0.1, "views held out for output: holdout when --holdout is not given (every 10th view, "
                              "at least 3: on the tuning walnut at 20 views 2 held-out views picked 16.88 dB, 3 "
                              "picked 18.91 (peak 18.74), benchmarks/results/stopping.md)"),
}
INPUT_KINDS = ("noise", "fbp", "adjoint", "learnable")
#: the returned image of the methods with an ``output`` parameter: the final iterate, the output
#: EMA, or the logged iterate / EMA value of least held-out-view residual (the reference-free
#: stopping point, ``ctdip.dip.engine.HoldoutStop``)
OUTPUTS = ("method", "final", "ema", "holdout", "holdout-ema")
OPTIMIZERS = ("adam", "adamw", "sgd", "lbfgs")


class DIPMethod(Method, DIPModel):
    """Base class of the DIP methods (see module docstring). Subclasses set ``name``, may add
    ``defaults`` (their own parameters) and override :meth:`setup`, :meth:`objective`,
    :meth:`after_step`, :meth:`final_image`, :meth:`choose_result` and the method-state hooks."""

    kind: ClassVar[str] = "dip"
    #: parameters whose validation rule accepts ``auto`` (shared names) but that this method needs as numbers
    numbers_only: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """The engine's options, the network/input options and the method's own ``defaults``."""
        return {**EngineConfig.param_defaults(), **{k: d for k, (d, _) in MODEL_OPTIONS.items()}, **cls.defaults}

    @classmethod
    def param_sources(cls) -> dict[str, str]:
        return {**EngineConfig.param_sources(), **{k: s for k, (_, s) in MODEL_OPTIONS.items() if s}}

    def check(self, params: dict) -> None:
        if params["input"] not in INPUT_KINDS:
            raise UserError(f"--input: must be one of {', '.join(INPUT_KINDS)}, got '{params['input']}'")
        choice(str(params["optimizer"]).lower(), "--set optimizer", OPTIMIZERS)
        for key in self.numbers_only:
            if params.get(key) == "auto":
                raise UserError(f"--set {key}: method '{self.name}' needs a number here ('auto' is not available)")
        choice(str(params["lr_schedule"]), "--set lr_schedule", LR_SCHEDULES)
        if "output" in params and params["output"] not in OUTPUTS:
            raise UserError(f"method '{self.name}': output must be one of {', '.join(OUTPUTS)}, got '{params['output']}'")
        hf = params.get("holdout_fraction")
        if str(params.get("output")).startswith("holdout") and not (isinstance(hf, (int, float)) and 0 < hf < 1):
            raise UserError(f"--set holdout_fraction: output 'holdout' needs a fraction in (0, 1), got {hf!r}")

    # ------------------------------------------------------------------ building blocks
    def use_dim_defaults(self, problem) -> None:
        """Replace the defaults of the keys the caller did not give by the preset's
        ``params_<dim>d:`` ones (module docstring); a no-op for a preset without them."""
        from ctdip.methods.params import check_numbers, load_dim_preset

        extra, sources = load_dim_preset(self.name, problem.dim)
        extra = {k: v for k, v in extra.items() if k not in self.given}
        if not extra:
            return
        unknown = sorted(k for k in extra if k not in self.params)
        if unknown:
            raise UserError(f"method '{self.name}': params_{problem.dim}d has unknown parameter(s) {', '.join(unknown)}")
        self.params = check_numbers({**self.params, **extra})
        self.sources = {**self.sources, **{k: sources[k] for k in extra if k in sources}}
        self.check(self.params)

    def network_arch(self, problem) -> dict:
        from ctdip.networks import network_preset, resolve_arch

        net = self.params["network"]
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
        kind = self.params["input"]
        shape = (1, int(self.arch.get("in_channels", 1)), *problem.image_shape)
        if kind in ("noise", "learnable"):
            z = float(self.params["input_std"]) * torch.randn(shape, generator=gen)
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
        """With ``view_batch`` K > 0: draw this step's K views from the engine's generator; with
        ``input_noise`` s > 0: this step's input perturbation ``s eta``, eta ~ N(0, I)."""
        if self._view_batch:
            from ctdip.methods._view_subsets import draw_views

            self._views = draw_views(self._n_views, self._view_batch, gen)
        s = float(self.params.get("input_noise") or 0.0)
        if s > 0:
            self._jitter = s * torch.randn(self.z.shape, generator=gen, device=self.z.device, dtype=self.z.dtype)

    @torch.no_grad()
    def lr_scale(self, it: int) -> float:
        """The network's learning-rate factor at iteration ``it`` (:func:`ctdip.dip.engine.lr_factor`
        of ``lr_schedule``), for method steps that follow it (``admm``'s ``dual_schedule: lr``,
        ``red``'s ``momentum: lr``)."""
        return lr_factor(str(self.params["lr_schedule"]), it, int(self.params["iterations"]))

    def full_data_fit(self, image: torch.Tensor) -> float:
        """``||A x - y||^2 / ||y||^2`` on every view, also when the steps fit view subsets."""
        r = self.problem.forward(image) - self.problem.y
        return float((r * r).sum() / (image.shape[0] * self._ynorm2))

    def logged_data_fit(self, image: torch.Tensor) -> float | None:
        """The full-data fit for metrics rows when the steps fit view subsets."""
        return self.full_data_fit(image) if self._view_batch else None

    def param_groups(self, lr: float) -> list[dict]:
        groups = [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr": lr}]
        if self.z.requires_grad:
            groups.append({"params": [self.z], "lr": float(self.params["z_lr"] or lr)})
        return groups

    def output(self) -> torch.Tensor:
        """The iterate ``x = f_theta(z)``, or ``x = z + f_theta(z)`` with ``input_skip`` (a method
        parameter of ``tv``: the network learns the correction of its input image; ignored for a
        noise or learnable input); network-shaped, differentiable. With ``input_noise`` the
        training passes (gradients on) see ``z + s eta`` (:meth:`before_step`), the others ``z``."""
        jitter = getattr(self, "_jitter", None)
        x = self.network(self.z if jitter is None or not torch.is_grad_enabled() else self.z + jitter)
        if self.params.get("input_skip") and self.params["input"] in ("fbp", "adjoint"):
            return x + self.z
        return x

    @torch.no_grad()
    def final_image(self, engine) -> torch.Tensor:
        """The returned reconstruction: :meth:`output` at the final parameters."""
        return self.output().detach()

    def objective(self, it: int, gen: torch.Generator) -> StepOut:
        """The data term of :meth:`output`; methods add their regulariser with ``StepOut.plus``."""
        x = self.output()
        fit = self.data_fit(x)
        return StepOut(loss=fit, image=x, data_fit=fit)

    def method_state(self) -> dict:
        return {}

    def load_method_state(self, state: dict) -> None:
        pass

    def choose_result(self, res) -> torch.Tensor:
        """The method's own returned reconstruction (``output: method``; default: the final image)."""
        return res.image

    def returned_image(self, res) -> torch.Tensor:
        """The returned reconstruction by the ``output`` parameter: the method's own choice
        (``method``, :meth:`choose_result`), the final image (``final``), the output EMA (``ema``),
        the iterate or EMA value of least held-out residual (``holdout``, ``holdout-ema``)."""
        out = self.params.get("output", "method")
        if out in ("ema", "holdout", "holdout-ema") and out in res.picks:
            return res.picks[out]
        return res.image if out == "final" else self.choose_result(res)

    # ------------------------------------------------------------------ run
    def preflight(self, problem: Problem) -> None:
        """Resolve the network (preset name or YAML, its dimension), build it (or read and check
        the weights file), and open the denoiser, so that a mistake fails before the run folder."""
        self.problem = problem
        if getattr(self, "ctx", None) is None:
            self.ctx = RunContext(quiet=True)
        self.use_dim_defaults(problem)
        if str(self.params.get("output")).startswith("holdout") and problem.A_held is None:
            raise UserError(f"method '{self.name}': output '{self.params['output']}' needs held-out views "
                            "(--holdout FRACTION)")
        self.arch = self.network_arch(problem)
        self.check_network(problem)
        if self.params.get("denoiser") is not None:
            from ctdip.methods._splitting import make_denoiser

            make_denoiser(self)

    def check_network(self, problem) -> None:
        """Build the network once (a bad architecture file fails here, before any output)."""
        from ctdip.networks import build_network

        build_network(self.arch)

    def run(self, problem: Problem, ctx: RunContext | None = None) -> MethodResult:
        ctx = ctx or RunContext()
        self.problem = problem
        self.use_dim_defaults(problem)
        self._ynorm2 = float((problem.y * problem.y).sum().clamp_min(1e-30))
        self._setup_view_subsets(problem)
        self.ctx = ctx
        seed = int(ctx.seed)
        seed_everything(seed)
        gen = torch.Generator().manual_seed(seed)
        self.arch = self.network_arch(problem)
        self.network = self.build_network(problem)
        self.z = self.make_input(problem, gen)
        if self.params["input"] == "learnable":
            self.z.requires_grad_(True)
        self.setup(problem, gen)
        cfg = EngineConfig.from_params(self.params)
        loss_info = {"data_fit": "||A x - y||^2 / ||y||^2", "y_norm2": self._ynorm2,
                     "image_terms": "mean over voxels", "intensity_scale": float(problem.intensity_scale),
                     "opnorm": float(problem.opnorm)}
        if self._view_batch:
            loss_info["view_batch"] = self._view_batch
            loss_info["data_fit_step"] = "(n/K) ||A_S x - y_S||^2 / ||y||^2 on K random views S (unbiased); logged data_fit: full"
        self.engine = Engine(problem, ctx, cfg, method_name=self.name, params=self.params, loss_info=loss_info)
        res = self.engine.run(self)
        self._views = None  # later data_fit calls see every view
        recon = self.returned_image(res)
        extras = {k: problem.to_volume(v)[0, 0] for k, v in res.picks.items() if k in ("es", "best", "ema")}
        summary = {
            "method": self.name, **res.summary,
            "network": {"arch": self.arch, "parameters": sum(p.numel() for p in self.network.parameters())},
            "input": self.params["input"], "params": {k: v for k, v in self.params.items() if not isinstance(v, dict)},
            **self.extra_summary(),
        }
        if problem.reference is not None and recon is not res.image:
            summary["returned_psnr"] = self.engine.picks.psnr(recon)
        return MethodResult(recon=problem.to_volume(recon)[0, 0], extras=extras, summary=summary,
                            history=res.history)

    def _setup_view_subsets(self, problem) -> None:
        from ctdip.methods._view_subsets import ViewSubset, check_view_batch

        self._n_views = int(problem.y.shape[0])
        self._view_batch = check_view_batch(self.params.get("view_batch", 0) or 0, self._n_views, self.name)
        self._views = None
        self._view_op = ViewSubset(problem.A) if self._view_batch else None

    def build_network(self, problem) -> torch.nn.Module:
        from ctdip.networks import build_network

        return build_network(self.arch).to(problem.device)

    def extra_summary(self) -> dict:
        return {}
