"""The worker of ``ctdip batch``: one specimen through the ``ctdip reconstruct`` driver, in a
spawned pool process (:mod:`.local`) or a Slurm array task (:mod:`.slurm`). It never raises: a
failure or an interruption comes back as a one-line result.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from ctdip.errors import CtdipError, UserError
from ctdip.workflows.batch.plan import given_options
from ctdip.workflows.batch.signals import SignalLatch, signal_from_message


def run_specimen(scan: str, run_dir: str, method: str, params: dict | None = None,
                 scan_options: dict | None = None, options: dict | None = None, threads: int | None = None,
                 resume: bool = False) -> dict:
    """Reconstruct one specimen with :func:`ctdip.workflows.reconstruct.reconstruct`; never raises.

    Returns ``{"ok": True, "summary": {...}}`` or ``{"ok": False, "error": "<one line>",
    "interrupted": bool}``. ``options`` are the driver's keyword options (seed, device, backend,
    holdout, time_limit, stop_early); ``scan_options`` the scan reader's (angles, size, slice, ...).

    SIGINT/SIGTERM (a forwarded Ctrl-C, Slurm's ``scancel``): a DIP run checkpoints at the end of
    its current iteration; outside the iteration loop the run stops at once. Either way the result
    is ``{"ok": False, "interrupted": True, "signal": signum, "iteration": N}`` with ``N`` the
    checkpoint's iteration (None: no checkpoint yet, the specimen starts again).
    """
    latch = SignalLatch()
    try:
        with latch:
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            from ctdip.workflows.reconstruct import StderrWarnings, reconstruct

            summary = reconstruct(str(scan), method, params=dict(params or {}), output=str(run_dir), resume=resume,
                                  reporter=StderrWarnings(), **_driver_kwargs(scan_options, options))
            return {"ok": True, "summary": _plain_summary(summary)}
    except KeyboardInterrupt as e:
        signum = latch.signum = latch.signum or signal_from_message(str(e))
        it = checkpoint_iteration(run_dir)
        where = f"at iteration {it}, checkpoint written" if it is not None else "before its first checkpoint"
        return {"ok": False, "interrupted": True, "signal": int(signum), "iteration": it,
                "error": f"interrupted {where}"}
    except UserError as e:
        return {"ok": False, "error": e.one_line(), "interrupted": False}
    except CtdipError as e:  # e.g. TimeLimitReached: checkpoint written, resume later
        return {"ok": False, "error": str(e) or type(e).__name__, "interrupted": True,
                "iteration": checkpoint_iteration(run_dir)}
    except Exception as e:  # a crash in one specimen must not stop the others
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        return {"ok": False, "error": f"{type(e).__name__}: {e}{where}".replace("\n", " "), "interrupted": False}


def checkpoint_iteration(run_dir: str | Path) -> int | None:
    """The iteration stored in a run's ``checkpoint.pt`` (None: no readable checkpoint)."""
    p = Path(run_dir) / "checkpoint.pt"
    if not p.is_file():
        return None
    try:
        import torch

        ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        return int(ck["iteration"])
    except Exception:  # noqa: BLE001 - a damaged or foreign file: unknown
        return None


def _driver_kwargs(scan_options: dict | None, options: dict | None) -> dict:
    kw = dict(options or {})
    kw["scan_options"] = given_options(scan_options)  # always explicit: config.yaml records exactly these
    return kw


def _plain_summary(summary: Any) -> dict:
    """The scalar entries of a run's summary (``RunSummary.summary`` or a dict), picklable."""
    summary = getattr(summary, "summary", summary)
    if not isinstance(summary, dict):
        return {}
    out = {}
    for k, v in summary.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
    return out
