"""Spectrum of a network's Jacobian: randomised SVD of ``J = d(A f_theta(z)) / d theta`` and the
NTK eigenimages (EDIP paper, Barbano et al. 2022, Alg. 1; handbook Fig. 3).

With ``g(theta) = A f_theta(z)`` (M measurements, P parameters) and ``l = k + p`` probe vectors
(rank ``k``, oversampling ``p``), the randomised range finder of Halko et al. 2011 reads::

    Omega ~ N(0, 1)^(P x l)                 random probes in parameter space
    Y     = J Omega                         l exact JVPs (torch.func.jvp, forward mode)
    (optionally q power steps:  Y <- J (J^T Q), re-orthonormalising in between)
    Q R   = Y                               thin QR, Q: M x l orthonormal
    B     = Q^T J                           l VJPs (torch.func.vjp), rows J^T q_i
    B     = U_B S V^T                       small SVD
    J    ~= (Q U_B) S V^T                   keep the leading k triplets

``A`` is linear and needs no autodiff: ``J w = A (J_f w)`` and ``J^T q = J_f^T (A^T q)`` with
``J_f = d f_theta(z) / d theta`` (image space), so every backend of ``RayTransform`` works.

The neural tangent kernel in image space is ``K = J_f J_f^T``; its eigenvectors are the left
singular vectors of ``J_f`` (the *eigenimages*) and its eigenvalues the squared singular values.
They come out of the same routine with ``op=None``.

Derived quantities:

* Hoyer sparsity of a vector ``v`` in R^n: ``(sqrt(n) - |v|_1 / |v|_2) / (sqrt(n) - 1)`` in [0, 1]
  (0: all entries equal in magnitude, 1: a single non-zero).
* Layer share of a right singular vector ``v``: ``|v_L|^2 / |v|^2`` for the parameters ``v_L`` of
  each layer L (and of the encoder vs the decoder); shares sum to one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ctdip.core.io import save_figure
from ctdip.errors import UserError

Params = Mapping[str, torch.Tensor]


@dataclass
class JacobianSVD:
    """Leading singular triplets of a Jacobian ``J`` (output dim M, parameter dim P)."""

    singular_values: np.ndarray  # (k,), descending
    left: np.ndarray  # (k, M): left singular vectors (rows), in output space
    right: torch.Tensor  # (k, P): right singular vectors (rows), in parameter space (flattened)
    names: list[str]  # parameter names, in the order they are flattened
    sizes: list[int]  # number of entries of each parameter
    timings: dict = field(default_factory=dict)  # seconds per stage
    vectorised: bool = True  # JVPs/VJPs were batched with torch.func.vmap


# --------------------------------------------------------------------------------------------------
# core
# --------------------------------------------------------------------------------------------------
def _flatten(params: Params) -> tuple[torch.Tensor, list[str], list[torch.Size]]:
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return flat, names, shapes


def _unflatten(flat: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, s in zip(names, shapes):
        k = math.prod(s)
        out[n] = flat[i : i + k].view(s)
        i += k
    return out


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, bool]:
    """Apply ``fn`` to each row of ``rows`` with ``torch.func.vmap``; fall back to a loop for
    networks with operations vmap does not support."""
    try:
        return torch.func.vmap(fn, chunk_size=chunk)(rows), True
    except (RuntimeError, NotImplementedError):
        return torch.stack([fn(r) for r in rows]), False


def _orth(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (columns) of the column span of ``y`` (thin QR, in float64)."""
    q, _ = torch.linalg.qr(y.double(), mode="reduced")
    return q


def randomized_jacobian_svd(
    f: Callable[[Params], torch.Tensor],
    params: Params,
    rank: int,
    op: Callable[[torch.Tensor], torch.Tensor] | None = None,
    op_adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
    oversample: int = 10,
    power_iters: int = 0,
    seed: int = 0,
    chunk: int | None = 16,
) -> JacobianSVD:
    """Randomised SVD of ``J = d op(f(theta)) / d theta`` at ``params`` (module docstring).

    f: maps a dict of parameter tensors to an output tensor (e.g. an image (1, 1, H, W)).
    op: linear map applied to a *batch* of outputs, ``(b, *f_shape) -> (b, ...)``; None = identity.
    op_adjoint: its adjoint ``(b, ...) -> (b, *f_shape)``; when None it is obtained with autograd
        (the gradient of ``<op(x), q>`` in ``x``), which is exact because ``op`` is linear.
    rank: number of singular triplets returned (k); ``oversample`` extra probes (p);
    power_iters: subspace iterations (q) that sharpen a slowly decaying spectrum.
    chunk: probes per vmap batch (memory vs speed); None = all at once.
    """
    if rank < 1:
        raise UserError(f"--rank must be at least 1, got {rank}")
    t0 = time.perf_counter()
    theta, names, shapes = _flatten(params)
    P = theta.numel()
    dev, dt = theta.device, theta.dtype

    def image(flat: torch.Tensor) -> torch.Tensor:
        return f(_unflatten(flat, names, shapes))

    with torch.no_grad():
        out0 = image(theta)
    f_shape = tuple(out0.shape)

    def apply_op(x: torch.Tensor) -> torch.Tensor:  # (b, *f_shape) -> (b, M)
        x = x.to(dt)
        return (op(x) if op is not None else x).reshape(x.shape[0], -1)

    range_shape = tuple(op(out0.unsqueeze(0)).shape[1:]) if op is not None else f_shape
    M = math.prod(range_shape)

    def apply_adj(q: torch.Tensor) -> torch.Tensor:  # (b, M) -> (b, *f_shape)
        q = q.to(dt).reshape(q.shape[0], *range_shape)
        if op is None:
            return q.reshape(q.shape[0], *f_shape)
        if op_adjoint is not None:
            return op_adjoint(q).reshape(q.shape[0], *f_shape)
        x = torch.zeros((q.shape[0], *f_shape), dtype=dt, device=dev, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad((op(x) * q).sum(), x)
        return g

    l = min(rank + oversample, P, M)
    if rank > l:
        raise UserError(f"--rank {rank} exceeds the Jacobian's size ({M} x {P})")

    def jvp_one(w: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(image, (theta,), (w,))[1]

    _, vjp_fn = torch.func.vjp(image, theta)

    def vjp_one(c: torch.Tensor) -> torch.Tensor:
        return vjp_fn(c)[0]

    timings: dict[str, float] = {"setup_s": time.perf_counter() - t0}
    vec = True

    def J(W: torch.Tensor) -> torch.Tensor:  # (b, P) -> (b, M)
        nonlocal vec
        t = time.perf_counter()
        Y, ok = _batched(jvp_one, W.to(dt), chunk)
        vec = vec and ok
        timings["jvp_s"] = timings.get("jvp_s", 0.0) + time.perf_counter() - t
        return apply_op(Y.detach())

    def JT(C: torch.Tensor) -> torch.Tensor:  # (b, M) -> (b, P)
        nonlocal vec
        t = time.perf_counter()
        X = apply_adj(C).detach()
        G, ok = _batched(vjp_one, X, chunk)
        vec = vec and ok
        timings["vjp_s"] = timings.get("vjp_s", 0.0) + time.perf_counter() - t
        return G.detach()

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    omega = torch.randn((l, P), generator=gen, dtype=torch.float32).to(device=dev, dtype=dt)
    Q = _orth(J(omega).T)  # (M, l)
    del omega
    for _ in range(power_iters):
        Z = _orth(JT(Q.T).T)  # (P, l)
        Q = _orth(J(Z.T).T)
    B = JT(Q.T)  # (l, P)
    t = time.perf_counter()
    small = B.double() if P * l <= 50_000_000 else B.float()
    U_b, S, Vh = torch.linalg.svd(small, full_matrices=False)
    left = (Q.to(U_b.dtype) @ U_b).T  # (l, M)
    timings["svd_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return JacobianSVD(
        singular_values=S[:rank].cpu().numpy().astype(np.float64),
        left=left[:rank].cpu().numpy(),
        right=Vh[:rank].to(torch.float32).cpu(),
        names=names,
        sizes=[math.prod(s) for s in shapes],
        timings=timings,
        vectorised=vec,
    )


# --------------------------------------------------------------------------------------------------
# derived quantities
# --------------------------------------------------------------------------------------------------
def hoyer(v: np.ndarray | torch.Tensor) -> float:
    """Hoyer sparsity ``(sqrt(n) - |v|_1/|v|_2) / (sqrt(n) - 1)``: 0 = flat, 1 = one spike."""
    v = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64).ravel()
    n = v.size
    l2 = np.linalg.norm(v)
    if n < 2 or l2 == 0:
        return 0.0
    return float((math.sqrt(n) - np.abs(v).sum() / l2) / (math.sqrt(n) - 1))


def layer_of(name: str) -> str:
    """Layer a parameter belongs to: its module path without the trailing ``weight``/``bias``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def parameter_shares(right: torch.Tensor, names: list[str], sizes: list[int], groups: Mapping[str, str] | None = None
                     ) -> tuple[list[str], np.ndarray]:
    """Share ``|v_G|^2 / |v|^2`` of each group G for each right singular vector (rows of ``right``).

    ``groups`` maps parameter name -> group label (default: :func:`layer_of`). Returns the group
    labels in first-seen order and a (k, n_groups) array whose rows sum to one.
    """
    labels: list[str] = []
    idx = []
    for n in names:
        g = groups[n] if groups is not None else layer_of(n)
        if g not in labels:
            labels.append(g)
        idx.append(labels.index(g))
    sq = right.double() ** 2
    out = np.zeros((right.shape[0], len(labels)))
    start = 0
    for i, s in zip(idx, sizes):
        out[:, i] += sq[:, start : start + s].sum(1).numpy()
        start += s
    tot = out.sum(1, keepdims=True)
    return labels, out / np.where(tot > 0, tot, 1.0)


def encoder_decoder_groups(net: torch.nn.Module) -> dict[str, str]:
    """Parameter name -> ``encoder`` | ``decoder``: the encoder is ``net.encoder_parameters()``
    when the network defines it (ctdip's U-Net: ``inc`` and the ``down`` blocks, what EDIP-FE
    freezes); otherwise parameters under modules named ``inc``/``down``/``enc*`` count as encoder."""
    enc_ids = set()
    if hasattr(net, "encoder_parameters"):
        enc_ids = {id(p) for p in net.encoder_parameters()}
    out = {}
    for n, p in net.named_parameters():
        top = n.split(".", 1)[0].lower()
        is_enc = id(p) in enc_ids if enc_ids else (top in ("inc", "down") or top.startswith("enc"))
        out[n] = "encoder" if is_enc else "decoder"
    return out


# --------------------------------------------------------------------------------------------------
# a network at its parameters: J of A f_theta(z), NTK eigenimages, summaries, outputs
# --------------------------------------------------------------------------------------------------
def network_function(net: torch.nn.Module, z: torch.Tensor) -> tuple[Callable[[Params], torch.Tensor], dict[str, torch.Tensor]]:
    """``(f, theta)`` with ``f(theta) = net(z)`` evaluated functionally (``torch.func.functional_call``)
    and ``theta`` the network's trainable parameters (buffers are held fixed)."""
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in net.named_buffers()}

    def f(theta: Params) -> torch.Tensor:
        return torch.func.functional_call(net, {**buffers, **theta}, (z,))

    return f, params


def analyse_network(
    net: torch.nn.Module,
    z: torch.Tensor,
    op: Callable[[torch.Tensor], torch.Tensor] | None = None,
    op_adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 20,
    ntk_rank: int | None = 8,
    oversample: int = 10,
    power_iters: int = 1,
    seed: int = 0,
    chunk: int | None = 16,
    keep_vectors: int = 4,
    image_shape: tuple[int, ...] | None = None,
) -> dict:
    """Spectrum of ``J = d op(net(z)) / d theta`` and the NTK eigenimages of ``d net(z) / d theta``.

    Returns a dict of numpy arrays and scalars (what :func:`save_npz` writes): singular values,
    left singular vectors (measurement space), the ``keep_vectors`` leading and trailing right
    singular vectors, Hoyer sparsity and per-layer / encoder-decoder shares of every right
    singular vector, NTK eigenvalues and eigenimages, and timings in seconds.
    """
    net = net.eval()
    f, params = network_function(net, z)
    n_params = sum(p.numel() for p in params.values())
    res = randomized_jacobian_svd(f, params, rank, op=op, op_adjoint=op_adjoint, oversample=oversample,
                                  power_iters=power_iters, seed=seed, chunk=chunk)
    layers, layer_sh = parameter_shares(res.right, res.names, res.sizes)
    groups, group_sh = parameter_shares(res.right, res.names, res.sizes, encoder_decoder_groups(net))
    for g in ("encoder", "decoder"):  # always both columns, in this order
        if g not in groups:
            groups.append(g)
            group_sh = np.concatenate([group_sh, np.zeros((group_sh.shape[0], 1))], 1)
    order = [groups.index("encoder"), groups.index("decoder")]
    hoy = np.array([hoyer(v) for v in res.right])
    kv = min(keep_vectors, rank)
    out: dict = {
        "singular_values": res.singular_values,
        "left_vectors": res.left.astype(np.float32),
        "right_leading": res.right[:kv].numpy(),
        "right_trailing": res.right[-kv:].numpy(),
        "right_trailing_index": np.arange(rank - kv, rank),
        "hoyer": hoy,
        "layer_names": np.array(layers),
        "layer_shares": layer_sh,
        "group_names": np.array(["encoder", "decoder"]),
        "group_shares": group_sh[:, order],
        "n_params": np.int64(n_params),
        "rank": np.int64(rank),
        "oversample": np.int64(oversample),
        "power_iters": np.int64(power_iters),
        "seed": np.int64(seed),
        "time_jacobian_s": np.float64(res.timings["total_s"]),
        "vectorised": np.bool_(res.vectorised),
    }
    if ntk_rank:
        ntk = randomized_jacobian_svd(f, params, ntk_rank, oversample=oversample, power_iters=power_iters,
                                      seed=seed + 1, chunk=chunk)
        with torch.no_grad():
            img_shape = tuple(net(z).shape[2:]) if image_shape is None else tuple(image_shape)
        out["ntk_eigenvalues"] = ntk.singular_values**2
        out["ntk_eigenimages"] = ntk.left.reshape(ntk_rank, *img_shape).astype(np.float32)
        out["time_ntk_s"] = np.float64(ntk.timings["total_s"])
    return out


def summary_lines(res: dict, tail: float = 0.1) -> list[str]:
    """Human-readable summary: spectrum range, Hoyer sparsity and encoder share, leading vs trailing."""
    s = res["singular_values"]
    k = len(s)
    n = max(1, int(round(k * tail)))
    enc = res["group_shares"][:, 0]
    lines = [
        f"parameters: {int(res['n_params'])}, rank {k} (+{int(res['oversample'])} oversampling, "
        f"{int(res['power_iters'])} power iterations), Jacobian SVD in {float(res['time_jacobian_s']):.1f} s"
        + (f", NTK in {float(res['time_ntk_s']):.1f} s" if "time_ntk_s" in res else ""),
        f"singular values: sigma_1 = {s[0]:.4g}, sigma_{k} = {s[-1]:.4g} (ratio {s[0] / max(s[-1], 1e-300):.3g})",
        f"Hoyer sparsity of right singular vectors: leading {n}: {res['hoyer'][:n].mean():.3f}, "
        f"trailing {n}: {res['hoyer'][-n:].mean():.3f}",
        f"encoder share of right singular vectors: leading {n}: {enc[:n].mean():.3f}, trailing {n}: {enc[-n:].mean():.3f}",
    ]
    return lines


def save_npz(res: dict, path: str | Path) -> Path:
    """Everything in ``res`` as a compressed ``.npz`` (atomic write)."""
    import io as _io

    from ctdip.core.io import atomic_write_bytes

    buf = _io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in res.items()})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_spectrum(res: dict, path: str | Path, title: str = "") -> None:
    """Singular values (log scale), Hoyer sparsity and encoder/decoder share per right singular vector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["singular_values"]
    i = np.arange(1, len(s) + 1)
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    ax[0].semilogy(i, s, ".-", ms=4)
    ax[0].set_title("singular values of J = d(A f)/d theta", fontsize=9)
    ax[0].set_xlabel("index i")
    ax[0].set_ylabel("sigma_i")
    ax[1].plot(i, res["hoyer"], ".-", ms=4, color="C1")
    ax[1].set_ylim(0, 1)
    ax[1].set_title("Hoyer sparsity of right singular vector v_i", fontsize=9)
    ax[1].set_xlabel("index i")
    gs = res["group_shares"]
    ax[2].stackplot(i, gs[:, 0], gs[:, 1], labels=["encoder", "decoder"], colors=["C0", "C2"], alpha=0.8)
    ax[2].set_ylim(0, 1)
    ax[2].set_xlim(1, max(2, len(s)))
    ax[2].set_title("share of |v_i|^2 per network part", fontsize=9)
    ax[2].set_xlabel("index i")
    ax[2].legend(fontsize=8, loc="lower right")
    for a in ax:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, Path(path))
    plt.close(fig)


def plot_eigenimages(res: dict, path: str | Path, max_images: int = 8) -> None:
    """The leading NTK eigenimages (central slice for 3D), each on its own symmetric colour range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ims = res["ntk_eigenimages"][:max_images]
    ev = res["ntk_eigenvalues"][:max_images]
    n = len(ims)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (im, e) in enumerate(zip(ims, ev)):
        im2 = np.squeeze(im)
        if im2.ndim == 3:
            im2 = im2[im2.shape[0] // 2]
        m = float(np.abs(im2).max()) or 1.0
        ax = axes.ravel()[k]
        ax.imshow(im2, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_title(f"u_{k + 1}  (lambda = {e:.3g})", fontsize=8)
    fig.suptitle("NTK eigenimages (J_f J_f^T, image space)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, Path(path))
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# runs and weight files
# --------------------------------------------------------------------------------------------------
@dataclass
class Subject:
    """A network at its parameters, its input and the problem whose operator it is analysed with."""

    net: torch.nn.Module
    z: torch.Tensor
    problem: object  # ctdip.core.problem.Problem
    source: Path
    info: dict = field(default_factory=dict)


def load_subject(source: str | Path, scan: str | Path | None = None, scan_options: dict | None = None,
                 device: str = "cpu", input_kind: str = "fbp", seed: int = 0, backend: str | None = None) -> Subject:
    """Network, input and problem for ``ctdip spectrum``.

    ``source`` is a DIP run folder (its ``checkpoint.pt`` holds ``network_arch``, ``network`` and
    the input ``z``; the scan folder, scan options, backend and held-out views come from its
    config.yaml, ``scan``/``scan_options`` override them) or a weights file of ``ctdip pretrain``
    (then ``scan`` is required and the input is the FBP of the scan, as in EDIP, or seeded noise
    with ``input_kind="noise"``).
    """
    from ctdip.core.data.loader import load_scan
    from ctdip.core.problem import Problem
    from ctdip.dip.runs import RunFolder
    from ctdip.networks import build_network
    from ctdip.networks.weights import build_from_weights, load_weights

    source = Path(source)
    info: dict = {"source": str(source)}
    holdout = 0.0
    opts: dict = {}
    z = None
    if source.is_dir():
        run = RunFolder(source)
        try:
            ck = run.load_checkpoint()
        except Exception as e:  # unreadable / not weights_only-safe
            raise UserError(f"cannot read checkpoint ({type(e).__name__})", path=run.file("checkpoint.pt")) from None
        if not ck or "network_arch" not in ck or "network" not in ck:
            raise UserError("no network checkpoint (spectrum needs a DIP run; classical methods have no network)",
                            path=source)
        cfg = run.read_config() if run.file("config.yaml").exists() else {}
        sc = cfg.get("scan") if isinstance(cfg.get("scan"), dict) else {}
        opts = dict(sc.get("options") or {})
        holdout = float(cfg.get("holdout") or 0.0)
        backend = backend or cfg.get("backend")
        if scan is None:
            if not sc.get("folder"):
                raise UserError("run config names no scan folder; give --scan", path=run.file("config.yaml"))
            scan = sc["folder"]
        net = build_network(dict(ck["network_arch"]))
        try:
            net.load_state_dict(ck["network"])
        except RuntimeError as e:
            raise UserError(f"checkpoint does not match its architecture: {str(e).splitlines()[0]}",
                            path=run.file("checkpoint.pt")) from None
        z = ck.get("z")
        info.update(kind="run", method=cfg.get("method"), iteration=ck.get("iteration"))
    elif source.is_file():
        obj = load_weights(source, kind="unet")
        net = build_from_weights(obj, source)
        info.update(kind="weights", geometry_key=obj.get("geometry_key"))
        if scan is None:
            raise UserError("--scan is required with a weights file (the operator A comes from the scan)", path=source)
    else:
        raise UserError("no such run folder or weights file", path=source)
    opts.update({k: v for k, v in dict(scan_options or {}).items() if v is not None})
    sc_obj = load_scan(scan, **opts)
    problem = Problem.from_scan(sc_obj, backend=backend or "auto", device=device, holdout=holdout)
    shape = (1, int(getattr(net, "in_channels", None) or _in_channels(net)), *problem.image_shape)
    if z is None:
        if input_kind == "fbp":
            z = problem.to_image(problem.x_init).detach().expand(shape).contiguous()
        elif input_kind == "noise":
            z = 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))
        else:
            raise UserError(f"--input must be fbp or noise, got '{input_kind}'")
        info["input"] = input_kind
    z = z.float().to(problem.device)
    if tuple(z.shape[2:]) != tuple(problem.image_shape):
        raise UserError(f"network input {tuple(z.shape[2:])} does not match the scan's image grid "
                        f"{tuple(problem.image_shape)} (same --size/--slice/--mode as the run?)", path=source)
    info.update(scan=str(scan), scan_options=opts, image_shape=list(problem.image_shape))
    return Subject(net=net.to(problem.device).eval(), z=z, problem=problem, source=source, info=info)


def _in_channels(net: torch.nn.Module) -> int:
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            return m.in_channels
    return 1


def run_spectrum(subject: Subject, out_dir: str | Path, rank: int = 100, ntk_rank: int = 16, oversample: int = 10,
                 power_iters: int = 1, seed: int = 0, chunk: int | None = 16) -> tuple[dict, dict[str, Path]]:
    """Analyse ``subject`` and write ``spectrum.npz``, ``spectrum.png``, ``eigenimages.png`` and
    ``spectrum.txt`` (the summary lines) into ``out_dir``. Returns (results, written paths)."""
    from ctdip.core.io import atomic_write_text

    p = subject.problem
    res = analyse_network(subject.net, subject.z, op=p.forward, op_adjoint=p.adjoint, rank=rank, ntk_rank=ntk_rank,
                          oversample=oversample, power_iters=power_iters, seed=seed, chunk=chunk,
                          image_shape=tuple(p.image_shape))
    out = Path(out_dir)
    files = {"npz": out / "spectrum.npz", "spectrum": out / "spectrum.png", "eigenimages": out / "eigenimages.png",
             "text": out / "spectrum.txt"}
    res["source"] = np.array(str(subject.source))
    res["measurement_shape"] = np.array(tuple(p.y.shape))
    save_npz(res, files["npz"])
    plot_spectrum(res, files["spectrum"], title=f"{subject.source.name}: {int(res['n_params'])} parameters")
    if ntk_rank:
        plot_eigenimages(res, files["eigenimages"])
    else:
        del files["eigenimages"]
    atomic_write_text(files["text"], "\n".join(summary_lines(res)) + "\n")
    return res, files
