"""Typed checks of user-given values: one place for "positive", "finite", "integer", "range" and
"choice", used by every command (CLI options, ``--set KEY=VALUE`` method parameters, scan options,
training options).

A failed check raises :class:`~ctdip.errors.UserError` whose one line names the option::

    error: --lr: must be a finite number in (0, 1], got nan
    error: --set iterations: must be a positive integer, got 2.5

Rules (:class:`Rule`):

* numbers must be finite (NaN and +-inf are refused) and not booleans;
* an integer rule accepts integral floats (``3.0`` -> 3) and refuses ``2.5``, lists and text;
* bounds are inclusive unless ``open_min``/``open_max``;
* ``optional`` rules accept None (a feature switched off).

:data:`METHOD_PARAMS` maps every numeric method parameter to its rule; :func:`check_params` applies
it to a method's resolved parameters (both the classical and the DIP base class call it).
:func:`check_output_path` checks an output location before any work is done.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ctdip.errors import UserError


def _fmt(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Rule:
    """A numeric rule: integer or real, optional bounds, optional None, optionally ``"auto"``
    (a value the method chooses itself, e.g. a cross-validated TV weight)."""

    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    optional: bool = False
    auto: bool = False

    def describe(self) -> str:
        """The rule in words: "a positive integer", "a finite number in (0, 1]", ..."""
        lo, hi = self.minimum, self.maximum
        if self.integer:
            if lo == 1 and hi is None:
                return "a positive integer"
            if hi is None and lo is not None:
                return f"an integer >= {_fmt(lo)}"
            if lo is not None and hi is not None:
                return f"an integer in [{_fmt(lo)}, {_fmt(hi)}]"
            return "an integer"
        if lo == 0 and self.open_min and hi is None:
            return "a finite positive number"
        if lo is not None and hi is None:
            return f"a finite number {'>' if self.open_min else '>='} {_fmt(lo)}"
        if lo is None and hi is not None:
            return f"a finite number {'<' if self.open_max else '<='} {_fmt(hi)}"
        if lo is not None and hi is not None:
            return (f"a finite number in {'(' if self.open_min else '['}{_fmt(lo)}, {_fmt(hi)}"
                    f"{')' if self.open_max else ']'}")
        return "a finite number"

    def __call__(self, value: Any, option: str) -> Any:
        """``value`` converted (int or float) if it obeys the rule; UserError naming ``option`` if not."""
        if value is None and self.optional:
            return None
        if self.auto and isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        what = self.describe() + (" (or empty: off)" if self.optional else "") + (" or 'auto'" if self.auto else "")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise UserError(f"{option}: must be {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{option}: must be {what}, got {value!r}")
        v = float(value)
        bad = not math.isfinite(v)
        if self.integer and not bad and not v.is_integer():
            bad = True
        if not bad and self.minimum is not None:
            bad = v <= self.minimum if self.open_min else v < self.minimum
        if not bad and self.maximum is not None:
            bad = v >= self.maximum if self.open_max else v > self.maximum
        if bad:
            raise UserError(f"{option}: must be {what}, got {value if isinstance(value, int) else _fmt_got(v)}")
        return int(v) if self.integer else v


def _fmt_got(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:g}"


POSITIVE_INT = Rule(integer=True, minimum=1)
NONNEG_INT = Rule(integer=True, minimum=0)
POSITIVE = Rule(minimum=0, open_min=True)
NONNEG = Rule(minimum=0)
#: learning rates: Adam/SGD steps above 1 diverge on the normalised losses ctdip uses
LEARNING_RATE = Rule(minimum=0, open_min=True, maximum=1)
FRACTION = Rule(minimum=0, maximum=1, open_max=True)


def choice(value: Any, option: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; UserError listing them otherwise."""
    choices = list(choices)
    if value not in choices:
        raise UserError(f"{option}: must be one of {', '.join(choices)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- method parameters
#: the flag of a method parameter that has one (others are given as --set KEY=VALUE)
PARAM_FLAGS = {"iterations": "--iterations", "lr": "--lr", "tv_weight": "--tv-weight",
               "log_every": "--log-every", "checkpoint_every": "--checkpoint-every"}

#: every numeric method parameter and its rule (parameters not listed are not numbers)
METHOD_PARAMS: dict[str, Rule] = {
    "iterations": POSITIVE_INT,
    "lr": LEARNING_RATE,
    "z_lr": Rule(minimum=0, open_min=True, maximum=1, optional=True),
    "grad_clip": Rule(minimum=0, optional=True),
    "input_std": NONNEG,
    "input_noise": NONNEG,
    "log_every": POSITIVE_INT,
    "checkpoint_every": Rule(integer=True, minimum=0, optional=True),
    "es_window": POSITIVE_INT,
    "es_patience": NONNEG_INT,
    "es_delta": NONNEG,
    "ema_decay": FRACTION,
    "tv_weight": Rule(minimum=0, auto=True),
    "sigma": Rule(minimum=0, auto=True),
    "sigma_factor": POSITIVE,
    "holdout_fraction": FRACTION,
    "switch_noise": NONNEG,
    "rho": POSITIVE,
    "rho_growth": Rule(minimum=1),
    "rho_max": POSITIVE,
    "guard": NONNEG,
    "guard_every": POSITIVE_INT,
    "post_denoise": NONNEG,
    "block_steps": POSITIVE_INT,
    "discrepancy": NONNEG,
    "lam": Rule(minimum=0, auto=True),
    "mu": POSITIVE,
    "mu_growth": Rule(minimum=1),
    "mu_max": POSITIVE,
    "u_every": POSITIVE_INT,
    "prox_iterations": POSITIVE_INT,
    "alpha": NONNEG,
    "realisations": POSITIVE_INT,
    "ensemble": POSITIVE_INT,
    "noise_std": NONNEG,
}


def param_option(key: str) -> str:
    """How the user names method parameter ``key``: its flag, or ``--set key``."""
    return PARAM_FLAGS.get(key, f"--set {key}")


def check_params(params: dict) -> dict:
    """``params`` with every numeric method parameter checked against :data:`METHOD_PARAMS`
    (integral floats become ints); a one-line UserError naming the option otherwise."""
    out = dict(params)
    for k, rule in METHOD_PARAMS.items():
        if k in out:
            out[k] = rule(out[k], param_option(k))
    return out


# --------------------------------------------------------------------------- output locations
def check_output_path(path: str | Path, kind: str = "folder", *, option: str = "-o") -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` ("folder" or "file").

    Refused (one line naming the path): the current directory or one of its parents as a folder, a
    folder that exists as a file (or a file that exists as a folder), a parent that is a file, and
    a location whose nearest existing parent is not writable. Whether an existing folder may be
    reused is the caller's decision. Nothing is created.
    """
    p = Path(path)
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError) as e:
        raise UserError(f"{option} {p}: not a usable path ({e})") from None
    if kind == "folder":
        cwd = Path.cwd().resolve()
        if resolved == cwd or resolved in cwd.parents:
            raise UserError(f"{option} {p}: the output folder must be a new folder, not the current directory "
                            "or one of its parents")
        if p.exists() and not p.is_dir():
            raise UserError(f"{option} {p}: exists and is a file, not a folder")
    else:
        if p.is_dir():
            raise UserError(f"{option} {p}: is a folder; give a file name")
    parent = resolved if (kind == "folder" and p.is_dir()) else resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {p}: {parent} is a file, so nothing can be created below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {p}: {parent} is not writable")
    return p
