"""`evilspectra sweep`: run a grid of train -> spectra -> eval runs, resumably."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from evilspectra.cli import app, make_console
from evilspectra.progress import LineProgress, on_terminal

console = make_console()  # tables whole in a pipe or a log (cli.make_console)


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML, or a preset name (toy-optimisers)."),
    out: Path = typer.Option(..., "--out", "-o", help="Sweep directory (runs, results table)."),
    executor: str = typer.Option("local", help="local | ray"),
    ray_address: str | None = typer.Option(None, help="Ray cluster address (default: start Ray locally)."),
    max_parallel: int = typer.Option(1, min=1, help="Runs at a time."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the runs and the judge-call estimate; run nothing."),
    report_to: str = typer.Option(
        "none",
        help="Experiment tracker for every run's training metrics and EM results: tensorboard | wandb | mlflow | "
        "trackio | none. Offline, files in each run directory, as `train --report-to`.",
    ),
) -> None:
    """Expand the grid and run every unfinished run; rerun the same command to resume."""
    # imported when the command runs (start-up speed of the CLI); a dry run never imports the training code
    from evilspectra.artefacts.paths import SweepDir
    from evilspectra.integrations.trackers import check_tracker
    from evilspectra.sweep_spec import load_sweep
    from evilspectra.sweep_state import MISMATCH, plan

    check_tracker(report_to)

    spec = load_sweep(sweep_file)
    runs = plan(spec, out)
    todo = sum(not finished for _, finished in runs)
    if dry_run:
        _print_plan(spec, runs)
        return
    from evilspectra.sweep_run import BUSY, run_sweep  # torch, accelerate, the trainer: only to run

    console.print(
        f"sweep [bold]{escape(spec.name)}[/]: {len(runs)} runs, {len(runs) - todo} already finished, {todo} to run"
    )
    failed: list[dict] = []
    busy: list[dict] = []  # held by another sweep or train: left to it, not failed
    with _runs_progress() as bar:
        task = bar.add_task("runs", total=todo, last="")

        def on_done(result: dict) -> None:
            if result["status"] in ("failed", MISMATCH):
                failed.append(result)
            elif result["status"] == BUSY:
                busy.append(result)
            bar.update(task, advance=1, last=f"{result['run_id']} {result['status']}")

        results = run_sweep(spec, out, executor, max_parallel, ray_address, on_done=on_done, report_to=report_to)
    for result in failed:
        error_file = SweepDir(out).run(result["run_id"]).error  # pointed at only when it was written
        what = f"failed in {result['stage']}" if result["status"] == "failed" else "not run"
        see = f" (see {error_file})" if error_file.is_file() else ""
        console.print(f"[red]run {result['run_id']} {what}:[/] {escape(result['error'] + see)}", highlight=False)
    for result in busy:
        console.print(f"note: run {result['run_id']} left to the process writing it: {escape(result['error'])}")
    console.print(f"{len(results)} result rows -> {SweepDir(out).results}", markup=False)
    if failed:
        raise typer.Exit(1)


def _runs_progress() -> Progress | LineProgress:
    """The sweep's bar of finished runs, with the last run's status (plain lines off a terminal)."""
    if not on_terminal():
        return LineProgress()
    return Progress(
        TextColumn("[bold]runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
    )


def _print_per_model(spec, estimates: dict[str, dict]) -> None:
    table = Table("model", "runs", "GPUs/run", "sampling", "GPU-hours", "judge calls")
    total_hours: float | None = 0.0
    for model, est in estimates.items():
        res, settings = spec.resources_for(model), spec.eval_for(model)
        sampling = settings.backend + (
            f" tp{settings.tensor_parallel_size}" if settings.backend == "vllm" else f" {settings.device_map or ''}"
        )
        hours = est["gpu_hours"]
        total_hours = None if hours is None or total_hours is None else total_hours + hours
        table.add_row(
            Text(model),
            str(est["runs"]),
            f"{res.num_gpus:g}" + (f" {Path(res.accelerate_config).stem}" if res.num_processes > 1 else ""),
            sampling.strip(),
            "?" if hours is None else f"{hours:,.2f}",
            f"{est['judge_calls']:,}",
        )
    console.print(table)
    if total_hours is not None:
        console.print(f"{total_hours:,.2f} GPU-hours in all (from each model's resources.hours_per_run)")


def _print_plan(spec, runs) -> None:
    from evilspectra.registry import is_local_judge
    from evilspectra.sweep_estimate import estimate_per_model

    table = Table("run id", "optimizer", "lr", "dataset", "seed", "spectral_reg", "status")
    for cfg, finished in runs:
        table.add_row(
            cfg.run_id(),
            Text(cfg.optimizer.name),
            f"{cfg.optimizer.lr:g}",
            Text(cfg.dataset),
            str(cfg.seed),
            f"{cfg.spectral_reg.weight:g}",
            "finished" if finished else "to run",
        )
    console.print(table)
    todo = [cfg for cfg, finished in runs if not finished]
    estimates = estimate_per_model(spec, todo)
    _print_per_model(spec, estimates)
    samples = sum(m["answers"] for m in estimates.values())
    calls = sum(m["judge_calls"] for m in estimates.values())
    judge = spec.eval.judge
    console.print(
        f"{len(todo)} runs to run; {samples} answers to sample; "
        f"{calls} judge calls with {judge}" + (" (local judge: free)" if is_local_judge(judge) else "")
    )
