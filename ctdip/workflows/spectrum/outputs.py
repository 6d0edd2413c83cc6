"""The files of ``ctdip spectrum``: ``spectrum.npz`` (every array), ``spectrum.png``,
``eigenimages.png`` and ``spectrum.txt`` (the summary lines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctdip.workflows.spectrum.analysis import analyse_network, summary_lines
from ctdip.workflows.spectrum.plots import plot_eigenimages, plot_spectrum
from ctdip.workflows.spectrum.subject import Subject


def save_npz(res: dict, path: str | Path) -> Path:
    """Everything in ``res`` as a compressed ``.npz`` (atomic write)."""
    import io as _io

    from ctdip.core.io import atomic_write_bytes

    buf = _io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in res.items()})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)



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
