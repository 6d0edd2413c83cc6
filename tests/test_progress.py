"""The one progress bar (ctdip.core.progress): drawn only on a terminal and when not quiet, with
done/total, unit, elapsed, ETA and the caller's fields; one bar at a time; throttled updates."""

import io
import re

import pytest

from ctdip.core.progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def on_terminal(monkeypatch):
    """Call it in the test (pytest's capture resets sys.stderr after fixtures): stderr is a terminal."""

    def swap() -> _Terminal:
        t = _Terminal()
        monkeypatch.setattr("sys.stderr", t)
        return t

    monkeypatch.setenv("COLUMNS", "120")
    return swap


def test_silent_off_a_terminal_and_when_quiet(on_terminal, monkeypatch):
    terminal = on_terminal()
    with ProgressBar("quiet", 5, quiet=True) as bar:
        bar.update(3)
        bar.advance()
        assert not bar.shown
    assert terminal.getvalue() == ""
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or a file
    with ProgressBar("piped", 5) as bar:
        bar.update(5)
        assert not bar.shown


def test_columns_fields_and_eta(on_terminal):
    terminal = on_terminal()
    with ProgressBar("building", 10, unit="views", fields={"info": "loss -"}, min_interval_s=0) as bar:
        assert bar.shown
        bar.advance(3)
        bar.update(10, info="loss 1.5e-03")
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", terminal.getvalue())
    first, *_, last = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    for part in ("building", "10/10", "views", "0:00:00", "loss 1.5e-03"):
        assert part in last, (part, last)
    assert " 0/10" in first and "loss -" in first  # the initial field text
    assert not bar.shown  # closed on exit


def test_one_bar_at_a_time_and_throttled_updates(on_terminal):
    on_terminal()
    with ProgressBar("outer", 100, min_interval_s=60) as outer:
        with ProgressBar("inner", 4) as inner:
            assert outer.shown and not inner.shown  # a nested bar stays hidden
            inner.update(2)
        calls = []
        outer._progress.update = lambda task, **kw: calls.append(kw["completed"])
        for i in range(1, 101):
            outer.update(i)
        assert calls == [1, 100]  # the first, then nothing for 60 s but the last step
    with ProgressBar("again", 1) as again:
        assert again.shown  # the slot is free once the outer bar closed
