"""`ctdip --version`, shell completion and help texts that read naturally (issue 11, items 1 and 11)."""

import os
import re
import subprocess
import sys

from ctdip.cli.main import main
from ctdip.methods import REGISTRY, method_groups


def _ctdip(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ctdip.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_version_alone_prints_and_exits_0():
    out = _ctdip("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ctdip 0.1.0" and out.stderr == ""


def test_show_completion_prints_a_bash_script():
    # `--show-completion` detects the calling shell (none under CI's make); the variable names it
    out = _ctdip(env={"_CTDIP_COMPLETE": "source_bash"})
    assert out.returncode == 0, out.stderr
    assert "_ctdip_completion()" in out.stdout and "complete " in out.stdout


def test_completion_env_var_completes_subcommands():
    # what the installed script does: the shell sets these variables and calls ctdip
    env = {"_CTDIP_COMPLETE": "complete_bash", "COMP_WORDS": "ctdip rec", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-c", "import sys; from ctdip.cli.main import main; sys.exit(main())"],
                         capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["reconstruct"]


def test_reconstruct_help_has_no_type_tags_and_lists_every_method(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    assert main(["reconstruct", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps lines; compare word streams
    assert not re.search(r"<(bool|str|int|float|list\[str\])>", text)
    for name in REGISTRY:
        assert name in text
    groups = method_groups()
    assert groups["classical"] == ["fbp", "cgls", "pdhg-tv"]
    assert "Classical: fbp, cgls, pdhg-tv. DIP: vanilla, tv," in text
    assert "[default: (method preset)]" in text  # -n and --lr
    assert re.search(r"--angles\s+K\s+Use K equispaced views", text)
    assert re.search(r"--quiet\s+-q\s+No progress bar", text)  # a flag shows no metavar


def test_every_command_help_is_free_of_type_tags(capsys):
    for cmd in ("simulate", "pretrain", "evaluate", "spectrum", "batch"):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert not re.search(r"<(bool|str|int|float)>", text), cmd


def test_option_kinds_without_bare_type_as_in_older_typer():
    """Older typer (0.12-0.15, with click) has no ``bare_type()``; the metavar code then reads
    click's type name (the H200 GPU check stopped every CLI call on this before the fix)."""
    from types import SimpleNamespace

    from ctdip.cli.main import _METAVARS, _option_kind

    kinds = {name: _option_kind(SimpleNamespace(type=SimpleNamespace(name=name)))
             for name in ("integer", "float", "text", "path", "choice")}
    assert kinds == {"integer": "int", "float": "float", "text": "str", "path": "path", "choice": ""}
    assert [_METAVARS.get(k, "VALUE") for k in kinds.values()] == ["N", "X", "TEXT", "PATH", "VALUE"]
    assert _option_kind(SimpleNamespace()) == ""  # neither API: no crash, the generic metavar

    class New:  # newer typer: the annotation's name, list options by their item type
        def bare_type(self):
            return "List[Path]"

    assert _option_kind(New()) == "path"
