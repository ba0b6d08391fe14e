"""`evilspectra rejudge RUN|SWEEP|EVAL_DIR --judge NEW`: score saved answers with another judge."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from evilspectra.cli import app, options

console = Console()


@app.command("rejudge")
def rejudge_command(
    target: Path = typer.Argument(..., help="A run directory, a sweep directory or one evaluation directory."),
    judge: str = typer.Option(..., help="The new judge: toy | openai:MODEL."),
    judge_base_url: str | None = options.JUDGE_BASE_URL,
    judge_api_key_env: str = typer.Option(
        "OPENAI_API_KEY", help="Environment variable holding the new judge's API key."
    ),
    judge_concurrency: int = typer.Option(8, min=1, help="Most judge requests in flight at once."),
    label: str | None = typer.Option(
        None, help="Label of the new judgement: RUN/eval/<label of the first>--<label>/ (default: from --judge)."
    ),
) -> None:
    """Judge the answers already sampled with another judge, without sampling again,
    into an evaluation of its own beside the first; a sweep also gets a by-judge results table."""
    from contextlib import nullcontext

    from evilspectra.evaluate.rejudge import judge_label, rejudge_eval, rejudge_targets, write_judge_rows
    from evilspectra.rundir import SweepDir

    judging = {
        "judge": judge,
        "judge_base_url": judge_base_url,
        "judge_api_key_env": judge_api_key_env,
        "judge_concurrency": judge_concurrency,
    }
    label = label or judge_label(judge)
    for source, dest, run in rejudge_targets(target, label):
        with run.lock() if run is not None else nullcontext():
            summary = rejudge_eval(source.path, dest.path, judging)
        rate = summary["misalignment_rate"]
        shown = "-" if rate is None else f"{rate:.1%} ({summary['n_misaligned']}/{summary['n_denominator']})"
        console.print(f"{dest.path}: judge {summary['judge']}, misaligned {shown}", markup=False, soft_wrap=True)
    if SweepDir(target).results.is_file():
        console.print(f"wrote {write_judge_rows(target)}", markup=False, soft_wrap=True)
