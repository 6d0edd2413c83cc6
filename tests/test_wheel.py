"""An installed wheel finds its presets: the top-level ``presets/`` folder becomes the package data
``ctdip/presets/``, and ``ctdip reconstruct`` with a method preset and a setup preset runs from
outside the repository.

The wheel is built offline from a copy of the sources (``pip wheel --no-deps --no-build-isolation``)
and installed without its dependencies into a fresh venv; that venv sees this interpreter's
site-packages (torch, numpy, ...) through a ``.pth`` line, after its own, so ``import ctdip`` is the
wheel's.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}"
    return p


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("ctdip", "presets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src])
    (wheel,) = (tmp / "dist").glob("ctdip-*.whl")
    return wheel


def _venv_with_wheel(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies come from this interpreter's site-packages, searched after the venv's own
    deps = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (purelib / "_ctdip_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel])
    return venv


def test_wheel_ships_presets_and_reconstructs_with_them(tmp_path):
    from ctdip.core.data.simulate import simulate

    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module of the package and every preset is in the wheel (pyproject lists the packages)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ctdip").rglob("*.py") if "__pycache__" not in p.parts}
    assert not modules - names, f"missing from the wheel (add the package to pyproject.toml): {modules - names}"
    presets = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "presets").rglob("*.yaml"))
    assert len(presets) >= 20 and not {f"ctdip/{p}" for p in presets} - names
    assert not [n for n in names if n.startswith("presets/")]  # no top-level "presets" package installed

    venv = _venv_with_wheel(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", CTDIP_CACHE_DIR=str(tmp_path / "cache"))
    site_dir = _run([venv / "bin" / "python", "-c", "import ctdip, pathlib; print(pathlib.Path(ctdip.__file__).parent)"],
                    cwd=elsewhere, env=env).stdout.strip()
    assert Path(site_dir).is_relative_to(venv)  # the wheel's ctdip, not the repository's

    # a tiny cone-beam scan (16^3, 60 views); the setup takes 60 views of its slice +3 in 2D
    simulate(elsewhere / "scan", phantom="walnut", geometry="cone", angles=60, size=16, noise=0.05, quiet=True)
    _run([venv / "bin" / "ctdip", "reconstruct", "scan", "-m", "fbp", "--setup", "walnut-2d-sparse-60", "-o", "run",
          "-q"], cwd=elsewhere, env=env)
    cfg = yaml.safe_load((elsewhere / "run" / "config.yaml").read_text())
    method_yaml = Path(site_dir) / "presets" / "methods" / "fbp.yaml"
    assert Path(cfg["preset"]["path"]) == method_yaml
    assert cfg["preset"]["params"] == yaml.safe_load((ROOT / "presets/methods/fbp.yaml").read_text())["params"]
    setup = yaml.safe_load((ROOT / "presets/setups/walnut-2d-sparse-60.yaml").read_text())
    assert cfg["setup"] == "walnut-2d-sparse-60" and cfg["scan"]["options"] == setup["scan"]
    assert (elsewhere / "run" / "recon.tif").is_file() and (elsewhere / "run" / "summary.json").is_file()
