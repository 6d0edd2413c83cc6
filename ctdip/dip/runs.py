"""Run folders: config snapshot, metrics log, volumes, summary, checkpoints (all writes atomic).

One run of ``ctdip reconstruct`` is one folder, ``runs/<timestamp>_<method>_<dataset>/`` by
default (:func:`default_run_dir`; ``-o`` names another)::

    config.yaml      the resolved settings: method, parameters and their sources, seed, scan
                     options, geometry and volume hashes, scalings (what ``--resume`` reads back)
    metrics.csv      one row per logged iteration (``METRIC_COLUMNS``), appended as the run goes
    recon.tif        the returned reconstruction, in the data's units (float32, voxel size tagged)
    recon_<k>.tif    the picks a method keeps: ``es`` (ES-WMV early stop), ``ema`` (output
                     average), ``best`` (peak PSNR; only with a reference)
    summary.json     the run's numbers (PSNR/SSIM with a reference, timings, the method's results)
    checkpoint.pt    the iteration state a resume continues from bit for bit
    preview.png, psnr.png   figures (``ctdip.workflows.plots``)

The README ("DIP methods", "What the engine writes") describes the files for users. This module
writes and reads them; a run folder is finished when ``summary.json`` and ``recon.tif`` exist.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from pathlib import Path

import numpy as np
import yaml

from ctdip.core.io import TMP_SUFFIX, atomic_write_bytes, atomic_write_text, plain, write_tiff

METRIC_COLUMNS = ["iter", "loss", "data_fit", "reg", "psnr", "ssim", "wmv", "holdout", "time_s"]


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
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(plain(config), sort_keys=False))

    def read_config(self) -> dict:
        with open(self.file("config.yaml")) as f:
            return yaml.safe_load(f) or {}

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.file("summary.json"), json.dumps(plain(summary), indent=2) + "\n")

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
