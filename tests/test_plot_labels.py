"""Figures say what they show: the slice of a volume, units on colour bars, a reference panel, a
legend that leaves the curves visible with many runs (issue 11, item 11)."""

from pathlib import Path

import numpy as np

from ctdip.workflows import plots
from ctdip.workflows.evaluate import LEGEND_INSIDE_MAX, Entry, plot_montage, plot_psnr_curves


def test_preview_of_a_volume_names_its_slice(tmp_path):
    vol = np.random.default_rng(0).random((16, 12, 12)).astype(np.float32)
    assert plots.mid_slice(vol)[1] == "z = 8 of 16" and plots.mid_slice(vol[:1])[1] is None
    fig = plots.preview(tmp_path / "p.png", vol, vol * 0.9, title="tv on walnut1")
    assert fig._suptitle.get_text() == "tv on walnut1, slice z = 8 of 16"
    fig2 = plots.preview(tmp_path / "q.png", vol[:1], title="tv")
    assert fig2._suptitle.get_text() == "tv"
    assert (tmp_path / "p.png").stat().st_size > 1000


def _entry(name: str, recon: np.ndarray, n: int = 10, kind: str = "run") -> Entry:
    rows = [{"iter": 10 * (k + 1), "psnr": 20.0 + k * 0.1 + hash(name) % 7 * 0.01} for k in range(n)]
    return Entry(name=name, path=Path(name), kind=kind, recon=recon, method="tv", metrics=rows)


def test_montage_has_a_reference_panel_and_units(tmp_path):
    ref = np.random.default_rng(1).random((1, 16, 16)).astype(np.float32)
    entries = [_entry("a", ref + 0.1), _entry("b", ref - 0.05)]
    rows = [{"psnr": 20.0, "ssim": 0.9}, {"psnr": 26.0, "ssim": 0.95}]
    fig = plot_montage(entries, rows, {"a": ref, "b": ref}, tmp_path / "m.png")
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[0] == "reference" and titles[1].startswith("a\n20.00 dB")
    labels = [a.get_ylabel() for a in fig.axes]
    assert "attenuation (1/mm)" in labels and "x - reference (1/mm)" in labels
    # without a shared reference: one reference panel per distinct reference
    fig = plot_montage(entries, rows, {"a": ref, "b": ref * 2}, tmp_path / "m2.png")
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[:2] == ["reference of a", "reference of b"]


def test_psnr_curves_legend_moves_outside_beyond_a_few_runs(tmp_path):
    img = np.zeros((1, 8, 8), np.float32)
    few = [_entry(f"r{k}", img) for k in range(LEGEND_INSIDE_MAX)]
    many = [_entry(f"run{k:02d}", img) for k in range(14)]
    for entries, outside in ((few, False), (many, True)):
        fig = plot_psnr_curves(entries, [{} for _ in entries], tmp_path / "c.png")
        fig.canvas.draw()
        ax = fig.axes[0]
        leg = ax.get_legend().get_window_extent()
        assert (leg.x0 >= ax.get_window_extent().x1) == outside
        assert len(ax.get_legend().get_texts()) == len(entries)
