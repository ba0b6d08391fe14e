"""`evilspectra card RUN [--push REPO_ID]`: the adapter's Hugging Face model card."""

from __future__ import annotations

from pathlib import Path

import typer

from evilspectra.cli import app, make_console

console = make_console()  # tables whole in a pipe or a log (cli.make_console)


@app.command("card")
def card(
    run: Path = typer.Argument(..., help="Run directory (its adapter/ gets the card) or a PEFT adapter directory."),
    push: str | None = typer.Option(
        None, "--push", metavar="REPO_ID", help="Also upload the adapter folder to this Hub model repo (HF_TOKEN)."
    ),
    license: str | None = typer.Option(
        None,
        metavar="ID",
        help="Hub licence id of the card (default: the card's own, else the base model's when registered, else "
        "`other`).",
    ),
) -> None:
    """Write the adapter's model card: optimiser, LoRA, data, seed, loss, spectra vs references, EM verdict."""
    from evilspectra.card import push_card, write_card

    if push:  # paths and repo ids printed verbatim, never read as markup
        console.print(f"uploaded to {push_card(run, push, license=license)}", markup=False)
    else:
        console.print(f"wrote {write_card(run, license=license)}", markup=False)
