"""The sweep report: one self-contained HTML page with the sweep's figures and tables.

Every plot is a matplotlib (Agg) PNG embedded as a base64 data URI and the styling is inline, so
the file opens offline, can be mailed, and needs nothing beside it. The numbers come from
the analysis (computed first when absent), the points from the results table and the runs'
spectra tables. A tiny inline script records on load how many images decoded
(`<body data-images-ok="N/M">`), which the tests read back from headless Chromium.

Every judged figure and table names its judge. The report is of the first judgement; where the
sweep's evaluations were also re-judged (`evilspectra rejudge SWEEP --label L`), a section "Judges
compared" shows each claim's estimate and verdict under every judge side by side (each judge's
analysis in its own file, SweepDir.analysis_for, computed when absent or stale) and, per
re-judgement, the two judges' scores of the same answers against each other with their agreement
(evaluate/agreement).

This module composes the page; its parts live beside it: report_figures (matplotlib figures),
report_tables (HTML tables and number formats), report_page (claims, judges, the page and its style).
Every name importable from this module before the split still is.
"""

from __future__ import annotations

from pathlib import Path

from evilspectra.analysis import load_analysis, load_results
from evilspectra.artefacts.io import atomic_write_text
from evilspectra.artefacts.paths import REPORT, SweepDir
from evilspectra.evaluate.rejudge import judge_labels
from evilspectra.report_figures import (
    figure,
    optimizer_colors,
    plot_loss_alignment,
    plot_rates,
    plot_regulariser,
    plot_spectra,
    plot_trajectories,
)
from evilspectra.report_page import (
    CSS,
    IMAGE_CHECK,
    VERDICT_STYLE,
    claims_section,
    config_section,
    judge_name,
    judge_note,
    judges_section,
    page,
    section,
)
from evilspectra.report_tables import (
    correlation_table,
    denominator_table,
    matched_table,
    regression_table,
    regulariser_table,
    windows_table,
)

__all__ = ["CSS", "IMAGE_CHECK", "REPORT", "VERDICT_STYLE", "judge_name", "judge_note", "write_report"]


def write_report(sweep_dir: str | Path) -> Path:
    """Write the sweep's report (SweepDir.report, atomically) and return its path."""
    import matplotlib  # here, not at the top: matplotlib takes a second to import

    matplotlib.use("Agg")  # files only: no display, the same pixels everywhere
    sweep_dir = Path(sweep_dir)
    analysis = load_analysis(sweep_dir)
    results = load_results(sweep_dir)
    runs = analysis.run_dirs or None
    rejudged = {label: load_analysis(sweep_dir, label) for label in judge_labels(sweep_dir, runs)}
    colors = optimizer_colors(sorted(results["optimizer"].unique()))
    judge = judge_note(analysis)
    sections = [
        claims_section(analysis),
        judges_section(sweep_dir, analysis, rejudged, runs),
        config_section(sweep_dir, analysis),
        section(
            "Misalignment by optimiser",
            figure(plot_rates(analysis, colors)),
            "Bars: share of coherent answers that are misaligned, pooled over each optimiser's final "
            "checkpoints, with 95% Wilson intervals; hatched bars: share of all answers that were incoherent. "
            "A low rate with a tall hatched bar is a broken model, not a safe one.",
            denominator_table(analysis),
            judge=judge,
        ),
        section(
            "Training loss vs alignment",
            figure(plot_loss_alignment(results, analysis, colors)),
            "Each point is one run's final checkpoint. Dashed black: one line for all runs (loss only); "
            "coloured: a line per optimiser, drawn only where its points span enough ln-loss for a slope "
            "(see the table's notes). If the coloured lines sit apart at equal loss, the optimiser "
            "matters beyond the loss it reaches.",
            regression_table(analysis),
            judge=judge,
        ),
        section(
            "Trajectories through loss-alignment space",
            figure(plot_trajectories(analysis, colors)),
            "Left: each optimiser's checkpoints in training order (arrows point forward; labels are steps), "
            "averaged over its runs. Right: adjusted R^2 of the two models fitted within windows of training "
            "progress; where the stratified line pulls away, the optimiser explains alignment that loss does not.",
            windows_table(analysis) + matched_table(analysis),
            judge=judge,
        ),
        section(
            "Normalised LoRA spectra",
            figure(plot_spectra(sweep_dir, results, analysis, colors)),
            "Mean over modules and runs of sigma_i / sigma_1 of the final adapter. A flat line at 1 is an "
            "update spread evenly over all r directions; a fast drop is a few dominant directions. "
            "Dashed: with the spectral regulariser.",
            correlation_table(analysis),
            judge=judge,
        ),
        section(
            "Spectral regulariser: before and after",
            figure(plot_regulariser(analysis, colors)),
            "Each grey line joins a run without the regulariser to its twin with it (same config otherwise); "
            "bars are the means over pairs. Up on the left and down on the right is the regulariser helping.",
            regulariser_table(analysis),
            judge=judge,
        ),
    ]
    path = SweepDir(sweep_dir).report
    atomic_write_text(path, page(analysis, sections))
    return path
