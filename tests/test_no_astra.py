"""ctdip without astra-toolbox: what needs no ASTRA runs, what needs it fails in one line.

Each run is a ``ctdip`` subprocess whose ``sitecustomize`` sets ``sys.modules["astra"] = None``, so
``import astra`` raises ImportError there, as on a machine without astra-toolbox (a GPU node).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

CTDIP = Path(sys.executable).with_name("ctdip")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 32² fan-beam scan (simulated with ASTRA, in this process) and a shim folder hiding astra."""
    d = tmp_path_factory.mktemp("noastra")
    shim = d / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text('import sys\nsys.modules["astra"] = None\n')
    from ctdip.cli.main import main

    assert main(["simulate", str(d / "scan"), "--size", "32", "--angles", "20", "--noise", "0.05", "-q"]) == 0
    return d


def ctdip_no_astra(work: Path, *args: str, cache: Path, astra: bool = False) -> subprocess.CompletedProcess:
    """``ctdip *args`` in a subprocess with ``import astra`` failing (``astra=True``: the same run
    with astra importable, for comparison)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CTDIP_CACHE_DIR": str(cache)}
    if not astra:
        env["PYTHONPATH"] = str(work / "shim")
    return subprocess.run([str(CTDIP), *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)


def returned_psnr(run: Path) -> float:
    return float(json.loads((run / "summary.json").read_text())["returned"]["psnr"])


def test_shim_hides_astra(work):
    env = {**os.environ, "PYTHONPATH": str(work / "shim")}
    p = subprocess.run([sys.executable, "-c", "import astra"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "ModuleNotFoundError" in p.stderr


def test_torch_backend_reconstruct_without_astra(work, tmp_path):
    run = tmp_path / "run"
    p = ctdip_no_astra(work, "reconstruct", "scan", "-m", "vanilla", "-n", "5", "--network", "tiny",
                       "--backend", "torch", "--seed", "3", "-o", str(run), "-q", cache=tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    rec = tifffile.imread(run / "recon.tif")
    assert rec.shape[-2:] == (32, 32) and np.isfinite(rec).all()
    assert "backend: torch" in (run / "config.yaml").read_text()
    fbp = float(json.loads((run / "summary.json").read_text())["fbp"]["psnr"])
    assert 10 < fbp < 40 and 3 < returned_psnr(run) < 40


def test_matrix_backend_from_shipped_cache_without_astra(work, tmp_path):
    """The matrix built here (with ASTRA) is shipped in a cache folder; the ASTRA-less run loads it
    and gives the same image as the run with ASTRA."""
    cache = tmp_path / "cache"
    args = ["reconstruct", "scan", "-m", "tv", "-n", "5", "--network", "tiny", "--backend", "matrix",
            "--seed", "3", "-q"]
    p = ctdip_no_astra(work, *args, "-o", str(tmp_path / "with"), cache=cache, astra=True)
    assert p.returncode == 0, p.stderr
    assert len(list((cache / "matrices").glob("*.npz"))) == 1
    p = ctdip_no_astra(work, *args, "-o", str(tmp_path / "without"), cache=cache)
    assert p.returncode == 0, p.stderr
    a = tifffile.imread(tmp_path / "with" / "recon.tif")
    b = tifffile.imread(tmp_path / "without" / "recon.tif")
    assert np.array_equal(a, b) and float(np.abs(a).max()) > 0.01


def test_matrix_build_without_astra_is_one_line_error(work, tmp_path):
    run = tmp_path / "run"
    p = ctdip_no_astra(work, "reconstruct", "scan", "-m", "vanilla", "-n", "5", "--network", "tiny",
                       "--backend", "matrix", "-o", str(run), "-q", cache=tmp_path / "empty-cache")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert lines[0].startswith("error: ")
    assert "building the matrix operator (kernel 'line_fanflat') needs astra-toolbox" in lines[0]
    assert "ship the cached matrix" in lines[0]
    assert not run.exists()


def test_import_astra_names_the_feature(monkeypatch):
    from ctdip.core.geometry import ProjectionGeometry, import_astra
    from ctdip.errors import UserError

    monkeypatch.setitem(sys.modules, "astra", None)
    with pytest.raises(UserError, match=r"^an ASTRA projection geometry dict needs astra-toolbox"):
        ProjectionGeometry.circular("fan", np.linspace(0, 1, 3), 8, source_origin_mm=50,
                                    source_detector_mm=80).to_astra()
    with pytest.raises(UserError, match="the astra-cuda backend needs astra-toolbox.*backend 'matrix'"):
        import_astra("the astra-cuda backend", "use backend 'matrix' or 'torch'")
