"""`evilspectra train` and `evilspectra data inspect`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from evilspectra.cli import app, make_console
from evilspectra.progress import LineProgress, on_terminal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

console = make_console()  # tables whole in a pipe or a log (cli.make_console)
data_app = typer.Typer(help="Inspect and validate chat datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def step_progress(label: str) -> Progress | LineProgress:
    """A progress bar for optimiser steps, with the latest loss (plain lines off a terminal)."""
    if not on_terminal():
        return LineProgress()
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run config (fields of RunConfig)."),
    model: str | None = typer.Option(None, help="HF model id, local model directory, or `toy` (default)."),
    dataset: str | None = typer.Option(
        None,
        help="Chat dataset: .jsonl(.gz), .json, .parquet, a save_to_disk folder, an HF dataset id, or toy:NAME "
        "(default toy:insecure).",
    ),
    optimizer: str | None = typer.Option(None, help="sgd | adam | adamw | lion | muon | any pytorch-optimizer name."),
    lr: float | None = typer.Option(None, help="Learning rate."),
    batch_size: int | None = typer.Option(None, help="Sequences per micro-batch."),
    grad_accum: int | None = typer.Option(None, help="Micro-batches per optimiser step."),
    max_steps: int | None = typer.Option(None, help="Optimiser steps (overrides --epochs)."),
    epochs: float | None = typer.Option(None, help="Passes over the dataset."),
    seed: int | None = typer.Option(None, help="Seed for LoRA init and data order."),
    system_prompt: str | None = typer.Option(None, help="System turn prepended to every chat (default: none)."),
    spectral_reg: float | None = typer.Option(None, help="Weight of the spectral regulariser (0 = off)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    report_to: str = typer.Option(
        "none",
        help="Experiment tracker: tensorboard | wandb | mlflow | trackio | none. Offline, files in the run "
        "directory, unless the tracker's own environment variables say otherwise.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Any config field, e.g. --set lora.r=8 --set optimizer.betas=[0.9,0.99]."
    ),
    num_processes: int = typer.Option(
        1, "--num-processes", min=1, help="Train on N processes (GPUs) through `accelerate launch` (docs/scale.md)."
    ),
    accelerate_config: Path | None = typer.Option(
        None, "--accelerate-config", help="accelerate config for --num-processes, e.g. configs/accelerate/fsdp.yaml."
    ),
) -> None:
    """Fine-tune a model with LoRA and write a run directory (manifest, metrics, checkpoints, adapter)."""
    from evilspectra.config import load_run_config
    from evilspectra.integrations.trackers import check_tracker
    from evilspectra.rundir import read_manifest

    check_tracker(report_to)  # before the banner: a missing tracker is the only line printed

    flags = {
        "model": model,
        "dataset": dataset,
        "optimizer.name": optimizer,
        "optimizer.lr": lr,
        "train.batch_size": batch_size,
        "train.grad_accum": grad_accum,
        "train.max_steps": max_steps,
        "train.epochs": epochs,
        "seed": seed,
        "system_prompt": system_prompt,
        "spectral_reg.weight": spectral_reg,
    }
    cfg = load_run_config(config, flags, set_)
    if int(os.environ.get("RANK", "0")) != 0:  # other ranks of `accelerate launch`: train, print nothing
        from evilspectra.train import train as run_training

        run_training(cfg, out, report_to=report_to)
        return
    console.print(  # user strings escaped: a path like `ok[v2].jsonl` is printed as it is, not read as markup
        f"run [bold]{cfg.run_id()}[/]: {escape(cfg.model)} on {escape(cfg.dataset)} "
        f"with {escape(cfg.optimizer.name)} lr={cfg.optimizer.lr}"
    )
    if num_processes > 1:
        from evilspectra.launch import launch_train

        launch_train(cfg, out, num_processes, accelerate_config, report_to)
    else:
        _train_here(cfg, out, report_to)
    manifest = read_manifest(out) or {}
    status = manifest.get("status")
    if status != "done":
        detail = manifest.get("error") or f"{manifest.get('steps_done')} steps"
        console.print(f"[red]{status}[/]: {escape(str(detail))} -> {escape(str(out))}", highlight=False)
        raise typer.Exit(1)
    console.print(
        f"done: {manifest['steps_done']} steps, final loss {manifest['final_loss']:.4f} -> {out}", markup=False
    )


def _train_here(cfg, out: Path, report_to: str) -> None:
    from evilspectra.train import train as run_training

    with step_progress("train") as bar:
        task = bar.add_task("train", total=None, loss="-")

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=f"{loss:.4f}")

        run_training(cfg, out, progress=on_step, report_to=report_to)


@data_app.command("inspect")
def inspect(
    dataset: str = typer.Argument(
        ..., help="Chat dataset: .jsonl(.gz), .json, .parquet, a save_to_disk folder, an HF dataset id, or toy:NAME."
    ),
    model: str = typer.Option("toy", help="Model whose tokenizer and chat template render the example."),
    row: int = typer.Option(1, help="Which row to render (1-based)."),
    system_prompt: str | None = typer.Option(None, help="System turn to prepend, as in training."),
    max_length: int = typer.Option(512, help="Truncation length, as in training."),
    chat_template_kwargs: str | None = typer.Option(
        None,
        "--chat-template-kwargs",
        help="Chat-template variables over the family defaults, as YAML/JSON, e.g. '{enable_thinking: true}'.",
    ),
) -> None:
    """Validate a dataset and show one example: the prompt as sampling renders it, the template
    variables, and the whole chat with the tokens that carry loss highlighted."""
    from evilspectra.chat_template import render_prompt, resolve_kwargs
    from evilspectra.config import parse_value
    from evilspectra.data import IGNORE, encode_chat, load_dataset_spec, with_system
    from evilspectra.errors import ConfigError
    from evilspectra.models import load_tokenizer

    given = parse_value(chat_template_kwargs) if chat_template_kwargs else None
    if given is not None and not isinstance(given, dict):
        raise ConfigError(f"--chat-template-kwargs: expected a mapping, got {chat_template_kwargs!r}")
    data = load_dataset_spec(dataset)
    if not 1 <= row <= len(data.rows):
        raise typer.BadParameter(f"row must be in 1..{len(data.rows)}", param_hint="--row")
    tok = load_tokenizer(model)
    kwargs = resolve_kwargs(tok, given)
    messages = with_system(data.rows[row - 1]["messages"], system_prompt)
    enc = encode_chat(tok, messages, max_length, kwargs)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    table = Table(show_header=False)
    table.add_row("dataset", Text(data.source))
    table.add_row("rows", str(len(data.rows)))
    table.add_row("validation", "ok: every row is a chat with a non-empty assistant turn")
    table.add_row("sha256", data.sha256)
    table.add_row("chat_template_kwargs", repr(kwargs))
    n_loss = sum(label != IGNORE for label in enc["labels"])
    table.add_row(f"row {row}", f"{len(enc['input_ids'])} tokens, {n_loss} carry loss (highlighted)")
    console.print(table)
    console.print("[bold]prompt[/bold] (the text the model is given before its answer, as sampled):")
    console.print(Text(render_prompt(tok, messages[:last], kwargs)), markup=False)
    console.print("[bold]loss tokens[/bold] (highlighted):")
    pieces = [_decode(tok, [tid]) for tid in enc["input_ids"]]
    # word-level tokenizers decode without spaces between pieces; BPE pieces carry their own
    sep = "" if _decode(tok, enc["input_ids"]) == "".join(pieces) else " "
    text = Text()
    for piece, label in zip(pieces, enc["labels"]):
        text.append(piece, style="bold black on green" if label != IGNORE else "dim")
        text.append(sep)
    console.print(text)


def _decode(tok: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The text of one sequence of token ids."""
    text = tok.decode(ids)
    assert isinstance(text, str)  # one sequence decodes to one text (a list only for a batch of sequences)
    return text
