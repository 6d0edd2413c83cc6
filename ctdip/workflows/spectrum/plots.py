"""Figures of ``ctdip spectrum``: the singular values with Hoyer sparsity and encoder/decoder
shares, and a montage of the NTK eigenimages."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ctdip.core.io import save_figure


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

