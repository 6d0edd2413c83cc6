"""The package's layering holds: a module imports only from its own layer or the layers below.

Every ``import``/``from ... import`` in every module of ``ctdip`` is read with :mod:`ast`, lazy
imports inside functions included, so a late import cannot hide an upward dependency. The layers
are the README's "Layout of the code", bottom first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ctdip

PKG = Path(ctdip.__file__).resolve().parent

# bottom first; a module belongs to the longest prefix that names it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("ctdip", "ctdip.errors")),
    ("io", ("ctdip.core.io",)),
    ("core", ("ctdip.core",)),
    ("networks", ("ctdip.networks",)),
    ("priors", ("ctdip.priors",)),
    ("dip", ("ctdip.dip",)),
    ("training", ("ctdip.training",)),
    ("methods", ("ctdip.methods",)),
    ("workflows", ("ctdip.workflows",)),
    ("cli", ("ctdip.cli",)),
]


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                if p == "ctdip" and module != "ctdip":
                    continue  # the bare package holds only the version
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and the README's layout map"
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ctdip"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ctdip":
                continue
            # ``from ctdip.core import metrics`` imports the submodule ctdip.core.metrics
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                            or (PKG.parent / sub.replace(".", "/")).is_dir() else target))
    return out


def test_no_module_imports_a_higher_layer():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        mine = layer_of(mod)
        for line, target in imports_of(path, mod):
            theirs = layer_of(target)
            if theirs > mine:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {LAYERS[mine][0]} module {mod} imports "
                           f"{LAYERS[theirs][0]} module {target}")
    assert not bad, "imports that flow back up:\n" + "\n".join(bad)


def test_io_imports_only_errors():
    io = PKG / "core" / "io.py"
    assert {t for _, t in imports_of(io, "ctdip.core.io")} <= {"ctdip.errors"}


def test_every_module_has_a_layer():
    for path in PKG.rglob("*.py"):
        layer_of(module_name(path))


def test_checker_sees_lazy_and_relative_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from ctdip.cli import main\nfrom . import engine\n")
    found = [t for _, t in imports_of(p, "ctdip.dip.m")]
    assert found == ["ctdip.cli.main", "ctdip.dip.engine"] or set(found) == {"ctdip.cli.main", "ctdip.dip.engine"}
    assert layer_of("ctdip.cli.main") > layer_of("ctdip.dip.m")
