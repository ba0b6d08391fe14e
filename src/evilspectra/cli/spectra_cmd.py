"""`evilspectra spectra PATH...`: singular-value spectra of LoRA adapters or of every checkpoint of runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import typer
from rich.table import Table
from rich.text import Text

from evilspectra.cli import app, make_console
from evilspectra.errors import AdapterError

console = make_console()  # tables whole in a pipe or a log (cli.make_console)


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _summary_table(summary: pd.DataFrame) -> Table:
    from evilspectra.spectra import METRICS

    table = Table(title="LoRA spectra: mean over modules (flat spectrum: F/N = 1/sqrt(r))")
    for col in ("run", "checkpoint", "step", "modules", "stable rank", "entropy", "cond. number", "F/N"):
        # long run paths fold onto several lines, so the checkpoint label always shows whole
        text = col in ("run", "checkpoint")
        table.add_column(
            col,
            justify="left" if text else "right",
            no_wrap=col == "checkpoint",
            overflow="fold" if text else "ellipsis",
        )
    for row in summary.to_dict("records"):
        step = "-" if pd.isna(row["step"]) else str(int(row["step"]))
        table.add_row(
            Text(str(row["run"])), str(row["checkpoint"]), step, str(row["n_modules"]), *(_fmt(row[m]) for m in METRICS)
        )
    return table


@app.command("spectra")
def spectra(
    paths: list[Path] = typer.Argument(..., help="PEFT adapter directories or run directories"),
    method: str = typer.Option("qr", help="qr (exact) or cholesky (the paper's method)"),
    out: Path | None = typer.Option(
        None,
        help="where the spectra plot (and the spectra table of adapter directories) go; "
        "default: the run directory when given one run, else the current directory",
    ),
) -> None:
    """Spectra of B @ A for every LoRA module: a spectra table per run, a summary table, a plot."""
    from evilspectra.rundir import SPECTRA_PNG
    from evilspectra.spectra import (  # lazy: keeps `evilspectra --help` free of torch
        CONFIG,
        SPECTRA_CSV,
        adapter_spectra,
        aggregate_spectra,
        plot_normalised_spectra,
        run_spectra_frame,
        write_spectra_csv,
    )

    frames: dict[str, pd.DataFrame] = {}
    adapter_frames = []
    for path in paths:
        label = str(path)
        if (path / CONFIG).is_file():
            df = adapter_spectra(path, method)
            # pandas-stubs: insert's value type leaves out pd.NA, a scalar pandas broadcasts like any other
            df.insert(0, "step", pd.NA)  # type: ignore[arg-type]
            df.insert(0, "checkpoint", "final")
            adapter_frames.append(df.assign(run=label))
        elif path.is_dir():
            df = run_spectra_frame(path, method)
            csv = write_spectra_csv(df, path / SPECTRA_CSV)
            console.print(f"wrote {csv}", markup=False)
        else:
            raise AdapterError(f"{path}: neither a PEFT adapter directory nor a run directory")
        frames[label] = df.assign(run=label) if "run" not in df.columns else df

    if out is None:
        only_run = len(paths) == 1 and not adapter_frames
        out = paths[0] if only_run else Path.cwd()
    if adapter_frames:
        combined = pd.concat(adapter_frames, ignore_index=True)
        cols = ["run"] + [c for c in combined.columns if c != "run"]
        console.print(f"wrote {write_spectra_csv(combined[cols], out / SPECTRA_CSV)}", markup=False)

    summary = aggregate_spectra(pd.concat(frames.values(), ignore_index=True))
    console.print(_summary_table(summary))
    console.print(f"wrote {plot_normalised_spectra(frames, out / SPECTRA_PNG)}", markup=False)
