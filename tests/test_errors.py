"""Every user mistake: exit 2, one stderr line ``error: ...`` naming the file or option, no
traceback, and nothing new in the output location.

The cases are tables: (id, scan mutation or None, command line, words the error must contain).
Scans are simulated once per module and copied (tiny: 24 px, 8 views); every command runs
in-process through ``ctdip.cli.main.main`` with the test's tmp folder as the working directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from ctdip.cli.main import main
from ctdip.core.data.simulate import simulate

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """{"li": line integrals, "counts": raw counts + flats + darks, "walnut": walnut layout}."""
    root = tmp_path_factory.mktemp("scans")
    simulate(root / "li", phantom="shepp-logan", geometry="fan", size=24, angles=8, noise=0.02)
    simulate(root / "counts", phantom="shepp-logan", geometry="fan", size=24, angles=8, photons=1e4)
    simulate(root / "walnut", phantom="walnut", geometry="cone", size=16, angles=6, photons=1e4, layout="walnut")
    return {k: root / k for k in ("li", "counts", "walnut")}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _expect_error(tmp_path, monkeypatch, capsys, argv, needles):
    """Run ``ctdip argv`` in tmp_path; assert the one-line error and that nothing was created."""
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    err = out.err.strip()
    assert rc == 2, (rc, err)
    assert err.startswith("error: "), err
    assert "\n" not in err and "Traceback" not in err and "warning" not in err.lower(), err
    for n in needles:
        assert n in err, (n, err)
    assert _tree(tmp_path) == before, sorted(_tree(tmp_path) - before)
    return err


def _geo(key_path: list, value):
    """A mutation setting geometry.yaml's field key_path (e.g. ["volume", "voxel_mm"]) to value."""

    def mutate(d: Path) -> None:
        g = yaml.safe_load((d / "geometry.yaml").read_text())
        node = g
        for k in key_path[:-1]:
            node = node[k]
        node[key_path[-1]] = value
        (d / "geometry.yaml").write_text(yaml.safe_dump(g))

    return mutate


def _write_proj(value, dtype):
    """Replace projections.tif by an array of its shape filled with ``value`` as ``dtype``."""
    def mutate(d):
        shape = tifffile.imread(d / "projections.tif").shape
        tifffile.imwrite(d / "projections.tif", np.full(shape, value, dtype))
    return mutate


def _unlink(*names):
    return lambda d: [(d / n).unlink() for n in names]


def _truncate(name):
    def mutate(d):
        b = (d / name).read_bytes()
        (d / name).write_bytes(b[: len(b) // 2])
    return mutate


def _nan_reference(d):
    r = tifffile.imread(d / "reference.tif")
    r[..., 0, 0] = np.nan
    tifffile.imwrite(d / "reference.tif", r)


def _bad_flat(value):
    def mutate(d):
        f = tifffile.imread(d / "flats.tif")
        f[..., 0, 3] = value
        if value == 0.0:  # a flat equal to the dark
            f[..., 0, 3] = tifffile.imread(d / "darks.tif")[..., 0, 3].mean()
        tifffile.imwrite(d / "flats.tif", f)
    return mutate


def _text(name, text):
    return lambda d: (d / name).write_text(text)


TUBE = "Projections/tubeV2"


def _walnut_shape(d):
    for p in sorted((d / TUBE).glob("scan_*.tif")):
        tifffile.imwrite(p, np.full((10, 12), 100.0))


# --------------------------------------------------------------------------- scan files (reconstruct -m fbp)
SCAN_CASES = [
    # id, base scan, mutation, needles
    ("counts-without-flats", "counts", _unlink("flats.tif", "darks.tif"), ["projections.tif", "raw detector counts"]),
    ("darks-without-flats", "counts", _unlink("flats.tif"), ["darks.tif", "without flats.tif"]),
    ("all-zero", "li", _write_proj(0, np.float32), ["projections.tif", "all zero"]),
    ("uint8", "li", _write_proj(7, np.uint8), ["projections.tif", "uint8", "flats.tif"]),
    ("uint16", "li", _write_proj(900, np.uint16), ["projections.tif", "uint16"]),
    ("complex", "li", _write_proj(1, np.complex64), ["projections.tif", "complex"]),
    ("one-angle", "li", _geo(["angles", "stop_deg"], 0.0), ["geometry.yaml", "same angle"]),
    ("source-inside", "li", _geo(["source_origin_mm"], 5.0), ["geometry.yaml", "source is inside"]),
    ("volume-far", "li", _geo(["volume", "center_mm"], [0.0, 500.0, 0.0]), ["geometry.yaml", "field of view misses"]),
    ("offset-1e6", "li", _geo(["detector", "offset_u_mm"], 1e6), ["geometry.yaml", "field of view misses"]),
    ("short-scan", "li", _geo(["angles", "stop_deg"], 150.0), ["geometry.yaml", "full scan"]),
    ("voxel-text", "li", _geo(["volume", "voxel_mm"], "big"), ["geometry.yaml", "volume.voxel_mm"]),
    ("center-text", "li", _geo(["volume", "center_mm"], "x"), ["geometry.yaml", "volume.center_mm"]),
    ("shape-text", "li", _geo(["volume", "shape"], [1, "a", 24]), ["geometry.yaml", "volume.shape"]),
    ("pixel-negative", "li", _geo(["detector", "pixel_mm"], -1.0), ["geometry.yaml", "detector.pixel_mm"]),
    ("distance-nan", "li", _geo(["source_origin_mm"], float("nan")), ["geometry.yaml", "source_origin_mm"]),
    ("count-mismatch", "li", _geo(["angles", "count"], 9), ["projections.tif", "projection count 8 does not match 9"]),
    ("type-helix", "li", _geo(["type"], "helix"), ["geometry.yaml", "'type' must be one of"]),
    ("unknown-field", "li", _geo(["colour"], "red"), ["geometry.yaml", "unknown field"]),
    ("bad-yaml", "li", _text("geometry.yaml", "type: fan\nangles: {count: 8\n"), ["geometry.yaml", "bad YAML"]),
    ("not-a-tiff", "li", _text("projections.tif", "not a tiff"), ["projections.tif", "unreadable TIFF"]),
    ("truncated-tiff", "li", _truncate("projections.tif"), ["projections.tif", "unreadable TIFF"]),
    ("nan-reference", "li", _nan_reference, ["reference.tif", "NaN"]),
    ("flat-nan", "counts", _bad_flat(np.nan), ["flats.tif", "NaN"]),
    ("flat-negative", "counts", _bad_flat(-5.0), ["flats.tif", "zero or negative"]),
    ("flat-equals-dark", "counts", _bad_flat(0.0), ["flats.tif", "zero or negative"]),
    ("missing-geometry", "li", _unlink("geometry.yaml"), ["missing geometry.yaml"]),
    ("walnut-geom-text", "walnut", _text(f"{TUBE}/scan_geom_corrected.geom", "hello world\n"),
     ["scan_geom_corrected.geom", "not a table of numbers"]),
    ("walnut-voxel-text", "walnut", _text("volume.yaml", "shape: [16, 16, 16]\nvoxel_mm: big\n"),
     ["volume.yaml", "voxel_mm"]),
    ("walnut-center-text", "walnut", _text("volume.yaml", "shape: [16, 16, 16]\ncenter_mm: x\n"),
     ["volume.yaml", "center_mm"]),
    ("walnut-wrong-shape", "walnut", _walnut_shape, ["scan_000000.tif", "dark and flat fields"]),
    ("walnut-flat-shape", "walnut", lambda d: tifffile.imwrite(d / TUBE / "io000001.tif", np.ones((3, 4))),
     ["io000001.tif", "image is 3x4"]),
    ("walnut-missing-file", "walnut", _unlink(f"{TUBE}/scan_000002.tif"), ["scan_000002.tif", "missing"]),
]


@pytest.mark.parametrize("case", SCAN_CASES, ids=[c[0] for c in SCAN_CASES])
def test_bad_scan(case, scans, tmp_path, monkeypatch, capsys):
    _, base, mutate, needles = case
    d = shutil.copytree(scans[base], tmp_path / "s")
    mutate(d)
    _expect_error(tmp_path, monkeypatch, capsys, ["reconstruct", d, "-m", "fbp", "-o", tmp_path / "run"], needles)


def test_missing_and_unknown_folders(tmp_path, monkeypatch, capsys):
    _expect_error(tmp_path, monkeypatch, capsys, ["reconstruct", tmp_path / "nope", "-o", tmp_path / "r"],
                  ["nope", "not found"])
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path, monkeypatch, capsys, ["reconstruct", tmp_path / "empty", "-o", tmp_path / "r"],
                  ["empty", "unknown scan layout"])


# --------------------------------------------------------------------------- option values (reconstruct)
OPTION_CASES = [
    ("lr-negative", ["-m", "tv", "-n", "2", "--lr", "-0.01"], ["--lr", "-0.01"]),
    ("lr-nan", ["-m", "tv", "-n", "2", "--lr", "nan"], ["--lr", "nan"]),
    ("lr-huge", ["-m", "tv", "-n", "2", "--lr", "1e6"], ["--lr", "(0, 1]"]),
    ("lr-zero", ["-m", "tv", "-n", "2", "--lr", "0"], ["--lr", "got 0"]),
    ("iterations-list", ["-m", "tv", "--set", "iterations=[1,2]"], ["--iterations", "[1, 2]"]),
    ("iterations-fraction", ["-m", "tv", "--set", "iterations=2.5"], ["--iterations", "2.5"]),
    ("iterations-zero", ["-m", "cgls", "-n", "0"], ["--iterations", "positive integer"]),
    ("cgls-iterations-fraction", ["-m", "cgls", "--set", "iterations=2.5"], ["--iterations", "2.5"]),
    ("tv-weight-nan", ["-m", "pdhg-tv", "--set", "tv_weight=.nan"], ["--tv-weight", "nan"]),
    ("tv-weight-negative", ["-m", "tv", "-n", "2", "--set", "tv_weight=-1"], ["--tv-weight", ">= 0"]),
    ("pdhg-tv-weight-negative", ["-m", "pdhg-tv", "--tv-weight", "-1"], ["--tv-weight", ">= 0"]),
    ("checkpoint-every-negative", ["-m", "tv", "-n", "2", "--checkpoint-every", "-1"], ["--checkpoint-every"]),
    ("log-every-zero", ["-m", "tv", "-n", "2", "--log-every", "0"], ["--log-every", "positive integer"]),
    ("ema-decay", ["-m", "tv", "-n", "2", "--set", "ema_decay=1.5"], ["--set ema_decay", "[0, 1)"]),
    ("inner-zero", ["-m", "admm", "-n", "2", "--set", "inner=0"], ["--set inner"]),
    ("optimizer", ["-m", "tv", "-n", "2", "--set", "optimizer=foo"], ["--set optimizer", "adam"]),
    ("unknown-param", ["-m", "tv", "--set", "nosuch=1"], ["no parameter 'nosuch'"]),
    ("input", ["-m", "tv", "--input", "photo"], ["--input", "noise"]),
    ("network", ["-m", "tv", "-n", "2", "--network", "nosuch"], ["unknown network preset 'nosuch'"]),
    ("weights-missing", ["-m", "edip", "-n", "2", "--weights", "nope.pt"], ["nope.pt", "not found"]),
    ("denoiser-missing", ["-m", "admm", "-n", "2", "--denoiser", "nope.pt"], ["nope.pt", "not found"]),
    ("denoiser-unknown", ["-m", "admm", "-n", "2", "--denoiser", "foo"], ["--denoiser", "unknown denoiser"]),
    ("method", ["-m", "nosuch"], ["unknown method 'nosuch'"]),
    ("size-one", ["-m", "fbp", "--size", "1"], ["--size", ">= 8"]),
    ("size-huge", ["-m", "fbp", "--size", "100000"], ["--size", "GiB"]),
    ("bin-zero", ["--bin", "0"], ["--bin", "positive integer"]),
    ("angles-one", ["--angles", "1"], ["--angles", ">= 2"]),
    ("angles-too-many", ["--angles", "50"], ["cannot take 50 views"]),
    ("mode", ["--mode", "4d"], ["--mode", "2d, 3d"]),
    ("slice", ["--slice", "abc"], ["--slice"]),
    ("holdout", ["--holdout", "1.5"], ["--holdout", "[0, 1)"]),
    ("time-limit", ["--time-limit", "abc"], ["--time-limit"]),
    ("device", ["--device", "tpu"], ["--device"]),
    ("setup", ["--setup", "nosuch"], ["unknown setup 'nosuch'"]),
    ("flag", ["--no-such-flag"], ["no-such-flag"]),
    ("output-is-file", ["-o", "afile"], ["-o afile", "is a file"]),
    ("output-parent-is-file", ["-o", "afile/run"], ["-o afile/run", "is a file"]),
    ("output-is-cwd", ["-o", "."], ["-o .", "current directory"]),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option(case, scans, tmp_path, monkeypatch, capsys):
    _, args, needles = case
    (tmp_path / "afile").write_text("x")
    argv = ["reconstruct", scans["li"], *args]
    if "-o" not in args:
        argv += ["-o", tmp_path / "run"]
    _expect_error(tmp_path, monkeypatch, capsys, argv, needles)


def test_weights_for_another_geometry_then_the_fix_runs(scans, tmp_path, monkeypatch, capsys):
    """A failed start (weights of another geometry) leaves nothing; the corrected command then
    runs into the same -o (issue 11.2)."""
    import torch

    from ctdip.networks import build_network, network_preset
    from ctdip.networks.weights import save_weights

    arch = network_preset("tiny", dim=2)
    save_weights(tmp_path / "other.pt", build_network(arch).state_dict(), arch, geometry_key="0123456789ab")
    torch.set_num_threads(1)
    out = tmp_path / "runs" / "e"
    _expect_error(tmp_path, monkeypatch, capsys,
                  ["reconstruct", scans["li"], "-m", "edip", "-n", "2", "--weights", "other.pt", "-o", out],
                  ["other.pt", "another geometry"])
    assert not (tmp_path / "runs").exists()
    rc = main(["reconstruct", str(scans["li"]), "-m", "edip", "-n", "2", "--weights", "other.pt", "--force",
               "-o", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "recon.tif").is_file()


def test_failure_after_the_folder_removes_it(scans, tmp_path, monkeypatch, capsys):
    """An error raised inside the method (after the run folder exists) removes the folder it made."""
    from ctdip.errors import UserError
    from ctdip.methods.classical import FBP

    def boom(self, problem, ctx):
        assert ctx.run.file("config.yaml").is_file()
        raise UserError("boom")

    monkeypatch.setattr(FBP, "run", boom)
    _expect_error(tmp_path, monkeypatch, capsys, ["reconstruct", scans["li"], "-m", "fbp", "-o", tmp_path / "r"],
                  ["boom"])
    (tmp_path / "empty").mkdir()  # an empty folder given as -o stays, empty
    _expect_error(tmp_path, monkeypatch, capsys, ["reconstruct", scans["li"], "-m", "fbp", "-o", "empty"], ["boom"])
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_read_only_output(scans, tmp_path, monkeypatch, capsys):
    """A read-only parent is refused before any work (os.access patched: tests may run as root)."""
    import ctdip.core.validate

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(ctdip.core.validate.os, "access", lambda p, m: False if Path(p) == ro.resolve() else real(p, m))
    for argv in (["reconstruct", scans["li"], "-o", "ro/run"], ["simulate", "ro/scan"],
                 ["evaluate", scans["li"] / "reference.tif", "-o", "ro/ev"],
                 ["pretrain", "--scan", scans["li"], "-o", "ro/w.pt", "--steps", "1"]):
        _expect_error(tmp_path, monkeypatch, capsys, argv, ["ro", "not writable"])


# --------------------------------------------------------------------------- the other commands
OTHER_CASES = [
    ("simulate-exists", ["simulate", "{li}", "--size", "16", "--angles", "4"], ["exists"]),
    ("simulate-file", ["simulate", "afile"], ["OUT afile", "is a file"]),
    ("simulate-cwd", ["simulate", ".", "--force"], ["current directory"]),
    ("simulate-angles", ["simulate", "s", "--angles", "1"], ["--angles", ">= 2"]),
    ("simulate-size", ["simulate", "s", "--size", "4"], ["--size", ">= 8"]),
    ("simulate-size-huge", ["simulate", "s", "--size", "100000"], ["--size", "GiB"]),
    ("simulate-noise", ["simulate", "s", "--noise", "-1"], ["--noise", ">= 0"]),
    ("simulate-photons", ["simulate", "s", "--photons", "0"], ["--photons"]),
    ("simulate-fov", ["simulate", "s", "--fov-mm", "nan"], ["--fov-mm", "nan"]),
    ("simulate-layout", ["simulate", "s", "--layout", "foo"], ["--layout"]),
    ("simulate-text-npy", ["simulate", "s", "--from-volume", "text.npy"], ["text.npy", "not a .npy file"]),
    ("evaluate-text-npy", ["evaluate", "text.npy", "-o", "ev"], ["text.npy", "not a .npy file"]),
    ("evaluate-output-file", ["evaluate", "{li}/reference.tif", "-o", "afile"], ["-o afile", "is a file"]),
    ("evaluate-output-cwd", ["evaluate", "{li}/reference.tif", "-o", "."], ["current directory"]),
    ("evaluate-format", ["evaluate", "{li}/reference.tif", "-f", "xml", "-o", "ev"], ["unknown format"]),
    ("batch-output-file", ["batch", "{li}", "-m", "fbp", "-o", "afile"], ["-o afile", "is a file"]),
    ("batch-output-parent-file", ["batch", "{li}", "-m", "fbp", "-o", "afile/b"], ["is a file"]),
    ("pretrain-output-dir", ["pretrain", "--scan", "{li}", "-o", "adir", "--steps", "1"], ["-o adir", "is a folder"]),
    ("pretrain-output-cwd", ["pretrain", "--scan", "{li}", "-o", ".", "--steps", "1"], ["is a folder"]),
    ("pretrain-ellipses", ["pretrain", "--scan", "{li}", "-o", "w.pt", "--ellipses", "0"], ["--ellipses"]),
    ("pretrain-val-every", ["pretrain", "--scan", "{li}", "-o", "w.pt", "--val-every", "0"], ["--val-every"]),
    ("pretrain-lr", ["pretrain", "--scan", "{li}", "-o", "w.pt", "--lr", "nan"], ["--lr", "nan"]),
    ("pretrain-batch-size", ["pretrain", "--scan", "{li}", "-o", "w.pt", "--batch-size", "0"], ["--batch-size"]),
    ("pretrain-checkpoint-every", ["pretrain", "--scan", "{li}", "-o", "w.pt", "--checkpoint-every", "-1"],
     ["--checkpoint-every"]),
    ("pretrain-angles", ["pretrain", "--scan", "{li}", "-o", "w.pt", "--angles", "1"], ["--angles"]),
    ("denoiser-output-dir", ["pretrain", "denoiser", "-o", "adir"], ["-o adir", "is a folder"]),
    ("denoiser-patch", ["pretrain", "denoiser", "-o", "d.pt", "--patch", "4"], ["--patch", ">= 8"]),
    ("denoiser-sigma", ["pretrain", "denoiser", "-o", "d.pt", "--sigma-max", "-1"], ["--sigma-max"]),
    ("spectrum-rank", ["spectrum", "w.pt", "--rank", "0"], ["--rank", "positive integer"]),
    ("check-angles", ["check", "{li}", "--angles", "1"], ["--angles"]),
    ("check-missing", ["check", "nope"], ["nope", "not found"]),
]


@pytest.mark.parametrize("case", OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_bad_command(case, scans, tmp_path, monkeypatch, capsys):
    _, args, needles = case
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "text.npy").write_text("1 2 3\n4 5 6\n")
    argv = [a.format(li=scans["li"]) for a in args]
    _expect_error(tmp_path, monkeypatch, capsys, argv, needles)


# --------------------------------------------------------------------------- ctdip check
def test_check_reports_the_scan(scans, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(scans["counts"])]) == 0
    out = capsys.readouterr()
    assert "raw counts, flat/dark corrected" in out.out and "fan, 8 views" in out.out
    assert "source-origin" in out.out and "field of view" in out.out and out.err == ""
    assert main(["check", str(scans["walnut"]), "--mode", "3d", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["layout"] == "walnut" and d["geometry"]["type"] == "cone" and d["geometry"]["views"] == 6
    assert d["volume"]["shape"] == [16, 16, 16] and d["reference"]["shape"] == [16, 16, 16]
    assert d["warnings"] == [] and _tree(tmp_path) == set()


def test_check_warns_on_a_limited_angle_scan(scans, tmp_path, monkeypatch, capsys):
    d = shutil.copytree(scans["li"], tmp_path / "s")
    _geo(["angles", "stop_deg"], 150.0)(d)
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(d)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "150 degrees" in err[0]


# --------------------------------------------------------------------------- files left behind, modes
def test_stale_temporaries_are_removed_on_resume(scans, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", str(scans["li"]), "-m", "cgls", "-n", "2", "-o", "r", "-q"]) == 0
    (tmp_path / "r" / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    assert main(["reconstruct", "--resume", "r", "-q"]) == 0
    assert not list((tmp_path / "r").glob(".*.tmp"))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mode):
    from ctdip.core.io import atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain.bin").stat().st_mode & 0o777 == mode


# --------------------------------------------------------------------------- README examples
def test_readme_geometry_examples_parse_and_pass_the_rules(tmp_path):
    """The parallel, fan and cone geometry.yaml examples of README "Your own scan"."""
    import re

    from ctdip.core.data.ctdip_layout import parse_geometry
    from ctdip.core.data.sanity import check_geometry

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Your own scan", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3
    kinds = []
    for i, b in enumerate(blocks):
        p = tmp_path / f"g{i}.yaml"
        p.write_text(b)
        geom, vol = parse_geometry(p)
        assert vol is not None and check_geometry(geom, vol, p) == []
        kinds.append(geom.kind)
    assert kinds == ["parallel", "fan", "cone"]


def test_a_diverging_loss_names_lr_and_leaves_nothing(scans, tmp_path, monkeypatch, capsys):
    """A loss that becomes NaN (too large a step) stops with `error: --lr: ...`; no checkpoint was
    written yet, so the run folder is removed."""
    import torch

    from ctdip.dip.engine import StepOut
    from ctdip.methods.vanilla import Vanilla

    def nan_objective(self, it, gen):
        x = self.network(self.z)
        fit = self.data_fit(x) * torch.tensor(float("nan"))
        return StepOut(loss=fit, image=x, data_fit=fit)

    monkeypatch.setattr(Vanilla, "objective", nan_objective)
    _expect_error(tmp_path, monkeypatch, capsys,
                  ["reconstruct", scans["li"], "-m", "vanilla", "--network", "tiny", "-n", "3", "-o", "r"],
                  ["--lr", "the loss became nan at iteration 1"])


def test_problem_names_the_geometry_file_of_a_short_scan(scans, tmp_path):
    """Every caller of Problem.from_scan (reconstruct, spectrum) gets the file named, not only the CLI."""
    from ctdip.core.data.loader import load_scan
    from ctdip.core.problem import Problem
    from ctdip.errors import UserError

    d = shutil.copytree(scans["li"], tmp_path / "s")
    _geo(["angles", "stop_deg"], 150.0)(d)
    sc = load_scan(d, print_warnings=False)
    with pytest.raises(UserError) as e:
        Problem.from_scan(sc)
    assert e.value.path is not None and Path(e.value.path).name == "geometry.yaml"
    assert "full scan" in e.value.message
