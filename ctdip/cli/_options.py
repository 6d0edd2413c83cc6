"""Option declarations and parsing helpers shared by ``reconstruct``, ``batch`` and ``pretrain``.

Each constant is a ``typer.Option`` used as the default of a command parameter, so the flag, its
default and its help text are written once for every command that takes it.
"""

from __future__ import annotations

import typer

from ctdip.core.io import preset_dir
from ctdip.errors import UserError

# method parameters with their own flag (``reconstruct`` and ``batch``)
ITERATIONS = typer.Option(None, "--iterations", "-n", metavar="N", show_default="method preset",
                          help="Iterations (method param).")
LR = typer.Option(None, "--lr", metavar="LR", show_default="method preset", help="Learning rate (DIP methods).")
INPUT = typer.Option(None, "--input", metavar="KIND", help="Network input: noise, fbp, adjoint or learnable.")
NETWORK = typer.Option(None, "--network", metavar="NAME|FILE",
                       help="Network preset (" + ", ".join(sorted(p.stem for p in preset_dir("networks").glob("*.yaml")))
                       + ") or YAML file.")
BACKEND_HELP = "Operator backend: auto, matrix, torch, astra-cuda (or one a plugin registered)."
TV_WEIGHT = typer.Option(None, "--tv-weight", metavar="W|auto",
                         help="TV weight (pdhg-tv, tv, ...), or auto: chosen by held-out-view cross-validation.")
WEIGHTS = typer.Option(None, "--weights", metavar="FILE", help="Pretrained weights file (EDIP).")
# scan option (``reconstruct``, ``batch`` and ``pretrain``)
ORBIT = typer.Option(None, "--orbit", metavar="1|2|3", help="Walnut layout: source position 1, 2 (default) or 3.")


def method_help() -> str:
    """``--method`` help: every registered method, grouped classical / DIP (from the registry)."""
    from ctdip.methods import ALIASES, method_groups

    groups = method_groups()
    alias = ", ".join(f"{a} = {t}" for a, t in ALIASES.items())
    return (f"Classical: {', '.join(groups['classical'])}. DIP: {', '.join(groups['dip'])}. "
            f"Aliases: {alias}. Default fbp.")


def number_or_word(value: str | None):
    """A flag value that is a number or a word (``--tv-weight 2e-3`` / ``--tv-weight auto``): the
    float when it parses as one, else the string (the parameter's rule judges it, naming the flag)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def given(named: dict) -> dict:
    """The entries of ``named`` whose value is not None (options the user gave)."""
    return {k: v for k, v in named.items() if v is not None}


def parse_set(items: list[str] | None, *, option: str = "--set", strict_keys: bool = True,
              message: str = "{option} expects KEY=VALUE, got '{item}'") -> dict:
    """``KEY=VALUE`` pairs -> dict; values are YAML-parsed (``0.5`` -> float, ``[1, 2]`` -> list; ``1e-3``
    stays a string, which the method resolver converts; an empty value -> None; unparsable YAML
    stays a string). With ``strict_keys`` the key is a method parameter's name
    (``ctdip.methods.params.normalise_key``: dashes become underscores) and an empty key is an
    error; otherwise the key is only stripped."""
    import yaml

    from ctdip.methods.params import normalise_key

    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(message.format(option=option, item=item))
        k, v = item.split("=", 1)
        k = k.strip()
        if strict_keys:
            k = normalise_key(k)
            if not k:
                raise UserError(message.format(option=option, item=item))
        try:
            out[k] = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            out[k] = v
    return out

# scan options (``reconstruct``, ``check``, ...): how a scan folder is read
SETUP = typer.Option(None, "--setup", metavar="NAME|FILE", help="Acquisition preset (presets/setups), e.g. walnut-2d-sparse-60; flags override it.")
ANGLES = typer.Option(None, "--angles", metavar="K", help="Use K equispaced views of the scan (K >= 2).")
BIN = typer.Option(None, "--bin", metavar="B", help="Detector binning B (columns in 2D, rows and columns in 3D).")
SLICE = typer.Option(None, "--slice", metavar="Z", help="Volume slice for 2D: index, 'mid', or offset like +3.")
MODE = typer.Option(None, "--mode", metavar="2d|3d", help="2d (one slice, default) or 3d.")
SIZE = typer.Option(None, "--size", metavar="N", help="Reconstruction grid N x N (same field of view, N >= 8).")
