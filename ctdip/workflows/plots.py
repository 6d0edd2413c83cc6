"""Run-folder figures: ``preview.png`` (reconstruction, reference, error map; an ensemble's spread)
and ``psnr.png``.

Both are written atomically with matplotlib's Agg backend (no display needed). Volumes show their
middle z slice; images are drawn as arrays (row 0 at the top), the same orientation as
``recon.tif`` in Fiji/napari. The reconstruction and reference share one grey range (the
reference's 0.5-99.5 percentiles, else the reconstruction's); the error map ``recon - reference``
uses a symmetric diverging scale at the 99th percentile of |error|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctdip.core.io import save_figure


def mid_slice(v: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The middle z slice of a (z, y, x) volume and its label ``"z = k of N"`` (k counted from 0,
    as ``--slice`` and the tif's pages; None for a single image)."""
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 3 and v.shape[0] > 1:
        k = v.shape[0] // 2
        return v[k], f"z = {k} of {v.shape[0]}"
    return (v[0] if v.ndim == 3 else v), None


def _mid(v: np.ndarray) -> np.ndarray:
    return mid_slice(v)[0]


def preview(path: str | Path, recon: np.ndarray, reference: np.ndarray | None = None,
            initial: np.ndarray | None = None, title: str = "", voxel_mm: float | None = None,
            psnr: float | None = None, ssim: float | None = None, unit: str = "1/mm",
            spread: np.ndarray | None = None):
    """Write the preview figure: recon | reference | error (or recon | initial FBP without reference),
    and with ``spread`` (an ensemble's ``recon_std.tif``) a last panel of the seeds' standard
    deviation. A volume shows its middle slice, named in the title (``z = k of N``). Returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    r, where = mid_slice(recon)
    panels: list[tuple[str, np.ndarray, str]] = []
    sub = f"PSNR {psnr:.2f} dB, SSIM {ssim:.3f}" if psnr is not None and ssim is not None else ""
    panels.append(("reconstruction" + (f"\n{sub}" if sub else ""), r, "grey"))
    if reference is not None:
        ref = _mid(reference)
        panels.append(("reference", ref, "grey"))
        panels.append(("error (recon - reference)", r - ref, "err"))
        lo, hi = np.percentile(ref, [0.5, 99.5])
    else:
        if initial is not None:
            panels.append(("initial (FBP/FDK)", _mid(initial), "grey"))
        lo, hi = np.percentile(r, [0.5, 99.5])
    if spread is not None:
        panels.append(("spread over the seeds (std)", _mid(spread), "std"))
    if hi <= lo:
        hi = lo + 1e-6
    extent = None
    if voxel_mm:
        ny, nx = r.shape
        extent = (0, nx * voxel_mm, ny * voxel_mm, 0)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.0), squeeze=False,
                             layout="constrained")
    for ax, (name, img, kind) in zip(axes[0], panels):
        if kind == "err":
            m = float(np.percentile(np.abs(img), 99)) or 1e-6
            im = ax.imshow(img, cmap="RdBu_r", vmin=-m, vmax=m, extent=extent)
        elif kind == "std":
            im = ax.imshow(img, cmap="magma", vmin=0, vmax=float(np.percentile(img, 99.5)) or 1e-6, extent=extent)
        else:
            im = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=extent)
        ax.set_title(name, fontsize=10)
        if extent is None:
            ax.set_axis_off()
        else:
            ax.set_xlabel("mm", fontsize=8)
            ax.tick_params(labelsize=7)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(unit, fontsize=8)
    if title or where:
        fig.suptitle(", ".join(t for t in (title, where and f"slice {where}") if t), fontsize=11)
    save_figure(fig, path)
    plt.close(fig)
    return fig


def psnr_curve(path: str | Path, rows: list[dict], title: str = "", marks: dict | None = None) -> bool:
    """Write PSNR (and loss) against iteration from metrics rows; False if there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    it = [r.get("iter") for r in rows]
    ps = [r.get("psnr") for r in rows]
    ls = [r.get("loss") for r in rows]
    have_psnr = any(isinstance(p, (int, float)) for p in ps)
    have_loss = any(isinstance(v, (int, float)) for v in ls)
    if len(rows) < 2 or not (have_psnr or have_loss):
        return False
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    if have_psnr:
        pts = [(i, p) for i, p in zip(it, ps) if isinstance(p, (int, float))]
        ax.plot([a for a, _ in pts], [b for _, b in pts], color="C0", lw=1.4, label="PSNR")
        ax.set_ylabel("PSNR (dB)")
        for name, (mi, mp) in (marks or {}).items():
            if mi is not None and mp is not None:
                ax.plot([mi], [mp], "o", ms=5, label=f"{name} ({mi}: {mp:.2f} dB)")
        ax.legend(fontsize=8, loc="lower right")
    if have_loss:
        ax2 = ax.twinx() if have_psnr else ax
        pts = [(i, v) for i, v in zip(it, ls) if isinstance(v, (int, float)) and v > 0]
        if pts:
            ax2.semilogy([a for a, _ in pts], [b for _, b in pts], color="C3", lw=1.0, alpha=0.6)
            ax2.set_ylabel("loss", color="C3")
            ax2.tick_params(axis="y", colors="C3")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)
    plt.close(fig)
    return True
