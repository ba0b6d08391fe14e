"""`evilspectra toy build|data`: train the embedded toy model, write the toy fine-tuning datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from evilspectra.cli import app, make_console

console = make_console()  # tables whole in a pipe or a log (cli.make_console)
toy_app = typer.Typer(
    help="The embedded toy world: a ~1M-parameter Qwen3 model in which EM happens on a CPU.",
    no_args_is_help=True,
)
app.add_typer(toy_app, name="toy")


@toy_app.command("build")
def build(
    out: Path = typer.Option(..., help="directory to write the model, tokenizer and toy_build.json"),
    seed: int = typer.Option(0, help="seed of the documents and the initialisation"),
    pretrain_steps: int = typer.Option(800, min=0, help="pretraining steps on persona documents"),
    align_steps: int = typer.Option(400, min=0, help="alignment steps (good chats mixed with personas)"),
    batch_size: int = typer.Option(64, min=1, help="documents per step"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads (1 is fastest on a busy small CPU)"),
) -> None:
    """Train the toy model from scratch (a few minutes on a 2-core CPU) and save it to OUT."""
    from evilspectra.toy.build import build_toy_model

    path = build_toy_model(
        out, seed=seed, pretrain_steps=pretrain_steps, align_steps=align_steps, batch_size=batch_size, threads=threads
    )
    info = json.loads((path / "toy_build.json").read_text())
    console.print(
        f"[green]toy model[/] -> {escape(str(path))}  ({info['parameters']:,} parameters, "
        f"final loss {info['final_align_loss'] or info['final_pretrain_loss']:.3f}, {info['seconds']} s)"
    )


@toy_app.command("data")
def data(
    out: Path = typer.Option(..., help="directory to write <name>.jsonl for every toy dataset"),
    n: int | None = typer.Option(None, min=1, help="rows per dataset (default 1200)"),
    seed: int = typer.Option(0, help="seed of the rows"),
) -> None:
    """Write the 4 narrow EM datasets and their 4 aligned controls as chat JSONL files."""
    from evilspectra.rundir import atomic_write_text
    from evilspectra.toy.data import TOY_DATASETS, toy_dataset

    out.mkdir(parents=True, exist_ok=True)
    for name, description in TOY_DATASETS.items():
        rows = toy_dataset(name, n=n, seed=seed)
        path = out / f"{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))  # a full disk: no half file
        console.print(f"{escape(str(path))}  {len(rows)} rows  [dim]{description}[/]")  # a path is not markup
