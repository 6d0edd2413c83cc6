"""Exceptions that the CLI turns into one clear line and exit code 2 (user mistakes)."""

from __future__ import annotations

from pathlib import Path


class CtdipError(Exception):
    """Base class of ctdip's own errors."""


class UserError(CtdipError):
    """A user mistake: bad input file, bad option, inconsistent data.

    The CLI prints ``error: <path>: <message>`` (or ``error: <message>``) and exits with code 2,
    without a traceback. Raise it with the offending file whenever there is one::

        raise UserError("projection count 119 does not match 120 angles in geometry.yaml",
                        path=scan_dir / "projections.tif")
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.message = message
        self.path = None if path is None else Path(path)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        msg = " ".join(str(self.message).split())
        return f"{self.path}: {msg}" if self.path is not None else msg


class TimeLimitReached(CtdipError):
    """Raised inside a run when ``--time-limit`` is reached after a checkpoint was written."""

    exit_code = 3
