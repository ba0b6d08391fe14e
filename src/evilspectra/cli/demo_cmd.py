"""`evilspectra demo`: the toy optimiser sweep -> analysis -> report, in minutes on a CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from evilspectra.cli import app, make_console
from evilspectra.cli.analysis_cmd import print_claims
from evilspectra.cli.sweep_cmd import sweep as sweep_command

if TYPE_CHECKING:
    from evilspectra.artefacts.analysis_record import Analysis

console = make_console()  # tables whole in a pipe or a log (cli.make_console)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Sweep directory to write (resumable)."),
    preset: str = typer.Option("toy-optimisers", help="Preset sweep (see `evilspectra presets`) or a sweep YAML."),
    max_parallel: int | None = typer.Option(None, min=1, help="Runs at a time (default: one per CPU core)."),
    quick: bool = typer.Option(False, "--quick", help="The small `toy-quick` preset (12 runs): a first look, tests."),
) -> None:
    """Run the embedded toy study: five optimisers (+ the spectral regulariser), analysis with the
    study's claims checked, and report."""
    from evilspectra.analysis import analyze
    from evilspectra.report import write_report
    from evilspectra.sweep import preset_path

    t0 = time.perf_counter()
    parallel = max_parallel or os.cpu_count() or 1
    preset = "toy-quick" if quick else preset
    sweep_command(
        preset_path(preset),
        out,
        executor="local",
        ray_address=None,
        max_parallel=parallel,
        dry_run=False,
        report_to="none",
    )
    result = analyze(out)
    report = write_report(out)
    _print_headline(result)
    print_claims(result)
    console.print(
        f"demo finished in {time.perf_counter() - t0:.0f} s; report: [bold]{escape(str(report.resolve()))}[/]"
    )


def _print_headline(result: Analysis) -> None:
    table = Table(
        "optimizer",
        "misaligned (95% CI)",
        "n coherent",
        "incoherent",
        "CODE",
        "mean aligned",
        title="Emergent misalignment by optimiser (toy world, final checkpoints)",
    )
    for row in result.per_optimizer:
        table.add_row(
            row.optimizer,
            f"{_pct(row.rate)} ({_pct(row.ci_low)}-{_pct(row.ci_high)})",
            str(row.n_denominator),
            _pct(row.share_incoherent),
            _pct(row.share_CODE),
            _num(row.mean_aligned),
        )
    console.print(table)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
