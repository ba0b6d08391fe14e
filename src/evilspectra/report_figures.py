"""The report's figures: matplotlib (Agg) figures of an analysis and its results table, and
`figure`, which embeds one as a PNG data URI (or a note when there was nothing to plot).

matplotlib is imported inside the functions that draw, not at the top: it takes a second or more
to import, and `evilspectra.report` is imported by commands that never draw (`analyze`).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from evilspectra.artefacts.analysis_record import Analysis
from evilspectra.artefacts.paths import RunDir, SweepDir
from evilspectra.report_tables import num
from evilspectra.spectra_plot import mean_normalised_spectrum

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def optimizer_colors(names: list[str]) -> dict[str, Any]:
    """One tab10 colour per optimiser, the same in every figure."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def figure(fig: Figure | str) -> str:
    """A matplotlib figure as an <img> with a PNG data URI (or a note when there was nothing to plot)."""
    if isinstance(fig, str):
        return f'<p class="empty">{html.escape(fig)}</p>'
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import (module docstring)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def plot_rates(analysis: Analysis, colors: dict) -> Figure | str:
    """Pooled rate per optimiser with its Wilson interval, beside its incoherent share; base models dotted."""
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import (module docstring)

    # (row, rate, Wilson interval): a rate always comes with its interval (analysis_rates.pooled_rates)
    rated = [
        (r, r.rate, r.ci_low, r.ci_high)
        for r in analysis.per_optimizer
        if r.rate is not None and r.ci_low is not None and r.ci_high is not None
    ]
    rows = [r for r, *_ in rated]
    if not rows:
        return "No optimiser has scored answers at its final checkpoint."
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(rows))
    rate = np.array([rt for _, rt, _, _ in rated])
    err = np.array([[rt - lo, hi - rt] for _, rt, lo, hi in rated]).T
    ax.bar(
        x - 0.2,
        100 * rate,
        0.4,
        yerr=100 * err,
        capsize=4,
        color=[colors[r.optimizer] for r in rows],
        label="misaligned (of coherent)",
    )
    ax.bar(
        x + 0.2,
        [100 * (r.share_incoherent or 0) for r in rows],
        0.4,
        color="white",
        hatch="///",
        edgecolor=[colors[r.optimizer] for r in rows],
        label="incoherent (of all)",
    )
    for xi, (_, rt, _, hi) in zip(x, rated):
        ax.text(xi - 0.2, 100 * hi + 1, f"{100 * rt:.1f}%", ha="center", fontsize=8)
    for base in analysis.base_model:
        if base.get("misalignment_rate") is not None:
            ax.axhline(100 * base["misalignment_rate"], color="grey", ls=":", label=f"base model ({base['model']})")
    ax.set_xticks(x, [f"{r.optimizer}\n({r.n_runs} runs)" for r in rows])
    ax.set_ylabel("% of answers")
    ax.set_ylim(0, 1.15 * ax.get_ylim()[1])  # room for the labels above the error bars
    spread = analysis.spread
    ax.set_title(
        "Misalignment rate by optimiser" + (f" (spread {spread['ratio']:.1f}x)" if spread.get("ratio") else "")
    )
    ax.legend(fontsize="small", frameon=False)
    return fig


def plot_loss_alignment(results: pd.DataFrame, analysis: Analysis, colors: dict) -> Figure | str:
    """Each run's final checkpoint, mean alignment on ln(loss), with the fitted lines the data support."""
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import (module docstring)

    final = results[
        (results["status"] == "done") & (results["checkpoint"] == "final") & (results["spectral_reg"].fillna(0) == 0)
    ].dropna(subset=["log_loss", "mean_aligned"])
    if final.empty:
        return "No final checkpoint has both a training loss and a mean alignment."
    reg = analysis.regression
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, g in final.groupby("optimizer"):
        ax.scatter(g["log_loss"], g["mean_aligned"], color=colors[name], label=name, s=28, alpha=0.85)
        line = (reg["stratified"].get("lines") or {}).get(name)
        if line and line.get("drawable"):  # analysis.line_support: no line over too narrow a range
            xs = np.array([line["log_loss_min"], line["log_loss_max"]])
            ax.plot(xs, line["intercept"] + line["slope"] * xs, color=colors[name], lw=1.5)
    if reg["loss_only"]["r2"] is not None and reg["loss_only"].get("drawable"):
        p = reg["loss_only"]["params"]
        xs = np.array([final["log_loss"].min(), final["log_loss"].max()])
        ax.plot(xs, p["Intercept"] + p["log_loss"] * xs, "k--", lw=1.5, label="all runs")
    ax.set_xlabel("ln(final training loss)")
    ax.set_ylabel("mean alignment (0-100)")
    ax.set_title(
        f"loss only: R^2 = {num(reg['loss_only']['r2'], 2)};  "
        f"by optimiser: adj. R^2 = {num(reg['stratified']['adj_r2'], 2)}"
    )
    ax.legend(fontsize="small", frameon=False)
    return fig


def plot_trajectories(analysis: Analysis, colors: dict) -> Figure | str:
    """Checkpoints in training order in loss-alignment space; adjusted R^2 of both fits by progress window."""
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import (module docstring)

    traj = {
        k: [p for p in v if p["loss"] is not None and p["mean_aligned"] is not None]
        for k, v in analysis.trajectories.items()
    }
    if not any(len(v) > 1 for v in traj.values()):
        return "No optimiser has more than one evaluated checkpoint: evaluate checkpoints (eval.checkpoints: all)."
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for name, points in traj.items():
        x, y = [p["loss"] for p in points], [p["mean_aligned"] for p in points]
        ax.plot(x, y, marker="o", color=colors[name], label=name, lw=1)
        for i in range(len(points) - 1):
            ax.annotate(
                "",
                xy=(x[i + 1], y[i + 1]),
                xytext=(x[i], y[i]),
                arrowprops={"arrowstyle": "->", "color": colors[name], "lw": 1.5},
            )
        for i in {0, len(points) - 1}:
            ax.annotate(
                str(points[i]["step"]),
                (x[i], y[i]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=colors[name],
            )
    ax.set_xlabel("training loss (mean of the last 10 steps)")
    ax.set_ylabel("mean alignment (0-100)")
    ax.set_title("Checkpoints in training order")
    ax.legend(fontsize="small", frameon=False)
    windows = analysis.overtake["windows"]
    mid = [(w["progress_low"] + w["progress_high"]) / 2 for w in windows]
    for key, label, style in (("adj_r2_loss", "loss only", "k--o"), ("adj_r2_stratified", "by optimiser", "C3-o")):
        bx.plot(mid, [np.nan if w[key] is None else w[key] for w in windows], style, label=label)
    first = analysis.overtake["first_window"]
    if first is not None:
        bx.axvspan(
            windows[first]["progress_low"],
            windows[first]["progress_high"],
            color="C3",
            alpha=0.1,
            label="optimiser overtakes",
        )
    bx.set_xlim(0, 1)
    bx.set_xlabel("training progress (step / final step)")
    bx.set_ylabel("adjusted R^2")
    bx.set_title("Which predicts alignment, when")
    bx.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def plot_spectra(sweep_dir: Path, results: pd.DataFrame, analysis: Analysis, colors: dict) -> Figure | str:
    """Mean normalised spectrum (sigma_i / sigma_1) of the final adapters per optimiser and weight."""
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import (module docstring)

    # here, not at the top: the spectra table's module imports torch (seconds), for this one reader
    from evilspectra.spectra_table import read_spectra_csv

    done = results[(results["status"] == "done")].drop_duplicates("run_id")
    frames: dict[tuple[str, float], list[pd.DataFrame]] = {}
    for _, run in done.iterrows():
        hand_run = analysis.run_dirs.get(run["run_id"])
        path = (RunDir(hand_run) if hand_run else SweepDir(sweep_dir).run(run["run_id"])).spectra
        if path.is_file():
            df = read_spectra_csv(path)
            frames.setdefault((run["optimizer"], float(run["spectral_reg"] or 0)), []).append(
                df[df["checkpoint"] == "final"]
            )
    finals = {k: pd.concat(v) for k, v in frames.items() if sum(len(f) for f in v)}
    if not finals:
        return "No run has a final spectrum (written by `evilspectra spectra RUN`)."
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, weight), df in sorted(finals.items()):
        curve = mean_normalised_spectrum(df)
        ax.plot(
            np.arange(1, curve.size + 1),
            curve,
            marker=".",
            color=colors[name],
            ls="--" if weight else "-",
            label=f"{name} + regulariser {weight:g}" if weight else name,
        )
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1 (mean over modules and runs)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Final adapter spectra by optimiser (flat = 1)")
    ax.legend(fontsize="small", frameon=False)
    return fig


def plot_regulariser(analysis: Analysis, colors: dict) -> Figure | str:
    """Each regularised run joined to its unregularised twin, alignment and rate, with the means."""
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import (module docstring)

    pairs = pd.DataFrame(analysis.regulariser["pairs"])
    if pairs.empty:
        return "No regularised run has an unregularised twin with the same configuration."
    groups = list(pairs.groupby(["optimizer", "spectral_reg"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col, label, scale in (
        (axes[0], "mean_aligned", "mean alignment (0-100)", 1),
        (axes[1], "misalignment_rate", "misaligned (% of coherent)", 100),
    ):
        for i, ((name, _weight), g) in enumerate(groups):
            off, on = g[f"{col}_off"].astype(float) * scale, g[f"{col}_on"].astype(float) * scale
            ax.bar([3 * i, 3 * i + 1], [off.mean(), on.mean()], color=colors[name], alpha=0.35)
            ax.bar(3 * i + 1, on.mean(), color="none", hatch="..", edgecolor=colors[name])
            for a, b in zip(off, on):
                ax.plot([3 * i, 3 * i + 1], [a, b], color="grey", lw=0.8, marker=".")
        ax.set_xticks(
            [3 * i + d for i in range(len(groups)) for d in (0, 1)],
            [t for (name, w), _ in groups for t in (f"{name}\noff", f"on ({w:g})")],
            fontsize=8,
        )
        ax.set_ylabel(label)
    axes[0].set_title("Mean alignment")
    axes[1].set_title("Misalignment rate")
    fig.tight_layout()
    return fig
