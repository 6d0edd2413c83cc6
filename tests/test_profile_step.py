"""``benchmarks/profile_step.py`` groups a step's aten self time: the groups cover all of it and
the convolutions dominate, as the committed ``step_profile_*.md`` tables say."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_step  # noqa: E402


def test_op_groups():
    assert profile_step.group_of("aten::convolution_backward").startswith("convolution (mkldnn")
    assert profile_step.group_of("aten::_slow_conv2d_forward").startswith("convolution (slow")
    assert profile_step.group_of("aten::native_group_norm_backward").startswith("GroupNorm")
    assert profile_step.group_of("aten::leaky_relu_backward").startswith("LeakyReLU")
    assert profile_step.group_of("aten::empty") == "other"


def test_profile_table_shares_sum_to_100(tmp_path):
    out = tmp_path / "p.md"
    profile_step.main(["--preset", "tiny", "--size", "32", "--threads", "1", "--steps", "2", "--out", str(out)])
    text = out.read_text()
    head = text.split("Ten most expensive ops")[0]
    shares = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (.+?) \| ([0-9.]+) % \|", head, re.M)}
    assert abs(sum(shares.values()) - 100.0) < 0.5
    assert max(shares, key=shares.get).startswith("convolution")
    m = re.search(r"one step ([0-9.]+) ms, of which the operator .* ([0-9.]+) ms \((\d+) %\)", text)
    assert m and 0 < float(m.group(2)) < float(m.group(1))
