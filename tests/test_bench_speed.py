"""``benchmarks/bench_speed.py`` merges a rerun into its results instead of rewriting them: rows
it does not rerun, each row's command and date, and the hand-written notes survive."""

import json
import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_speed  # noqa: E402


def test_rows_and_notes_survive_a_rerun(tmp_path):
    old = {"command": "--objects walnut --methods tv", "total_s": 9.0,
           "objects": {"walnut128/30": {"label": "walnut", "fbp_psnr": 13.0, "oracle_psnr": 21.8, "runs": {
               "tv": {"returned_psnr": 20.67, "iterations": 2000, "wall_s": 63.8, "rows": [[10, 20.0, 21.9, 20.1]]}},
               "notes": ["Reading (by hand): tv does not reach (b)."]}}}
    jpath = tmp_path / "speed.json"
    jpath.write_text(json.dumps(old))
    R = bench_speed.load_results(jpath, fresh=False)
    assert bench_speed.load_results(jpath, fresh=True) == {"objects": {}, "notes": []}
    tv = R["objects"]["walnut128/30"]["runs"]["tv"]
    assert tv["command"] == ".venv/bin/python benchmarks/bench_speed.py --objects walnut --methods tv"
    R["objects"]["walnut128/30"]["runs"]["vanilla"] = {"returned_psnr": 16.77, "iterations": 2000, "wall_s": 54.7,
                                                       "rows": [], "command": "bench_speed.py --methods vanilla",
                                                       "date": "2026-12-02"}
    R["notes"].append("File note.")
    md = tmp_path / "speed.md"
    bench_speed.write_markdown(R, md, Namespace(quick=False, threads=2, specimens=10))
    text = md.read_text()
    assert "| tv | 20.67 | 2000 | 63.8 |" in text and "| vanilla | 16.77 | 2000 | 54.7 |" in text
    assert "> File note." in text and "Reading (by hand): tv does not reach (b)." in text
    assert "vanilla: `bench_speed.py --methods vanilla` (2026-12-02)" in text
    assert "tv: `.venv/bin/python benchmarks/bench_speed.py --objects walnut --methods tv` (undated)" in text
