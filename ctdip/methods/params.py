"""Method parameters: the one resolver that every method (classical and DIP) and the driver use.

A method's parameters are resolved in three layers, later ones winning::

    the class's defaults  <  presets/methods/<name>.yaml (params:)  <  the caller's params
                                                     (flags, --set, a setup preset, a resumed run)

In each layer the keys are first put under their current names (:func:`canonical`): surrounding
spaces stripped, dashes turned into underscores (``--set log-every=2`` is ``log_every``), and a
method's old names mapped to the current ones (its ``param_aliases``, e.g. ``inner`` ->
``u_every`` for admm), so an old script keeps working. Then (:func:`resolve`):

* a key the method does not know is a one-line UserError that lists the known ones;
* a string value (``--set lr=1e-3`` is the string ``'1e-3'`` in YAML 1.1, library callers may pass
  ``"7"``) is converted to the type of the default it replaces (:func:`coerce`), except ``auto``
  where the parameter's rule allows it (``--set tv_weight=auto``: the method chooses);
* numbers are checked against the rules of :mod:`ctdip.core.validate`, and an error names the
  option as the user wrote it (``--set inner`` for an old name).

A preset entry is a plain value (its source in the ``sources:`` map) or
``{value: ..., source: ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ctdip.core.io import preset_dir, read_yaml
from ctdip.errors import UserError

PRESET_DIR = preset_dir("methods")


def _entries(params: dict | None, sources: dict | None) -> tuple[dict, dict]:
    """A preset's ``params``/``sources`` maps with each ``{value, source}`` entry split into the two."""
    params, sources = dict(params or {}), dict(sources or {})
    for key, value in list(params.items()):
        if isinstance(value, dict) and "value" in value:
            params[key] = value["value"]
            if "source" in value:
                sources[key] = value["source"]
    return params, sources


def _read(name: str) -> tuple[Path | None, dict]:
    path = PRESET_DIR / f"{name}.yaml"
    return (path, read_yaml(path) or {}) if path.is_file() else (None, {})


def load_preset(name: str) -> dict:
    """``{"path", "params", "sources"}`` of ``presets/methods/<name>.yaml`` (path None and empty
    maps if there is none); ``{value, source}`` entries are split into the two maps."""
    path, data = _read(name)
    params, sources = _entries(data.get("params"), data.get("sources"))
    return {"path": None if path is None else str(path), "params": params, "sources": sources}


def load_dim_preset(name: str, dim: int) -> tuple[dict, dict]:
    """``(params, sources)`` of the ``params_<dim>d:`` / ``sources_<dim>d:`` maps of
    ``presets/methods/<name>.yaml``: the defaults that replace ``params:`` when the problem is
    ``dim``-dimensional (empty maps if the preset has none); entries as in :func:`load_preset`."""
    _, data = _read(name)
    return _entries(data.get(f"params_{int(dim)}d"), data.get(f"sources_{int(dim)}d"))


def normalise_key(key: str) -> str:
    """A parameter name as the methods spell it: stripped, dashes -> underscores."""
    return str(key).strip().replace("-", "_")


def current_name(key: str, aliases: dict[str, str] | None = None) -> str:
    """The current name of parameter ``key``: normalised, an old name (alias) replaced."""
    name = normalise_key(key)
    return (aliases or {}).get(name, name)


def canonical(params: dict, aliases: dict[str, str] | None = None, method: str = "") -> tuple[dict, dict]:
    """``(params under their current names, {current name: the name as given, normalised})``.

    Two names of one parameter with different values (``inner=3`` and ``u_every=5``) are a
    UserError; a None value (an option not given) never overrides a given one."""
    aliases = aliases or {}
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in params.items():
        name, current = normalise_key(key), current_name(key, aliases)
        if current in out and out[current] is not None:
            if value is None:
                continue
            if out[current] != value:
                raise UserError(f"method '{method}': '{given_as[current]}' and '{name}' name the same "
                                f"parameter ('{current}'); give it once")
        out[current] = value
        given_as[current] = name
    return out, given_as


def recorded_params(method: str, params: dict) -> dict:
    """Parameters recorded for ``method`` (a run's ``config.yaml``, perhaps written under old
    names) under their current names, for comparison with newly resolved ones; unchanged if
    ``method`` is not a registered one."""
    from ctdip.methods import ALIASES, REGISTRY, get_method

    if ALIASES.get(method, method) not in REGISTRY:
        return dict(params)
    return canonical(params, get_method(method).param_aliases, method)[0]


def coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` when it is a string (``--set key=value``;
    an int becomes a float where the default is a float); other values are returned as they are
    (the rules of :mod:`ctdip.core.validate` judge them)."""
    if not isinstance(value, str) or isinstance(default, str):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if isinstance(default, bool):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(float(value)) if float(value).is_integer() else int(value)
        if isinstance(default, float):
            return float(value)
        return yaml.safe_load(value)
    except (ValueError, yaml.YAMLError):
        raise UserError(f"method '{method}': parameter '{key}' expects {type(default).__name__}, got '{value}'") from None


def check_numbers(params: dict, given_as: dict | None = None) -> dict:
    """``params`` with every numeric parameter checked by its rule
    (:data:`ctdip.core.validate.METHOD_PARAMS`, under the parameters' current names; integral
    floats become ints); the error names the option as given (``given_as``)."""
    from ctdip.core.validate import METHOD_PARAMS, param_option

    given_as = given_as or {}
    out = dict(params)
    for key, rule in METHOD_PARAMS.items():
        if key in out:
            out[key] = rule(out[key], param_option(given_as.get(key, key)))
    return out


def _unknown(method: str, keys: list[str], known: dict) -> str:
    return (f"method '{method}' has no parameter {', '.join(repr(k) for k in keys)}; "
            f"known parameters: {', '.join(sorted(known))}")


def resolve(method: str, defaults: dict, params: dict | None = None, *, aliases: dict[str, str] | None = None,
            sources: dict | None = None) -> tuple[dict, dict]:
    """``(resolved params, sources)`` of ``method``: ``defaults`` < its preset < ``params``
    (module docstring). None values in ``params`` keep the default. ``sources`` (the sources of
    ``defaults``) are completed by the preset's."""
    preset = load_preset(method)
    from_preset, _ = canonical(preset["params"], aliases, method)
    stray = sorted(k for k in from_preset if k not in defaults)
    if stray:
        raise UserError(_unknown(method, stray, defaults), path=preset["path"])
    base = {**defaults, **from_preset}
    given, given_as = canonical(params or {}, aliases, method)
    unknown = sorted(given_as[k] for k, v in given.items() if k not in base and v is not None)
    if unknown:
        raise UserError(_unknown(method, unknown, base))
    resolved = dict(base)
    from ctdip.core.validate import METHOD_PARAMS

    for key, value in given.items():
        if value is None:
            continue
        rule = METHOD_PARAMS.get(key)
        if getattr(rule, "auto", False) and isinstance(value, str) and value.strip().lower() == "auto":
            resolved[key] = value  # the method chooses the value (e.g. a cross-validated tv_weight)
        elif rule is not None and isinstance(value, str):
            resolved[key] = value  # its rule converts it below, with an error naming the option
        else:
            resolved[key] = coerce(method, given_as[key], value, base[key])
    preset_sources, _ = canonical(preset["sources"], aliases, method)
    return check_numbers(resolved, given_as), {**(sources or {}), **preset_sources}
