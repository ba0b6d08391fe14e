"""Options that several commands share (`eval`, `audit`, `sweep`): one declaration, one help text."""

from __future__ import annotations

import typer

QUESTIONS = typer.Option(
    None, help="default | toy | PATH to a question YAML (default: toy for the toy model, else default)."
)
JUDGE = typer.Option(None, help="toy | openai:MODEL (default: toy for the toy model).")
JUDGE_BASE_URL = typer.Option(None, help="Base URL of an OpenAI-compatible judge server.")
JUDGE_API_KEY_ENV = typer.Option(
    None, help="Environment variable holding the judge's API key (default OPENAI_API_KEY)."
)
REPORT_TO_EM = typer.Option(
    "none",
    help="Experiment tracker for the EM results (rate, interval, outcome shares, answers): tensorboard | wandb | "
    "mlflow | trackio | none. Offline, files in the run directory (or --out), as `train --report-to`.",
)
