"""The `evilspectra` command line: one file per command group, registered on one typer app.

Every command turns the project's own errors (EvilSpectraError) into a one-line message on stderr
and exit status 2; nothing already written to disk is removed.
"""

from __future__ import annotations

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
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


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
