"""The `evilspectra` command line: one file per command group, registered on one typer app.

Every command turns the project's own errors (EvilSpectraError) into a one-line message on stderr
and exit status 2; nothing already written to disk is removed.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.text import Text

from evilspectra.errors import EvilSpectraError
from evilspectra.quiet import quiet_hf

app = typer.Typer(
    name="evilspectra",
    help="Measure how the optimiser of a LoRA fine-tune amplifies or suppresses emergent misalignment.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
)
PIPE_WIDTH = 10_000  # off a terminal: wide enough that no table cell is ever cut


def make_console(stderr: bool = False) -> Console:
    """A console at the terminal's width; off a terminal (a pipe, a cluster log) at COLUMNS when set,
    else PIPE_WIDTH: rich's default for a pipe is 80 columns, which cuts table cells to `26.6-…`."""
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console.width = PIPE_WIDTH
    return console


err_console = make_console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from evilspectra import __version__

        print(f"evilspectra {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Measure how the optimiser of a LoRA fine-tune amplifies or suppresses emergent misalignment."""


def _register() -> None:
    # Each module adds its commands to `app` on import (one command group per file).
    from evilspectra.cli import (
        analysis_cmd,  # noqa: F401
        audit_cmd,  # noqa: F401
        card_cmd,  # noqa: F401
        demo_cmd,  # noqa: F401
        eval_cmd,  # noqa: F401
        judges_cmd,  # noqa: F401
        rejudge_cmd,  # noqa: F401
        spectra_cmd,  # noqa: F401
        sweep_cmd,  # noqa: F401
        toy_cmd,  # noqa: F401
        train_cmd,  # noqa: F401
    )


def main() -> None:
    _register()
    quiet_hf()
    try:
        app()
    except EvilSpectraError as exc:
        # one line, never wrapped at the console width: long paths stay whole and greppable
        message = " ".join(str(exc).split())
        err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
        sys.exit(2)
