"""Run folders: config snapshot, metrics log, volumes, summary, checkpoints (all writes atomic).

Layout::

    runs/<timestamp>_<method>_<dataset>/
      config.yaml  metrics.csv  recon.tif  recon_es.tif  recon_best.tif  summary.json
      checkpoint.pt  preview.png  psnr.png
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

TMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<random>.tmp" in the same folder
METRIC_COLUMNS = ["iter", "loss", "data_fit", "reg", "psnr", "ssim", "wmv", "holdout", "time_s"]


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    The file ends with the mode a plain ``open(path, "w")`` gives (0o666 & ~umask, e.g. 0644 under
    umask 022), not mkstemp's private 0600, so colleagues sharing the folder can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_tiff(path: str | Path, volume: np.ndarray, voxel_mm: Iterable[float] | float | None = None) -> None:
    """Write a float32 (z, y, x) volume as an ImageJ hyperstack with its voxel size in mm.

    Fiji and napari read the spacing from the ImageJ metadata (``spacing`` = z step) and the
    X/YResolution tags (pixels per mm).
    """
    import tifffile

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    kwargs: dict[str, Any] = {"imagej": True, "metadata": {"axes": "ZYX", "unit": "mm"}}
    if voxel_mm is not None:
        v = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
        kwargs["resolution"] = (1.0 / v[2], 1.0 / v[1])
        kwargs["metadata"]["spacing"] = float(v[0])
    buf = io.BytesIO()
    tifffile.imwrite(buf, vol, **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def read_tiff_voxel_mm(path: str | Path) -> tuple[float, float, float] | None:
    """Voxel size (z, y, x) in mm from a TIFF written by :func:`write_tiff` (None if absent)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        ij = tf.imagej_metadata or {}
        page = tf.pages[0]
        xr = page.tags.get("XResolution")
        yr = page.tags.get("YResolution")
        if xr is None or yr is None:
            return None
        dx = xr.value[1] / xr.value[0]
        dy = yr.value[1] / yr.value[0]
        return (float(ij.get("spacing", dx)), float(dy), float(dx))


def default_run_dir(method: str, dataset: str, root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in dataset) or "scan"
    return Path(root) / f"{stamp}_{method}_{safe}"


class RunFolder:
    """One run's folder. Every file is written atomically; metrics.csv is appended row by row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def create(self, exist_ok: bool = False) -> "RunFolder":
        self.path.mkdir(parents=True, exist_ok=exist_ok)
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    def clean_stale_temporaries(self) -> list[Path]:
        """Remove ``.<name>.*.tmp`` files left by an atomic write that was killed (SIGKILL, power
        loss) before its rename; only one process works in a run folder, so none is in use."""
        removed = []
        if self.path.is_dir():
            for p in self.path.glob(f".*{TMP_SUFFIX}"):
                if p.is_file():
                    p.unlink()
                    removed.append(p)
        return removed

    # config / summary ---------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(_plain(config), sort_keys=False))

    def read_config(self) -> dict:
        with open(self.file("config.yaml")) as f:
            return yaml.safe_load(f) or {}

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.file("summary.json"), json.dumps(_plain(summary), indent=2) + "\n")

    def read_summary(self) -> dict:
        with open(self.file("summary.json")) as f:
            return json.load(f)

    # metrics ------------------------------------------------------------------------
    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.csv with ``rows`` (atomic; used on resume to drop rows past a checkpoint)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in METRIC_COLUMNS})
        atomic_write_text(self.file("metrics.csv"), buf.getvalue())

    def append_metrics(self, rows: list[dict]) -> None:
        """Append rows to metrics.csv (header written on first use)."""
        p = self.file("metrics.csv")
        new = not p.exists()
        with open(p, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k)) for k in METRIC_COLUMNS})

    def read_metrics(self) -> list[dict]:
        p = self.file("metrics.csv")
        if not p.exists():
            return []
        with open(p, newline="") as f:
            return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]

    # volumes ------------------------------------------------------------------------
    def write_volume(self, name: str, volume: np.ndarray, voxel_mm=None) -> Path:
        p = self.file(name)
        write_tiff(p, volume, voxel_mm)
        return p

    # checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.file("checkpoint.pt"), buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        import torch

        p = self.file("checkpoint.pt")
        if not p.exists():
            return None
        return torch.load(p, map_location="cpu", weights_only=True)

    def is_finished(self) -> bool:
        return self.file("summary.json").exists() and self.file("recon.tif").exists()


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.9g}"
    return v


def _parse(v: str):
    if v == "" or v is None:
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _plain(obj):
    """Convert numpy/torch/Path values to YAML/JSON-safe plain Python."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "item") and hasattr(obj, "numel") and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj
