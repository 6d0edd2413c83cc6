"""`ctdip` entry point: registers the subcommands and turns user mistakes into one line + exit 2.

Each subcommand lives in its own module ``ctdip/cli/<name>.py`` exposing ``register(app)``; heavy
imports (torch, astra) happen inside the commands so ``ctdip --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from ctdip.errors import CtdipError, UserError

app = typer.Typer(
    name="ctdip",
    help="Deep Image Prior reconstructions for CT: simulate, pretrain, reconstruct, evaluate, spectrum, batch.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

SUBCOMMANDS = ["simulate", "reconstruct", "pretrain", "evaluate", "spectrum", "batch", "check"]


def _register_all() -> None:
    for name in SUBCOMMANDS:
        importlib.import_module(f"ctdip.cli.{name}").register(app)


def _print_version(value: bool) -> None:
    """``--version``: an eager callback, so it runs (and exits) before a subcommand is required."""
    if value:
        from ctdip import __version__

        typer.echo(f"ctdip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version, expose_value=False),
) -> None:
    """Deep Image Prior reconstructions for CT: simulate, pretrain, reconstruct, evaluate, spectrum, batch."""


_register_all()

#: metavars by parameter type for options that declare none (typer would print ``<str>``, ``<int>``)
_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "path": "PATH"}


#: click's type names as the Python type names that ``_METAVARS`` uses
_CLICK_KINDS = {"integer": "int", "text": "str", "float": "float", "path": "path", "boolean": "bool"}


def _option_kind(p) -> str:
    """The Python type name of option ``p`` ('int', 'str', 'path', ...; a list option's item type).
    Newer typer (0.2x) tells it by ``bare_type()``; older typer and plain click by the click type."""
    if hasattr(p, "bare_type"):
        kind = p.bare_type().lower()  # 'int', 'str', 'path', 'list[str]', ...
        return kind[5:-1] if kind.startswith("list[") and kind.endswith("]") else kind
    return _CLICK_KINDS.get(getattr(getattr(p, "type", None), "name", "").lower(), "")


def _natural_metavars(cmd) -> None:
    """Give every option of ``cmd`` (and its subcommands) a metavar that reads naturally in
    ``--help``: none for flags (``--quiet``, ``--help``), else the declared one or ``N``/``X``/
    ``TEXT``/``PATH`` by type (``--set`` and other repeatable options keep theirs)."""
    params = list(cmd.params)
    help_opt = cmd.get_help_option(cmd.context_class(cmd))
    if help_opt is not None:
        params.append(help_opt)
    for p in params:
        if getattr(p, "param_type_name", "") != "option" or p.metavar is not None:
            continue
        if getattr(p, "is_flag", False):
            p.metavar = ""
            continue
        p.metavar = _METAVARS.get(_option_kind(p), "VALUE")
    for sub in getattr(cmd, "commands", {}).values():
        _natural_metavars(sub)


def command():
    """The click command behind ``app`` with natural metavars (built once per process)."""
    global _COMMAND
    if _COMMAND is None:
        import typer.main

        _COMMAND = typer.main.get_command(app)
        _natural_metavars(_COMMAND)
    return _COMMAND


_COMMAND = None


def error_line(msg: str) -> None:
    """Print one error line to stderr (no traceback)."""
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the exit code (2 for user mistakes)."""
    try:
        rc = command().main(args=argv, prog_name="ctdip", standalone_mode=False)
        if isinstance(rc, int) and rc != 0:  # typer.Exit(code) is returned, not raised, here
            return rc
    except UserError as e:
        error_line(e.one_line())
        return 2
    except CtdipError as e:
        error_line(str(e))
        return getattr(e, "exit_code", 1)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        error_line("aborted")
        return 130
    except KeyboardInterrupt:
        error_line("interrupted")
        return 130
    except Exception as e:  # click usage errors (bad option, missing argument); typer vendors click
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            error_line(e.format_message())
            return 2
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
