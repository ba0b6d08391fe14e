"""The `evilspectra` command line: one file per command group, registered on one typer app.

Every command turns a user's error into one line `error: ...` on stderr (print_error) and exit status
2: the project's own errors (EvilSpectraError), a file the system refuses (OSError: a missing folder,
a read-only one) and the command line's own (a missing option, a value of the wrong type); nothing
already written to disk is removed.
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
HELP_PIPE_WIDTH = 100  # --help off a terminal without COLUMNS: its boxes are this wide (rich's default: 80)


def _complete_help() -> None:
    """`--help` as a reader needs it, through typer's rich help (typer 0.29):
    - a flag's row shows no type: typer prints `--no-eval <bool>` for a flag that takes no value and
      rejects one;
    - a word longer than its column (`optimizer.betas=[0.9,0.99]`) folds onto the next line instead
      of being cut to `optimizer.betas=[0.9,0.…`;
    - off a terminal without COLUMNS (a pipe, a log) the help is HELP_PIPE_WIDTH wide, so examples
      fit on their line.
    """
    from typer import rich_utils
    from typer.core import TyperOption

    display_type = TyperOption.display_type_rich
    TyperOption.display_type_rich = (  # type: ignore[method-assign]  # typer has no hook for a flag's type
        lambda self, ctx: None if self.is_flag or self.count else display_type(self, ctx)
    )
    make_text = rich_utils._make_rich_text

    def folded_text(*args, **kwargs):
        text = make_text(*args, **kwargs)
        if isinstance(text, Text):
            text.overflow = "fold"
        return text

    rich_utils._make_rich_text = folded_text
    if rich_utils.MAX_WIDTH is None and not Console().is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        rich_utils.MAX_WIDTH = HELP_PIPE_WIDTH


_complete_help()


def error_message(exc: BaseException) -> str:
    """What went wrong, for a user: the project's message; a refused file's name and the system's
    reason; else the exception's type and message (a crash, still one line)."""
    if isinstance(exc, EvilSpectraError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def print_error(message: str) -> None:
    """`error: MESSAGE` on stderr in one line: a message of several lines (a config's invalid fields)
    joined with `; `, never wrapped at the console width, so long paths stay whole and greppable."""
    lines = (" ".join(line.split()) for line in message.splitlines())
    err_console.print(Text.assemble(("error: ", "bold red"), "; ".join(line for line in lines if line)), soft_wrap=True)


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
        # not standalone: the command line's own errors come here instead of typer's boxed panel
        code = app(standalone_mode=False)
    except (EvilSpectraError, OSError) as exc:
        print_error(error_message(exc))
        sys.exit(2)
    except typer.TyperException as exc:  # click's usage errors: missing option, bad value, no such command
        if type(exc).__name__ != "NoArgsIsHelpError":  # the help was printed: nothing else to say
            print_error(_usage_error(exc))
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: typer.TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return exc.format_message().rstrip(".") + see
