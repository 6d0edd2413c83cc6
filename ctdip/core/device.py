"""One resolver for ``--device`` (auto, cpu, cuda, cuda:i), shared by every command."""

from __future__ import annotations

from ctdip.errors import UserError


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is visible, else ``cpu``; ``cpu`` and ``cuda[:i]`` are
    checked (a CUDA request on a machine without one is a one-line error, not a traceback later)."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
        raise UserError(f"--device must be auto, cpu or cuda[:i], got '{device}'")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return d
