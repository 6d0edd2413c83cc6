"""Training a DRUNet-style Gaussian denoiser ``D(x, sigma)`` on synthetic CT-like images.

The denoiser is what ``admm``, ``hqs`` and ``red`` plug in with ``--denoiser denoiser.pt``
(``ctdip.priors.denoisers.load_denoiser``). Training, after Zhang et al. 2021 (DRUNet):

* **Clean images** ``x`` (``patch`` x ``patch``), in ctdip's O(1) intensity convention, drawn per
  sample from the chosen sources: random ellipses (``random_ellipses``, already in [0, 1]),
  procedural walnut slices (``walnut(shape, seed)``, divided by their maximum; random crops,
  flips and 90° rotations of a pool rendered at twice the patch size) and optional user volumes
  (TIFF stacks or ``.npy`` arrays, each divided by its 99.9th percentile like ``Problem`` scales
  real data; random slices and crops).
* **Noise** ``x_noisy = x + sigma * n``, ``sigma ~ U(sigma_min, sigma_max)`` per sample, the level
  fed to the network as a constant input map. ``noise="gaussian"``: ``n ~ N(0, I)``.
  ``noise="mixed"``: half of each batch gets white noise, the other half spatially correlated
  noise ``n = (g_s * e) / std(g_s * e)``, ``e ~ N(0, I)`` blurred by a Gaussian ``g_s`` of width
  ``s ~ U(0.5, 2)`` pixels and rescaled to unit standard deviation per image, a cheap stand-in for
  the streaks and blotches of a sparse-view iterate that ADMM / HQS / RED hand to the denoiser.
* **Loss** ``L(theta) = mean | D_theta(x_noisy, sigma) - x |`` (L1, as DRUNet), Adam with the
  one-cycle schedule of :mod:`ctdip.training.trainer`, mini-batches generated on the training device.
* **Validation** every ``val_every`` steps on a fixed set (Shepp–Logan, a walnut slice, ellipses)
  at sigma in {0.05, 0.1, 0.2}: the MSE of the noisy and of the denoised images.

The loop, checkpoints, ``--resume`` and the log are :func:`ctdip.training.trainer.train`'s
(``<out>.ckpt/`` beside the output: ``state.pt``, ``best.pt``, ``step_NNNNNN.pt``, ``log.csv``);
``best.pt`` is the lowest mean validation MSE and is what is written to ``out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ctdip.errors import UserError
from ctdip.training.trainer import (
    CheckpointPolicy,
    Progress,
    TrainingResult,
    TrainingState,
    TrainingTask,
    checkpoint_dir,
    train,
)

VAL_SIGMAS = (0.05, 0.1, 0.2)
SOURCES = ("ellipses", "walnut", "volumes")
NOISES = ("gaussian", "mixed")


@dataclass
class DenoiserConfig:
    size: str = "small"  # DRUNet size: tiny | small | base
    patch: int = 64
    batch_size: int = 16
    steps: int = 2000
    lr: float = 1e-3
    sigma_min: float = 0.0
    sigma_max: float = 0.2
    noise: str = "gaussian"  # gaussian | mixed (module docstring)
    sources: tuple[str, ...] = ("ellipses", "walnut")
    volumes: list[str] = field(default_factory=list)
    n_walnuts: int = 8
    n_ellipses: int = 40
    val_every: int = 100
    checkpoint_every: int = 500
    seed: int = 0
    #: free-text provenance (the command line, what the volumes are) stored in the file's metadata
    command: str = ""
    note: str = ""

    def validate(self) -> None:
        from ctdip.core.validate import LEARNING_RATE, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, Rule, choice

        for opt, name, rule in (("--steps", "steps", POSITIVE_INT), ("--batch-size", "batch_size", POSITIVE_INT),
                                ("--lr", "lr", LEARNING_RATE),
                                ("--val-every", "val_every", NONNEG_INT),  # 0: validate at the end only
                                ("--checkpoint-every", "checkpoint_every", NONNEG_INT),
                                ("--patch", "patch", Rule(integer=True, minimum=8)),
                                ("--sigma-min", "sigma_min", NONNEG), ("--sigma-max", "sigma_max", POSITIVE)):
            setattr(self, name, rule(getattr(self, name), opt))
        if self.sigma_min > self.sigma_max:
            raise UserError(f"--sigma-min: must be <= --sigma-max ({self.sigma_max:g}), got {self.sigma_min:g}")
        choice(self.noise, "--noise", NOISES)
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise UserError(f"unknown image source '{bad[0]}'; choose from: {', '.join(SOURCES)}")
        if self.volumes and "volumes" not in self.sources:
            self.sources = tuple(self.sources) + ("volumes",)
        if "volumes" in self.sources and not self.volumes:
            raise UserError("the 'volumes' source needs at least one --volume FILE (.tif or .npy)")
        if not self.sources:
            raise UserError("no image sources selected")


def _read_volume(path: str | Path, patch: int) -> torch.Tensor:
    """A user volume (TIFF or ``.npy``) as (slices, H, W) float32 divided by its 99.9th percentile."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise UserError("volume file not found", path=path)
    npy = path.suffix.lower() == ".npy"
    try:
        raw = np.load(path, allow_pickle=False) if npy else tifffile.imread(path)
        vol = np.asarray(raw, dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - unreadable file is the user's input problem
        raise UserError(f"cannot read {'.npy array' if npy else 'TIFF'} ({type(e).__name__})", path=path) from None
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise UserError(f"expected a 2D image or a (z, y, x) volume, got shape {vol.shape}", path=path)
    if not np.isfinite(vol).all():
        raise UserError("volume contains NaN or infinite values", path=path)
    if min(vol.shape[1:]) < patch:
        raise UserError(f"slices of {vol.shape[1]}x{vol.shape[2]} are smaller than --patch {patch}", path=path)
    q = float(np.quantile(vol[:: max(1, vol.shape[0] // 64)], 0.999))
    if q <= 0:
        raise UserError("volume has no positive values to normalise by", path=path)
    return torch.from_numpy(vol / q)


class ImageSampler:
    """Batches of clean O(1) training patches (N, 1, patch, patch) from the configured sources."""

    def __init__(self, cfg: DenoiserConfig, device: torch.device):
        from ctdip.core.data.phantoms import walnut

        self.cfg, self.device = cfg, device
        self.pools: dict[str, list[torch.Tensor]] = {}
        if "walnut" in cfg.sources:
            size = 2 * cfg.patch
            ims = []
            for k in range(cfg.n_walnuts):
                w = walnut((size, size), seed=1000 + k)
                ims.append(torch.from_numpy(w / max(float(w.max()), 1e-12)))
            self.pools["walnut"] = [torch.stack(ims).to(device)]
        if "volumes" in cfg.sources:
            self.pools["volumes"] = [_read_volume(p, cfg.patch).to(device) for p in cfg.volumes]

    def _crops(self, pools: list[torch.Tensor], n: int, g: torch.Generator) -> torch.Tensor:
        p = self.cfg.patch
        out = []
        for _ in range(n):
            vol = pools[int(torch.randint(len(pools), (1,), generator=g, device=g.device))]
            k = int(torch.randint(vol.shape[0], (1,), generator=g, device=g.device))
            i = int(torch.randint(vol.shape[1] - p + 1, (1,), generator=g, device=g.device))
            j = int(torch.randint(vol.shape[2] - p + 1, (1,), generator=g, device=g.device))
            im = vol[k, i:i + p, j:j + p]
            r = int(torch.randint(8, (1,), generator=g, device=g.device))
            im = torch.rot90(im, r % 4, (0, 1))
            if r >= 4:
                im = im.flip(1)
            out.append(im)
        return torch.stack(out)

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        from ctdip.core.data.phantoms import random_ellipses

        src = list(self.cfg.sources)
        pick = torch.randint(len(src), (n,), generator=g, device=g.device).cpu()
        out = torch.empty(n, self.cfg.patch, self.cfg.patch, device=self.device)
        for s_i, name in enumerate(src):
            idx = (pick == s_i).nonzero().flatten()
            if len(idx) == 0:
                continue
            if name == "ellipses":
                ims = random_ellipses(len(idx), (self.cfg.patch,) * 2, generator=g, device=self.device,
                                      n_ellipses=self.cfg.n_ellipses)
            else:
                ims = self._crops(self.pools[name], len(idx), g)
            out[idx.to(self.device)] = ims.to(self.device, torch.float32)
        return out.unsqueeze(1)


def training_noise(shape: tuple[int, ...], kind: str, g: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Unit-variance training noise (N, 1, H, W): white, or for ``mixed`` half of it correlated
    (module docstring). Drawn with ``g`` so a resumed run continues the same sequence."""
    n = torch.randn(shape, generator=g, device=g.device).to(device)
    if kind != "mixed":
        return n
    half = shape[0] // 2
    widths = 0.5 + 1.5 * torch.rand(half, generator=g, device=g.device).cpu()
    for k in range(half):
        s = float(widths[k])
        r = int(math.ceil(3 * s))
        t = torch.arange(-r, r + 1, dtype=n.dtype, device=device)
        ker = torch.exp(-0.5 * (t / s) ** 2)
        ker = ker / ker.sum()
        e = F.pad(n[k:k + 1], (r, r, r, r), mode="circular")
        e = F.conv2d(e, ker.reshape(1, 1, 1, -1))
        e = F.conv2d(e, ker.reshape(1, 1, -1, 1))
        n[k] = (e / e.std().clamp_min(1e-12))[0]
    return n


def psnr_gains(val: dict) -> dict[str, float]:
    """``{sigma: 10 log10(mse_noisy / mse_denoised)}`` (dB) from :func:`evaluate_denoiser` output."""
    return {f"{s:g}": round(10 * math.log10(mn / max(md, 1e-30)), 3) for s, (mn, md) in val.items()}


def validation_set(cfg: DenoiserConfig, device: torch.device) -> torch.Tensor:
    """Fixed clean validation images (N, 1, patch, patch): Shepp–Logan, a walnut, 6 ellipse images."""
    from ctdip.core.data.phantoms import random_ellipses, shepp_logan, walnut

    p = cfg.patch
    w = walnut((p, p), seed=999)
    ims = [torch.from_numpy(shepp_logan((p, p))), torch.from_numpy(w / max(float(w.max()), 1e-12))]
    g = torch.Generator().manual_seed(4242)
    ims += list(random_ellipses(6, (p, p), generator=g, n_ellipses=cfg.n_ellipses))
    return torch.stack([i.float() for i in ims]).unsqueeze(1).to(device)


def evaluate_denoiser(net: torch.nn.Module, clean: torch.Tensor, sigmas=VAL_SIGMAS, seed: int = 7) -> dict:
    """``{sigma: (mse_noisy, mse_denoised)}`` on ``clean`` (N, 1, H, W) with fixed noise."""
    g = torch.Generator().manual_seed(seed)
    res = {}
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for s in sigmas:
            noise = torch.randn(clean.shape, generator=g).to(clean.device)
            noisy = clean + s * noise
            den = net(noisy, s)
            res[float(s)] = (float(F.mse_loss(noisy, clean)), float(F.mse_loss(den, clean)))
    net.train(was_training)
    return res


def train_denoiser(
    out: str | Path,
    config: DenoiserConfig | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainingResult:
    """Train a DRUNet denoiser and write the best checkpoint to ``out`` (``kind: denoiser``).

    The result's ``val`` is the final validation of the written weights,
    ``{sigma: (mse_noisy, mse_denoised)}``.
    """
    from ctdip.networks import build_network
    from ctdip.networks import weights as W
    from ctdip.networks.drunet import drunet_arch

    cfg = config or DenoiserConfig()
    cfg.validate()
    dev = torch.device(device)
    out = Path(out)
    ckdir = checkpoint_dir(out)
    arch = drunet_arch(cfg.size, dim=2)
    spec = {"sources": list(cfg.sources), "volumes": [Path(v).name for v in cfg.volumes], "patch": cfg.patch,
            "sigma_range": [cfg.sigma_min, cfg.sigma_max], "noise": cfg.noise, "loss": "l1",
            "intensity": "O(1): ellipses in [0,1], walnut / max, volumes / q99.9",
            "batch_size": cfg.batch_size, "steps": cfg.steps, "lr": cfg.lr, "schedule": "one-cycle",
            "seed": cfg.seed}
    torch.manual_seed(cfg.seed)
    net = build_network(arch).to(dev)
    sampler = ImageSampler(cfg, dev)
    val = validation_set(cfg, dev)

    def sample(g: torch.Generator):  # (x + sigma n, sigma, x), sigma ~ U(sigma_min, sigma_max) per image
        clean = sampler.sample(cfg.batch_size, g)
        sig = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * torch.rand(cfg.batch_size, generator=g,
                                                                           device=g.device).to(dev)
        noisy = clean + sig.reshape(-1, 1, 1, 1) * training_noise(tuple(clean.shape), cfg.noise, g, dev)
        return noisy, sig, clean

    def loss(net: torch.nn.Module, batch) -> torch.Tensor:  # L(theta) = mean |D(x_noisy, sigma) - x|
        noisy, sig, clean = batch
        return torch.mean(torch.abs(net(noisy, sig) - clean))

    def validate(net: torch.nn.Module) -> dict:
        r = {}
        ev = evaluate_denoiser(net, val)
        for s, (mn, md) in ev.items():
            r[f"mse_noisy_{s:g}"], r[f"mse_{s:g}"] = mn, md
        r["val_loss"] = float(np.mean([md for _, md in ev.values()]))
        return r

    def save_weights(path: Path, tag: str, st: TrainingState) -> None:
        W.save_weights(path, net.state_dict(), arch, kind="denoiser", data_spec=spec,
                       extra={"step": st.step, "tag": tag, "val": st.history[-1] if st.history else {}})

    task = TrainingTask("denoiser training", net, arch, spec, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed,
                        sample=sample, loss=loss, validate=validate, save_weights=save_weights)
    policy = CheckpointPolicy(cfg.val_every, cfg.checkpoint_every, best_key="val_loss", maximize=False,
                              best_name="mse")
    state = train(task, policy, ckdir, dev, resume=resume, progress=progress, log=log)

    best = (ckdir / "best.pt").exists()
    src = ckdir / "best.pt" if best else ckdir / "last.pt"
    chosen = W.load_weights(src, kind="denoiser")
    final = W.build_from_weights(chosen, src).to(dev)
    final_val = evaluate_denoiser(final, val)
    extra = dict(chosen.get("extra") or {})
    extra["training"] = {
        "command": cfg.command, "note": cfg.note,
        "volumes": [_volume_record(v) for v in cfg.volumes],
        "walnut_seeds": [1000 + k for k in range(cfg.n_walnuts)] if "walnut" in cfg.sources else [],
        "steps": cfg.steps, "best_step": state.best["step"], "samples": state.samples,
        "train_s": round(state.busy_s, 1),
        "validation": "Shepp-Logan, walnut seed 999, 6 ellipse images at the training patch size",
        "validation_psnr_gain_db": psnr_gains(final_val),
    }
    W.save_weights(out, chosen["state_dict"], chosen["arch"], kind="denoiser", data_spec=chosen["data_spec"],
                   extra=extra)
    selected = f"lowest validation MSE (step {state.best['step']})" if best else "last"
    return TrainingResult.from_state(out, state, policy, selected, val=final_val)


def _volume_record(path: str | Path) -> dict:
    """Name, shape and SHA-256 (first 16 hex digits) of a training volume, for the metadata."""
    import hashlib

    p = Path(path)
    shape = list(np.load(p, mmap_mode="r", allow_pickle=False).shape) if p.suffix.lower() == ".npy" else None
    return {"name": p.name, "shape": shape, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16]}
