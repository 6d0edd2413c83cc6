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
    add_completion=False,
    pretty_exceptions_enable=False,
)

SUBCOMMANDS = ["simulate", "reconstruct", "pretrain", "evaluate", "spectrum", "batch", "check"]


def _register_all() -> None:
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"ctdip.cli.{name}")
        except ModuleNotFoundError as e:  # a subcommand not built yet
            if e.name == f"ctdip.cli.{name}":
                continue
            raise
        mod.register(app)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from ctdip import __version__

        typer.echo(f"ctdip {__version__}")
        raise typer.Exit()


_register_all()


def error_line(msg: str) -> None:
    """Print one error line to stderr (no traceback)."""
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the exit code (2 for user mistakes)."""
    try:
        rc = app(args=argv, standalone_mode=False)
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
