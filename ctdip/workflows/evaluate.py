"""Evaluation tables and plots over run folders and plain volumes (``ctdip evaluate``).

For each input (a run folder, or a ``.tif``/``.tiff``/``.npy`` volume from any tool) one row:

* ``psnr``, ``ssim``: of the returned reconstruction (``recon.tif``) against the reference,
  ``PSNR = 10 log10(R^2 / MSE)`` and Gaussian-window SSIM with ``R = max(ref) - min(ref)``
  (:mod:`ctdip.core.metrics`; identical to scikit-image's), over the ``--mask`` region if given;
* ``peak_psnr``/``peak_iter``, ``final_psnr``/``final_iter``: from the run's logged PSNR curve
  (metrics.csv, computed during the run against the run's own reference): peak = maximum over the
  logged iterates, final = the last logged iterate (:func:`ctdip.core.metrics.curve_numbers`, the same
  definitions as the console summary and summary.json's ``returned``/``final``/``peak``);
* ``es_psnr``/``es_iter``: the early-stopped pick (``recon_es.tif`` against the reference when
  both exist, else the curve at the early-stop iteration);
* ``steady_psnr``: median of the last 10 % of the curve; ``rise_time``: first iteration within
  0.1 dB of it (curves of at least 10 points; EDIP paper's definitions, :func:`ctdip.core.metrics.steady_psnr`, :func:`rise_time`);
* ``holdout``: the last held-out-view residual logged (runs made with ``--holdout``);
* ``wall_s``: the run's wall time.

Values that cannot be computed (no reference, no curve) are left empty: evaluation works on runs
without a reference and reports what it can.

The reference is ``--reference`` (a volume file, or a scan folder holding ``reference.tif``);
without it, each run's own scan reference is used when its config names a scan folder that has one.
A reference on the scan's full grid is cut and resampled to each run's slice and grid
(:func:`reference_for_run`), so ``--reference walnut1/reference.tif`` scores 2D runs of a 3D scan.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ctdip.core import metrics
from ctdip.core.io import atomic_write_text, save_figure
from ctdip.dip.runs import RunFolder
from ctdip.errors import UserError

VOLUME_SUFFIXES = (".tif", ".tiff", ".npy")

#: Output columns, in order, with their headers in the human-readable table.
COLUMNS: list[tuple[str, str]] = [
    ("name", "run"),
    ("method", "method"),
    ("psnr", "PSNR (returned)"),
    ("ssim", "SSIM (returned)"),
    ("peak_psnr", "peak PSNR"),
    ("peak_iter", "@it"),
    ("es_psnr", "ES PSNR"),
    ("es_iter", "@it"),
    ("final_psnr", "final PSNR"),
    ("final_iter", "@it"),
    ("rise_time", "rise"),
    ("steady_psnr", "steady PSNR"),
    ("holdout", "held-out res."),
    ("wall_s", "wall s"),
]
_DECIMALS = {"psnr": 2, "peak_psnr": 2, "es_psnr": 2, "final_psnr": 2, "steady_psnr": 2, "ssim": 4,
             "holdout": 4, "wall_s": 1}


@dataclass
class Entry:
    """One thing to evaluate: a run folder or a plain volume."""

    name: str
    path: Path
    kind: str  # "run" | "volume"
    recon: np.ndarray  # (z, y, x) float32
    method: str | None = None
    recon_es: np.ndarray | None = None
    metrics: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    reference_path: Path | None = None  # used for this entry (after evaluation)


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
def read_volume(path: str | Path) -> np.ndarray:
    """A volume as float32 (z, y, x) from ``.tif``/``.tiff``/``.npy`` (2D images get z = 1)."""
    path = Path(path)
    if not path.exists():
        raise UserError("no such file", path=path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            from ctdip.core.io import quiet_tifffile

            with quiet_tifffile():
                arr = tifffile.imread(path)
        elif suffix == ".npy":
            from ctdip.core.io import read_npy

            arr = read_npy(path)
        else:
            raise UserError(f"unsupported volume format '{suffix}' (use .tif, .tiff or .npy)", path=path)
    except UserError:
        raise
    except Exception as e:  # tifffile / numpy parse errors
        raise UserError(f"cannot read volume ({type(e).__name__}: {e})", path=path) from None
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.number) or arr.ndim not in (2, 3):
        raise UserError(f"expected a 2D or 3D numeric array, got {arr.dtype} with shape {arr.shape}", path=path)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise UserError("volume contains NaN or infinite values", path=path)
    return arr[None] if arr.ndim == 2 else arr


def reference_file(path: str | Path) -> Path:
    """The reference volume for ``path``: the file itself, or ``reference.tif`` in a scan folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("reference.tif", "reference.tiff", "reference.npy"):
            if (path / name).exists():
                return path / name
        raise UserError("folder has no reference.tif", path=path)
    if not path.exists():
        raise UserError("no such reference file", path=path)
    return path


def _scan_path_from_config(cfg: dict) -> Path | None:
    """The scan folder a run was made from, as recorded in its config.yaml (``scan.folder``)."""
    cands: list[Any] = []
    scan = cfg.get("scan")
    if isinstance(scan, dict):
        cands += [scan.get("folder"), scan.get("path")]
    else:
        cands.append(scan)
    for c in cands:
        if isinstance(c, str) and c:
            return Path(c)
    return None


def run_reference(entry: Entry) -> tuple[np.ndarray, Path] | None:
    """The reference a run was scored against: ``<scan>/reference.tif`` when its shape matches
    the reconstruction, else the scan re-read with the run's scan options (``--slice``, ``--size``
    resample the reference exactly as during the run). None when the scan has no reference."""
    if entry.kind != "run":
        return None
    scan = _scan_path_from_config(entry.config)
    if scan is None:
        return None
    if not scan.is_absolute() and not scan.is_dir():
        # recorded relative to where the run was started: try the run folder's ancestors
        for base in entry.path.resolve().parents:
            if (base / scan).is_dir():
                scan = base / scan
                break
    if not scan.is_dir():
        return None
    direct = next((scan / n for n in ("reference.tif", "reference.tiff", "reference.npy") if (scan / n).exists()), None)
    if direct is not None:
        ref = read_volume(direct)
        if ref.shape == entry.recon.shape:
            return ref, direct
    opts = (entry.config.get("scan") or {}).get("options") if isinstance(entry.config.get("scan"), dict) else None
    from ctdip.core.data.loader import load_scan

    try:
        sc = load_scan(scan, print_warnings=False, **{k: v for k, v in dict(opts or {}).items() if v is not None})
    except (UserError, TypeError):
        return None
    if sc.reference is None:
        return None
    ref = np.asarray(sc.reference, dtype=np.float32).reshape(-1, *np.shape(sc.reference)[-2:])
    return (ref, scan) if ref.shape == entry.recon.shape else None


def reference_for_run(entry: Entry, ref: np.ndarray) -> np.ndarray:
    """``ref`` as the run saw it: a volume on the scan's full grid (e.g. a 3D ``reference.tif``
    given to a 2D run) becomes the run's slice (``scan.info.slice`` in config.yaml) resampled to
    the run's grid (``--size``) exactly as :func:`ctdip.core.data.loader.load_scan` does. Returned
    unchanged when the shapes already match or the config does not say how (the shape check then
    reports the mismatch)."""
    if entry.kind != "run" or ref.shape == entry.recon.shape:
        return ref
    from ctdip.core.data.loader import resample
    from ctdip.core.geometry import VolumeGeometry

    scan = entry.config.get("scan") if isinstance(entry.config.get("scan"), dict) else {}
    info = scan.get("info") or {}
    vol = entry.config.get("volume") or {}
    try:
        run_vol = VolumeGeometry(tuple(vol["shape"]), tuple(vol["voxel_mm"]), tuple(vol["center_mm"]))
    except (KeyError, TypeError, UserError):
        return ref
    if tuple(run_vol.shape) != entry.recon.shape:
        return ref
    full = info.get("volume_full") or {}
    if full and tuple(full.get("shape", ())) == ref.shape:
        old = VolumeGeometry(tuple(full["shape"]), tuple(full["voxel_mm"]), tuple(full["center_mm"]))
    else:  # older runs: assume the reference spans the run's field of view
        n_run = run_vol.shape[1:]
        vox = [run_vol.voxel_mm[a + 1] * n_run[a] / ref.shape[a + 1] for a in range(2)]
        dz = run_vol.voxel_mm[0] if run_vol.shape[0] == 1 else run_vol.extent_mm[0] / ref.shape[0]
        old = VolumeGeometry(ref.shape, (dz, *vox), run_vol.center_mm)
    if run_vol.shape[0] == 1 and ref.shape[0] > 1:
        z = info.get("slice")
        if not isinstance(z, int) or not 0 <= z < ref.shape[0]:
            return ref
        ref = ref[z:z + 1]
        old = VolumeGeometry((1, *old.shape[1:]), old.voxel_mm, (0.0, *old.center_mm[1:]))
    return np.asarray(resample(ref, old, run_vol), dtype=np.float32)


def _read_optional(run: RunFolder, name: str, read: Callable[[], Any], kind: str) -> Any:
    """``read()`` of the run's file ``name``, ``{}`` when it is absent; unreadable: a UserError."""
    if not run.file(name).exists():
        return {}
    try:
        return read()
    except Exception as e:
        raise UserError(f"bad {kind} ({type(e).__name__})", path=run.file(name)) from None


def load_entry(path: str | Path) -> Entry:
    """A run folder (with recon.tif) or a plain volume file."""
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        if not run.file("recon.tif").exists():
            hint = " (unfinished run?)" if run.file("config.yaml").exists() else " (not a run folder)"
            raise UserError("no recon.tif" + hint, path=path)
        cfg = _read_optional(run, "config.yaml", run.read_config, "YAML")
        if not isinstance(cfg, dict):
            raise UserError("config is not a mapping", path=run.file("config.yaml"))
        summary = _read_optional(run, "summary.json", run.read_summary, "JSON")
        try:
            rows = run.read_metrics()
        except Exception as e:
            raise UserError(f"cannot read metrics ({type(e).__name__})", path=run.file("metrics.csv")) from None
        method = summary.get("method") or cfg.get("method")
        if isinstance(method, dict):
            method = method.get("name")
        ens = ((summary or {}).get("result") or {}).get("ensemble")
        if method is not None and ens:  # ctdip.workflows.ensemble: the mean of N seeds' runs
            method = f"{method} x{ens['n']}"
        es = read_volume(run.file("recon_es.tif")) if run.file("recon_es.tif").exists() else None
        return Entry(name=path.name or str(path), path=path, kind="run", recon=read_volume(run.file("recon.tif")),
                     method=None if method is None else str(method), recon_es=es, metrics=rows,
                     summary=summary, config=cfg)
    if path.suffix.lower() in VOLUME_SUFFIXES or path.exists():
        return Entry(name=path.stem, path=path, kind="volume", recon=read_volume(path), method="file")
    raise UserError("no such run folder or volume file", path=path)


# --------------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------------
def _mask_for(kind: str | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if kind in (None, "none"):
        return None
    if kind == "circle":
        return metrics.circle_mask(shape)
    raise UserError(f"unknown mask '{kind}'; choose one of: none, circle")


def _check_shapes(x: np.ndarray, ref: np.ndarray, what: Path, ref_path: Path | None) -> None:
    if x.shape != ref.shape:
        raise UserError(f"reconstruction shape {x.shape} does not match reference shape {ref.shape}"
                        + (f" ({ref_path})" if ref_path else ""), path=what)


def curve(entry: Entry, column: str = "psnr") -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of a logged metric, rows without a value dropped."""
    its, vals = [], []
    for r in entry.metrics:
        v = r.get(column)
        if isinstance(v, (int, float)) and math.isfinite(v) and r.get("iter") is not None:
            its.append(int(r["iter"]))
            vals.append(float(v))
    return np.asarray(its, dtype=int), np.asarray(vals, dtype=float)


def _first(d: dict, *keys: str) -> Any:
    for k in keys:
        v = d.get(k)
        if v is not None:
            return v
    return None


def _sub(d: dict, key: str, sub: str) -> Any:
    """``d[key][sub]`` when present (summary.json nests peak/final/early_stop numbers)."""
    v = d.get(key)
    return v.get(sub) if isinstance(v, dict) else None


def evaluate_entry(entry: Entry, reference: np.ndarray | None, mask: str | None = None,
                   reference_path: Path | None = None) -> dict:
    """One evaluation row (see module docstring for the columns)."""
    row: dict[str, Any] = {k: None for k, _ in COLUMNS}
    row["name"], row["method"] = entry.name, entry.method
    s = entry.summary
    if reference is not None:
        _check_shapes(entry.recon, reference, entry.path, reference_path)
        m = _mask_for(mask, reference.shape)
        row["psnr"] = metrics.psnr(entry.recon, reference, mask=m)
        row["ssim"] = metrics.ssim(entry.recon, reference, mask=m)
    elif entry.kind == "run":  # the run's own numbers, when it had a reference ("final": older runs)
        own = s.get("returned") if isinstance(s.get("returned"), dict) else s.get("final")
        row["psnr"] = _sub({"r": own}, "r", "psnr")
        row["ssim"] = _sub({"r": own}, "r", "ssim")
    its, ps = curve(entry)
    cn = metrics.curve_numbers(entry.metrics)  # the same definitions as summary.json
    if cn:
        row["peak_psnr"], row["peak_iter"] = cn["peak"]["psnr"], cn["peak"]["iter"]
        row["final_psnr"], row["final_iter"] = cn["final"]["psnr"], cn["final"]["iter"]
        row["steady_psnr"], row["rise_time"] = cn.get("steady_psnr"), cn.get("rise_time")
    elif entry.kind == "run":
        row["peak_psnr"], row["peak_iter"] = _sub(s, "peak", "psnr"), _sub(s, "peak", "iter")
        if s.get("returned") is not None:  # a current summary: "final" is the last iterate
            row["final_psnr"], row["final_iter"] = _sub(s, "final", "psnr"), _sub(s, "final", "iter")
    if entry.kind == "run":
        es_iter = _sub(s, "early_stop", "iter")
        if es_iter is None:
            es_iter = _first(s, "es_iter")
        row["es_iter"] = None if es_iter is None else int(es_iter)
        if reference is not None and entry.recon_es is not None:
            row["es_psnr"] = metrics.psnr(entry.recon_es, reference, mask=_mask_for(mask, reference.shape))
        elif es_iter is not None and len(ps) and int(es_iter) in set(its.tolist()):
            row["es_psnr"] = float(ps[list(its).index(int(es_iter))])
        else:
            row["es_psnr"] = _sub(s, "early_stop", "psnr")
        row["final_iter"] = row["final_iter"] if row["final_iter"] is not None else _first(s, "iterations")
        h_its, h = curve(entry, "holdout")
        row["holdout"] = float(h[-1]) if len(h) else None
        wall = _first(s, "wall_time_s", "wall_s")
        if wall is None:
            t_its, t = curve(entry, "time_s")
            wall = float(t[-1]) if len(t) else None
        row["wall_s"] = None if wall is None else float(wall)
    return row


def _is_unfinished_run(p: Path) -> bool:
    return p.is_dir() and (p / "config.yaml").exists() and not (p / "recon.tif").exists()


def evaluate(paths: Sequence[str | Path], reference: str | Path | None = None, mask: str | None = None,
             on_unfinished: Callable[[Path], None] | None = None
             ) -> tuple[list[dict], list[Entry], dict[str, np.ndarray]]:
    """Evaluate runs/volumes. Returns (rows, entries, references by entry name).

    ``reference``: a volume file or a scan folder; None = each run's own scan reference if any.
    ``on_unfinished``: when given, run folders without recon.tif yet (still running, or killed)
    are passed to it and skipped instead of being an error (``ctdip evaluate runs/*/``).
    """
    if not paths:
        raise UserError("nothing to evaluate: give one or more run folders or volume files")
    _mask_for(mask, (1, 2, 2))  # validate early
    paths = [Path(p) for p in paths]
    if on_unfinished is not None:
        for p in paths:
            if _is_unfinished_run(p):
                on_unfinished(p)
        paths = [p for p in paths if not _is_unfinished_run(p)]
        if not paths:
            raise UserError("nothing to evaluate: every run given is unfinished (no recon.tif yet)")
    entries = [load_entry(p) for p in paths]
    _unique_names(entries)
    cache: dict[Path, np.ndarray] = {}

    def ref_of(p: Path | None) -> np.ndarray | None:
        if p is None:
            return None
        p = p.resolve()
        if p not in cache:
            cache[p] = read_volume(p)
        return cache[p]

    global_ref = reference_file(reference) if reference is not None else None
    rows, refs = [], {}
    for e in entries:
        if global_ref is not None:
            rp, ref = global_ref, reference_for_run(e, ref_of(global_ref))
        else:
            found = run_reference(e)
            ref, rp = found if found is not None else (None, None)
        e.reference_path = rp
        rows.append(evaluate_entry(e, ref, mask, rp))
        if ref is not None:
            refs[e.name] = ref
    return rows, entries, refs


def _unique_names(entries: list[Entry]) -> None:
    seen: dict[str, int] = {}
    for e in entries:
        seen[e.name] = seen.get(e.name, 0) + 1
    for e in entries:
        if seen[e.name] > 1:
            e.name = f"{e.path.parent.name}/{e.name}"


# --------------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------------
def _cell(key: str, v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else ""
        return f"{v:.{_DECIMALS.get(key, 4)}f}"
    return str(v)


def format_rows(rows: list[dict], fmt: str = "table") -> str:
    """Rows as ``csv`` (full precision), ``md`` (a GitHub table), ``json`` or ``table`` (plain text)."""
    keys = [k for k, _ in COLUMNS]
    if fmt == "json":
        return json.dumps([{k: _jsonable(r.get(k)) for k in keys} for r in rows], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(keys)
        for r in rows:
            w.writerow(["" if r.get(k) is None else (f"{r[k]:.9g}" if isinstance(r[k], float) else r[k]) for k in keys])
        return buf.getvalue()
    head = [h for _, h in COLUMNS]
    body = [[_cell(k, r.get(k)) for k in keys] for r in rows]
    if fmt == "md":
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
        out += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(out) + "\n"
    if fmt == "table":
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "\n".join([line(head)] + [line(b) for b in body]) + "\n"
    raise UserError(f"unknown format '{fmt}'; choose one of: table, csv, md, json")


def rich_table(rows: list[dict], title: str | None = None):
    """The rows as a ``rich.table.Table`` (for terminals)."""
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for i, (k, h) in enumerate(COLUMNS):
        t.add_column(h, justify="left" if i < 2 else "right", no_wrap=i >= 2)
    for r in rows:
        t.add_row(*[_cell(k, r.get(k)) for k, _ in COLUMNS])
    return t


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_tables(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """evaluation.csv, evaluation.md and evaluation.json in ``out_dir`` (atomic writes)."""
    out = Path(out_dir)
    paths = []
    for fmt, name in (("csv", "evaluation.csv"), ("md", "evaluation.md"), ("json", "evaluation.json")):
        atomic_write_text(out / name, format_rows(rows, fmt))
        paths.append(out / name)
    return paths


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def plot_psnr_curves(entries: Iterable[Entry], rows: Iterable[dict], path: str | Path):
    """All logged PSNR curves in one figure (peak: dot, early stop: cross); returns the figure, or
    False if there is no curve. Beyond ``LEGEND_INSIDE_MAX`` curves the legend is outside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries, rows = list(entries), list(rows)
    have = [(e, r) for e, r in zip(entries, rows) if len(curve(e)[1])]
    if not have:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for e, r in have:
        its, ps = curve(e)
        (ln,) = ax.plot(its, ps, lw=1.3, label=f"{e.name} ({e.method})" if e.method else e.name)
        if r.get("peak_iter") is not None:
            ax.plot([r["peak_iter"]], [r["peak_psnr"]], "o", color=ln.get_color(), ms=5)
        if r.get("es_iter") is not None and r.get("es_psnr") is not None:
            ax.plot([r["es_iter"]], [r["es_psnr"]], "x", color=ln.get_color(), ms=7, mew=2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR during reconstruction (o peak, x early stop)")
    ax.grid(alpha=0.3)
    if len(have) <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=8, loc="lower right")
    else:  # many runs: the legend goes right of the axes, in columns of at most 20 entries
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  ncol=math.ceil(len(have) / 20), frameon=False)
    save_figure(fig, Path(path))
    plt.close(fig)
    return fig


#: up to this many curves the legend sits inside the axes, beyond it to their right
LEGEND_INSIDE_MAX = 6


def _mid(v: np.ndarray) -> np.ndarray:
    from ctdip.workflows.plots import mid_slice

    return mid_slice(v)[0]


def plot_montage(entries: Sequence[Entry], rows: Sequence[dict], refs: dict[str, np.ndarray], path: str | Path,
                 max_cols: int = 6):
    """The reference(s) first, then each reconstruction (central slice, named ``z = k of N`` for
    volumes) on one grey range, and their error maps ``x - ref`` on one symmetric colour range;
    colour bars in attenuation (1/mm) when every input is a ctdip run (volumes from other tools:
    their own unit). Without references, only the reconstructions. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctdip.workflows.plots import mid_slice

    imgs = [_mid(e.recon) for e in entries]
    ref_imgs = {k: _mid(v) for k, v in refs.items()}
    if ref_imgs:
        lo = min(float(r.min()) for r in ref_imgs.values())
        hi = max(float(r.max()) for r in ref_imgs.values())
    else:
        allv = np.concatenate([i.ravel() for i in imgs])
        lo, hi = (float(v) for v in np.percentile(allv, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    errs = [imgs[i] - ref_imgs[e.name] if e.name in ref_imgs else None for i, e in enumerate(entries)]
    emax = max([float(np.percentile(np.abs(er), 99.5)) for er in errs if er is not None] or [0.0]) or 1e-12
    with_err = any(er is not None for er in errs)
    # panels: each distinct reference first (one when the entries share it), then the entries
    distinct: list[tuple[np.ndarray, list[str]]] = []
    for e in entries:
        if e.name not in ref_imgs:
            continue
        r = ref_imgs[e.name]
        for img, names in distinct:
            if img.shape == r.shape and np.array_equal(img, r):
                names.append(e.name)
                break
        else:
            distinct.append((r, [e.name]))
    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for img, names in distinct:
        panels.append(("reference" if len(distinct) == 1 else f"reference of {', '.join(names)}", img, None))
    for e, r, im, er in zip(entries, rows, imgs, errs):
        t = e.name
        if r.get("psnr") is not None:
            t += f"\n{r['psnr']:.2f} dB" + (f", SSIM {r['ssim']:.3f}" if r.get("ssim") is not None else "")
        panels.append((t, im, er))
    unit = "attenuation (1/mm)" if all(e.kind == "run" for e in entries) else "value"
    where = [w for w in (mid_slice(e.recon)[1] for e in entries) if w]
    ncols = min(max_cols, len(panels))
    nblocks = math.ceil(len(panels) / ncols)
    per = 2 if with_err else 1
    fig, axes = plt.subplots(nblocks * per, ncols, figsize=(2.3 * ncols + 0.9, 2.45 * nblocks * per), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    im_g = im_e = None
    for k, (title, im, er) in enumerate(panels):
        b, c = divmod(k, ncols)
        ax = axes[b * per, c]
        im_g = ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        if with_err and er is not None:
            ax2 = axes[b * per + 1, c]
            im_e = ax2.imshow(er, cmap="RdBu_r", vmin=-emax, vmax=emax, interpolation="nearest")
            ax2.set_title("error", fontsize=8)
    fig.subplots_adjust(right=0.88, wspace=0.05, hspace=0.25)
    if im_g is not None:
        cax = fig.add_axes([0.90, 0.55 if with_err else 0.15, 0.015, 0.3 if with_err else 0.7])
        cb = fig.colorbar(im_g, cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(unit, fontsize=8)
    if im_e is not None:
        cax = fig.add_axes([0.90, 0.12, 0.015, 0.3])
        cb = fig.colorbar(im_e, cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("x - reference" + (" (1/mm)" if unit != "value" else ""), fontsize=8)
    if where:
        fig.suptitle("central slice" + (f" {where[0]}" if len(set(where)) == 1 else "s"), fontsize=9)
    save_figure(fig, Path(path))
    plt.close(fig)
    return fig
