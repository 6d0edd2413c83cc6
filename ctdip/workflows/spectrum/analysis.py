"""What the spectrum of a network's Jacobian says: Hoyer sparsity and parameter shares of the right
singular vectors, and the NTK eigenimages (EDIP paper, Barbano et al. 2022; handbook Fig. 3).

* Hoyer sparsity of a vector ``v`` in R^n: ``(sqrt(n) - |v|_1 / |v|_2) / (sqrt(n) - 1)`` in [0, 1]
  (0: all entries equal in magnitude, 1: a single non-zero).
* Layer share of a right singular vector ``v``: ``|v_L|^2 / |v|^2`` for the parameters ``v_L`` of
  each layer L (and of the encoder vs the decoder); shares sum to one.
* The neural tangent kernel in image space is ``K = J_f J_f^T`` with ``J_f = d f_theta(z) / d theta``;
  its eigenvectors are the left singular vectors of ``J_f`` (the *eigenimages*) and its eigenvalues
  the squared singular values (:func:`~ctdip.workflows.spectrum.rsvd.randomized_jacobian_svd` with
  ``op=None``).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch

from ctdip.workflows.spectrum.rsvd import Params, randomized_jacobian_svd


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

