"""`evilspectra analyze` and `evilspectra report`: statistics and the HTML report of a sweep directory."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from evilspectra.artefacts.paths import ANALYSIS
from evilspectra.cli import app, make_console

if TYPE_CHECKING:
    from evilspectra.artefacts.analysis_record import Analysis

console = make_console()  # tables whole in a pipe or a log (cli.make_console)
_LABELLED = f"{Path(ANALYSIS).stem}.LABEL{Path(ANALYSIS).suffix}"  # SweepDir.analysis_for's file


@app.command()
def analyze(
    sources: list[Path] = typer.Argument(
        ..., help="A sweep directory (holds its results table), or run directories evaluated with `evilspectra eval`."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where run directories' results table and analysis go (needed for run dirs)."
    ),
    windows: int = typer.Option(2, min=1, help="Windows of training progress for the optimiser-vs-loss comparison."),
    margin: float = typer.Option(0.05, help="Adjusted-R^2 gain that counts as the optimiser overtaking loss."),
    judge_label: str | None = typer.Option(
        None,
        "--judge-label",
        help=f"Analyse the evaluations re-judged by `evilspectra rejudge ... --label LABEL` into {_LABELLED} "
        f"({ANALYSIS}, the first judgement's, is kept); the claims table shows both judges' verdicts.",
    ),
) -> None:
    """Per-optimiser misalignment with CIs, loss/optimiser regressions, spectra, regulariser; writes the analysis JSON."""
    # imported when the command runs, not at the top: every `evilspectra --help` would pay for
    # pandas, scipy and the statistics otherwise
    from evilspectra.analysis import analysis_is_current, analysis_path, definition_text, load_analysis
    from evilspectra.analysis import analyze as run_analysis
    from evilspectra.evaluate.rejudge import judge_labels

    source = sources[0] if len(sources) == 1 else sources
    dest = out or sources[0]
    result = run_analysis(source, windows=windows, margin=margin, out=out, judge_label=judge_label)
    first = None
    if judge_label is not None:  # the first judgement's verdicts, beside the re-judgement's
        first = (
            load_analysis(dest)
            if analysis_is_current(dest)
            else run_analysis(source, windows=windows, margin=margin, out=out)
        )
    console.print(definition_text(result.definitions))
    print_rates(result)
    print_regressions(result)
    print_regulariser(result)
    print_claims(result, first)
    others = [] if judge_label is not None else judge_labels(dest, result.run_dirs or None)
    if others:
        console.print(
            f"re-judged evaluations found ({', '.join(others)}): `evilspectra analyze ... --judge-label "
            f"{others[0]}` analyses them and shows both judges' verdicts; `evilspectra report` shows every judge",
            markup=False,
            soft_wrap=True,
        )
    console.print(f"analysis -> {analysis_path(dest, judge_label)}", markup=False)


@app.command()
def report(
    sources: list[Path] = typer.Argument(
        ...,
        help="A sweep directory (holds its results table; the analysis is made when absent), or run directories.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where run directories' analysis and report go."),
    open_: bool = typer.Option(False, "--open/--no-open", help="Open the report in a browser."),
) -> None:
    """Write the HTML report into the sweep directory (or --out): self-contained (plots embedded), opens offline."""
    from evilspectra.analysis import analyze as run_analysis  # imported here: start-up speed (see analyze)
    from evilspectra.report import write_report

    target = sources[0]
    if out is not None or len(sources) > 1:
        run_analysis(sources[0] if len(sources) == 1 else sources, out=out)
        assert out is not None  # analyze refuses several run directories without --out (DataError)
        target = out
    path = write_report(target).resolve()
    console.print(str(path), highlight=False, soft_wrap=True, markup=False)
    if open_:
        webbrowser.open(path.as_uri())


def print_rates(result: Analysis) -> None:
    """Pooled rates per optimiser (regulariser off) and the spread across optimisers."""
    table = Table(
        "optimizer",
        "runs",
        "misaligned",
        "95% CI (answers)",
        "95% CI (runs)",
        "denominator",
        "incoherent",
        "CODE",
        "mean aligned",
        title="Misalignment by optimiser (final checkpoints, regulariser off)",
    )
    for row in result.per_optimizer:
        table.add_row(
            row.optimizer,
            str(row.n_runs),
            _pct(row.rate),
            _ci(row.ci_low, row.ci_high),
            _ci(row.ci_runs_low, row.ci_runs_high),
            f"{row.n_misaligned}/{row.n_denominator}",
            _pct(row.share_incoherent),
            _pct(row.share_CODE),
            _num(row.mean_aligned),
        )
    console.print(table)
    s = result.spread
    if s.get("ratio") is not None:
        console.print(
            f"spread: {s['max_optimizer']} {_pct(s['max_rate'])} / {s['min_optimizer']} {_pct(s['min_rate'])}"
            f" = {s['ratio']:.1f}x"
        )
    else:
        console.print(f"spread: - ({s['reason']})")


def print_regressions(result: Analysis) -> None:
    """Both loss fits, then per window of training progress, and where the optimiser overtakes."""
    table = Table(
        "model", "n", "params", "R^2", "adj R^2", "note", title="Mean alignment on log final training loss (OLS)"
    )
    reg, overtake = result.regression, result.overtake
    for fit in (reg["loss_only"], reg["stratified"]):
        table.add_row(
            fit["formula"],
            str(fit["n"]),
            str(fit["n_params"] or "-"),
            _num(fit["r2"], 3),
            _num(fit["adj_r2"], 3),
            fit.get("reason", ""),
        )
    for w in overtake["windows"]:
        table.add_row(
            f"progress {w['progress_low']:.2f}-{w['progress_high']:.2f}: loss only / stratified",
            str(w["n"]),
            "",
            "",
            f"{_num(w['adj_r2_loss'], 3)} / {_num(w['adj_r2_stratified'], 3)}",
            w.get("reason") or "",
        )
    console.print(table)
    first = overtake["first_window"]
    console.print(
        "optimiser overtakes loss as predictor: "
        + (f"window {first + 1} (adj R^2 gain > {overtake['margin']})" if first is not None else "in no window")
    )


def print_regulariser(result: Analysis) -> None:
    """Paired differences of the spectral regulariser per optimiser and weight, and unpaired runs."""
    reg = result.regulariser
    table = Table(
        "optimizer",
        "weight",
        "pairs",
        "delta mean aligned",
        "delta misaligned",
        "delta final loss",
        title="Spectral regulariser: paired differences (on - off, same config)",
    )
    for row in reg["by_optimizer"] + (
        [{"optimizer": "all", "spectral_reg": None, **reg["overall"]}] if reg["overall"] else []
    ):
        table.add_row(
            row["optimizer"],
            _num(row["spectral_reg"], 3),
            str(row["n"]),
            _num(row["delta_mean_aligned"], 2),
            _pct(row["delta_misalignment_rate"]),
            _num(row["delta_final_loss"], 4),
        )
    console.print(table)
    if reg["unpaired"]:
        console.print(
            f"{len(reg['unpaired'])} regularised run(s) without an unregularised twin: {', '.join(reg['unpaired'])}"
        )


def print_claims(result: Analysis, first: Analysis | None = None) -> None:
    """The claims table, judged by `result`'s judge; with `first` (the first judgement's analysis of a
    re-judged sweep), that judge's estimate and verdict beside each row."""
    table = Table(
        "claim", "paper", "this sweep", "95% CI", f"verdict ({_judge_name(result, label=False)})", "stability"
    )
    table.title = f"The study's claims (evilspectra.claims), judge {_judge_name(result)}"
    if first is not None:
        table.add_column(f"first judge ({_judge_name(first)}): this sweep / verdict")
    before = {c.id: c for c in first.claims} if first is not None else {}
    for c in result.claims:
        ci = c.ci or [None, None]  # a side may be unbounded or missing (a ratio over a rate near 0)
        cells = [
            c.claim,
            c.paper,
            _num(c.estimate, 3),
            "-" if ci == [None, None] else f"{_num(ci[0], 3)} to {_num(ci[1], 3)}",
            c.verdict,
            (c.stability.why if c.stability else "") or "stable",
        ]
        if first is not None:
            old = before.get(c.id)
            cells.append("-" if old is None else f"{_num(old.estimate, 3)} / {old.verdict}")
        table.add_row(*cells)
    console.print(table)


def _judge_name(result: Analysis, label: bool = True) -> str:
    """The judge of an analysis (escaped: a name is not markup), with its `rejudge` label when it is a
    re-judgement and `label`."""
    name, judge_label = result.judge_name(), result.judge_label()
    return escape(f"{name}, re-judgement {judge_label}" if label and judge_label else name)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"{100 * lo:.1f}-{100 * hi:.1f}%"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
