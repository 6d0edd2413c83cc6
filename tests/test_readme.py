"""Every shell command the README shows runs as written, in order, on a fresh folder (issue 11,
item 9) -- at small sizes: :data:`SUBSTITUTIONS` shrink grids, iterations, steps and ranks, and
nothing else. A command that names a file or folder no earlier command created fails the test.

Commands are the lines of the README's ``` blocks (not ```python) that start with ``ctdip `` or
``python -c``, in order, with ``\\`` continuations joined and ``# comments`` dropped. The few that
cannot run here are listed in :data:`SKIPPED` with the reason; every entry must still match a
README command, so the list stays current.
"""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

#: (pattern, replacement) applied to every command: the same commands, small
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"--size 128\b", "--size 32"),
    (r"--size 64\b", "--size 24"),
    (r"(-n|--iterations) \d+", r"\1 5"),
    (r"--steps \d+", "--steps 3"),
    (r"--checkpoint-every \d+", "--checkpoint-every 1"),  # a trajectory of 3 checkpoints
    (r"--rank \d+", "--rank 4 --ntk-rank 2"),
    (r"\(256, 256\)", "(48, 48)"),
]
#: extra options by command kind, when the command does not set them already
APPEND: list[tuple[str, str, str]] = [
    # (command prefix, option that must be absent, what to append)
    ("ctdip simulate", "--size", "--size 32"),
    ("ctdip pretrain denoiser", "--steps", "--steps 3"),
    ("ctdip pretrain denoiser", "--batch-size", "--batch-size 2 --patch 32"),
    ("ctdip pretrain --", "--steps", "--steps 3"),
    ("ctdip pretrain --", "--batch-size", "--batch-size 2"),
]
DIP_METHODS = ("vanilla", "tv", "tv-hqs", "admm", "hqs", "hqs-denoiser", "red", "self-guided", "aseq", "edip",
               "edip-fe")

#: substring of a README command -> why this test does not run it
SKIPPED: dict[str, str] = {
    "ctdip batch": "needs a folder of specimens (examples/batch_specimens.sh makes them); tests/test_batch.py "
                   "runs batches",
    "--volume ct_train_slices.npy": "the recorded training command of the shipped denoiser: its head-CT "
                                    "training slices are not part of ctdip; tests/test_denoiser_training.py "
                                    "trains on .npy volumes",
    "--method edip -o": "pretrains its 300-step warm start first (about a minute on 2 cores); "
                        "tests/test_pretrain.py covers the cache",
}
#: options whose value is written, not read (never checked for existence)
OUTPUT_OPTIONS = ("-o", "--output")
PATHLIKE = re.compile(r"(/|\.(pt|tif|tiff|npy|yaml|yml|csv|json|md)$)")


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README's fenced blocks (module docstring)."""
    out: list[str] = []
    for block in re.findall(r"^```([^\n]*)\n(.*?)^```", text, re.M | re.S):
        lang, body = block
        if lang.strip() not in ("", "sh", "bash", "shell", "console"):
            continue
        body = re.sub(r"\\\n\s*", " ", body)
        for line in body.splitlines():
            line = line.strip()
            if line.startswith(("ctdip ", "python -c ")):
                out.append(_strip_comment(line))
    return out


def _strip_comment(line: str) -> str:
    lex = shlex.shlex(line, posix=True, punctuation_chars=False)
    lex.whitespace_split, lex.commenters = True, "#"
    words = list(lex)
    # re-quote only what needs it (the python one-liner)
    return " ".join(shlex.quote(w) if (" " in w or "(" in w) else w for w in words)


def small(cmd: str) -> str:
    """``cmd`` with :data:`SUBSTITUTIONS` and :data:`APPEND` applied."""
    for pat, rep in SUBSTITUTIONS:
        cmd = re.sub(pat, rep, cmd)
    for prefix, absent, extra in APPEND:
        if cmd.startswith(prefix) and absent not in cmd.split():
            cmd += " " + extra
    words = cmd.split()
    if words[:2] == ["ctdip", "reconstruct"] and "--resume" not in words:
        m = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-m", "--method")), None)
        if m in DIP_METHODS and "-n" not in words and "--iterations" not in words:
            cmd += " -n 5"
    return cmd


def inputs_of(words: list[str]) -> list[str]:
    """Path-like words a command reads: not option values of -o, not after '>', not simulate's
    output folder."""
    out, skip_next = [], False
    for i, w in enumerate(words):
        if skip_next:
            skip_next = False
            continue
        if w in OUTPUT_OPTIONS or w == ">":
            skip_next = True
            continue
        if words[:2] == ["ctdip", "simulate"] and i == 2:
            continue
        if not w.startswith("-") and PATHLIKE.search(w) and w not in ("ctdip",):
            out.append(w)
    return out


def _run(cmd: str, cwd: Path) -> tuple[int, str, str]:
    """Run a README command: ``ctdip ...`` in-process (globs and a '> FILE' redirect expanded
    here), ``python -c`` in a subprocess."""
    words = shlex.split(cmd)
    if words[0] == "python":
        p = subprocess.run([sys.executable, *words[1:]], cwd=cwd, capture_output=True, text=True)
        return p.returncode, p.stdout, p.stderr
    redirect = None
    if ">" in words:
        k = words.index(">")
        redirect, words = words[k + 1], words[:k]
    args: list[str] = []
    for w in words[1:]:
        args += sorted(glob.glob(w)) if any(c in w for c in "*?[") else [w]
    from ctdip.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    if redirect is not None:
        (cwd / redirect).write_text(out.getvalue())
    return rc, out.getvalue(), err.getvalue()


def test_readme_has_the_commands_this_test_expects():
    cmds = readme_commands(README.read_text())
    assert len(cmds) >= 25
    for needed in ("ctdip simulate", "-m fbp", "-m pdhg-tv", "--method tv", "--method vanilla", "--resume",
                   "ctdip evaluate", "ctdip pretrain", "ctdip spectrum"):
        assert any(needed in c for c in cmds), needed
    for key in SKIPPED:
        assert any(key in c for c in cmds), f"SKIPPED entry {key!r} matches no README command any more"


def test_readme_commands_run_in_order(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    cmds = readme_commands(README.read_text())
    ran = []
    for raw in cmds:
        if any(key in raw for key in SKIPPED):
            continue
        cmd = small(raw)
        words = shlex.split(cmd)
        for path in inputs_of(words):
            if any(c in path for c in "*?["):
                assert glob.glob(path), f"README command {raw!r}: {path} matches nothing an earlier command made"
            else:
                assert Path(path).exists(), f"README command {raw!r} names {path}, which no earlier command created"
        rc, out, err = _run(cmd, tmp_path)
        ok = (0, 3) if "--time-limit" in words else (0,)
        assert rc in ok, f"README command {raw!r} (run as {cmd!r}) exited {rc}: {err.strip()[-800:]}"
        assert "Traceback" not in err
        ran.append((raw, err))
    by = {raw: err for raw, err in ran}
    # --from-volume says that it resampled head.npy (48 x 48) to the 32 x 32 grid
    hu = next(r for r in by if "--from-volume" in r)
    assert "note: head.npy: resampled the 48 x 48 volume to the 32 x 32 grid" in by[hu]
    assert len(ran) >= 20
