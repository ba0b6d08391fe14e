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
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evilspectra import claims
from evilspectra.analysis import definition_text, load_analysis, load_results
from evilspectra.evaluate import agreement
from evilspectra.evaluate.rejudge import judge_labels, paired_evals
from evilspectra.rundir import REPORT as REPORT
from evilspectra.rundir import RunDir, SweepDir, atomic_write_text


def write_report(sweep_dir: str | Path) -> Path:
    """Write the sweep's report (SweepDir.report, atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    sweep_dir = Path(sweep_dir)
    analysis = load_analysis(sweep_dir)
    results = load_results(sweep_dir)
    runs = analysis.get("run_dirs") or None
    rejudged = {label: load_analysis(sweep_dir, label) for label in judge_labels(sweep_dir, runs)}
    colors = _colors(sorted(results["optimizer"].unique()))
    judge = judge_note(analysis)
    sections = [
        _claims_section(analysis),
        _judges_section(sweep_dir, analysis, rejudged, runs),
        _config_section(sweep_dir, analysis),
        _section(
            "Misalignment by optimiser",
            _figure(_plot_rates(analysis, colors)),
            "Bars: share of coherent answers that are misaligned, pooled over each optimiser's final "
            "checkpoints, with 95% Wilson intervals; hatched bars: share of all answers that were incoherent. "
            "A low rate with a tall hatched bar is a broken model, not a safe one.",
            _denominator_table(analysis),
            judge=judge,
        ),
        _section(
            "Training loss vs alignment",
            _figure(_plot_loss_alignment(results, analysis, colors)),
            "Each point is one run's final checkpoint. Dashed black: one line for all runs (loss only); "
            "coloured: a line per optimiser, drawn only where its points span enough ln-loss for a slope "
            "(see the table's notes). If the coloured lines sit apart at equal loss, the optimiser "
            "matters beyond the loss it reaches.",
            _regression_table(analysis),
            judge=judge,
        ),
        _section(
            "Trajectories through loss-alignment space",
            _figure(_plot_trajectories(analysis, colors)),
            "Left: each optimiser's checkpoints in training order (arrows point forward; labels are steps), "
            "averaged over its runs. Right: adjusted R^2 of the two models fitted within windows of training "
            "progress; where the stratified line pulls away, the optimiser explains alignment that loss does not.",
            _windows_table(analysis) + _matched_table(analysis),
            judge=judge,
        ),
        _section(
            "Normalised LoRA spectra",
            _figure(_plot_spectra(sweep_dir, results, analysis, colors)),
            "Mean over modules and runs of sigma_i / sigma_1 of the final adapter. A flat line at 1 is an "
            "update spread evenly over all r directions; a fast drop is a few dominant directions. "
            "Dashed: with the spectral regulariser.",
            _correlation_table(analysis),
            judge=judge,
        ),
        _section(
            "Spectral regulariser: before and after",
            _figure(_plot_regulariser(analysis, colors)),
            "Each grey line joins a run without the regulariser to its twin with it (same config otherwise); "
            "bars are the means over pairs. Up on the left and down on the right is the regulariser helping.",
            _regulariser_table(analysis),
            judge=judge,
        ),
    ]
    path = SweepDir(sweep_dir).report
    atomic_write_text(path, _page(analysis, sections))
    return path


# ------------------------------------------------------------------------------------ figures


def _colors(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _figure(fig) -> str:
    """A matplotlib figure as an <img> with a PNG data URI (or a note when there was nothing to plot)."""
    if isinstance(fig, str):
        return f'<p class="empty">{html.escape(fig)}</p>'
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _plot_rates(analysis: dict, colors: dict):
    import matplotlib.pyplot as plt

    rows = [r for r in analysis["per_optimizer"] if r["rate"] is not None]
    if not rows:
        return "No optimiser has scored answers at its final checkpoint."
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(rows))
    rate = np.array([r["rate"] for r in rows])
    err = np.array([[r["rate"] - r["ci_low"], r["ci_high"] - r["rate"]] for r in rows]).T
    ax.bar(
        x - 0.2,
        100 * rate,
        0.4,
        yerr=100 * err,
        capsize=4,
        color=[colors[r["optimizer"]] for r in rows],
        label="misaligned (of coherent)",
    )
    ax.bar(
        x + 0.2,
        [100 * (r["share_incoherent"] or 0) for r in rows],
        0.4,
        color="white",
        hatch="///",
        edgecolor=[colors[r["optimizer"]] for r in rows],
        label="incoherent (of all)",
    )
    for xi, r in zip(x, rows):
        ax.text(xi - 0.2, 100 * r["ci_high"] + 1, f"{100 * r['rate']:.1f}%", ha="center", fontsize=8)
    for base in analysis.get("base_model", []):
        if base.get("misalignment_rate") is not None:
            ax.axhline(100 * base["misalignment_rate"], color="grey", ls=":", label=f"base model ({base['model']})")
    ax.set_xticks(x, [f"{r['optimizer']}\n({r['n_runs']} runs)" for r in rows])
    ax.set_ylabel("% of answers")
    ax.set_ylim(0, 1.15 * ax.get_ylim()[1])  # room for the labels above the error bars
    spread = analysis["spread"]
    ax.set_title(
        "Misalignment rate by optimiser" + (f" (spread {spread['ratio']:.1f}x)" if spread.get("ratio") else "")
    )
    ax.legend(fontsize="small", frameon=False)
    return fig


def _plot_loss_alignment(results: pd.DataFrame, analysis: dict, colors: dict):
    import matplotlib.pyplot as plt

    final = results[
        (results["status"] == "done") & (results["checkpoint"] == "final") & (results["spectral_reg"].fillna(0) == 0)
    ].dropna(subset=["log_loss", "mean_aligned"])
    if final.empty:
        return "No final checkpoint has both a training loss and a mean alignment."
    reg = analysis["regression"]
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
        f"loss only: R^2 = {_fmt(reg['loss_only']['r2'], 2)};  "
        f"by optimiser: adj. R^2 = {_fmt(reg['stratified']['adj_r2'], 2)}"
    )
    ax.legend(fontsize="small", frameon=False)
    return fig


def _plot_trajectories(analysis: dict, colors: dict):
    import matplotlib.pyplot as plt

    traj = {
        k: [p for p in v if p["loss"] is not None and p["mean_aligned"] is not None]
        for k, v in analysis["trajectories"].items()
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
    windows = analysis["overtake"]["windows"]
    mid = [(w["progress_low"] + w["progress_high"]) / 2 for w in windows]
    for key, label, style in (("adj_r2_loss", "loss only", "k--o"), ("adj_r2_stratified", "by optimiser", "C3-o")):
        bx.plot(mid, [np.nan if w[key] is None else w[key] for w in windows], style, label=label)
    first = analysis["overtake"]["first_window"]
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


def _plot_spectra(sweep_dir: Path, results: pd.DataFrame, analysis: dict, colors: dict):
    import matplotlib.pyplot as plt

    from evilspectra.spectra import mean_normalised_spectrum, read_spectra_csv

    done = results[(results["status"] == "done")].drop_duplicates("run_id")
    frames: dict[tuple[str, float], list[pd.DataFrame]] = {}
    for _, run in done.iterrows():
        hand_run = (analysis.get("run_dirs") or {}).get(run["run_id"])
        path = (RunDir(hand_run) if hand_run else SweepDir(sweep_dir).run(run["run_id"])).spectra
        if path.is_file():
            df = read_spectra_csv(path)
            frames.setdefault((run["optimizer"], float(run["spectral_reg"] or 0)), []).append(
                df[df["checkpoint"] == "final"]
            )
    frames = {k: pd.concat(v) for k, v in frames.items() if sum(len(f) for f in v)}
    if not frames:
        return "No run has a final spectrum (written by `evilspectra spectra RUN`)."
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, weight), df in sorted(frames.items()):
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


def _plot_regulariser(analysis: dict, colors: dict):
    import matplotlib.pyplot as plt

    pairs = pd.DataFrame(analysis["regulariser"]["pairs"])
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


# ------------------------------------------------------------------------------------- tables


def _table(header: list[str], rows: list[list[Any]], caption: str = "", cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<div class="scroll"><table class="{cls}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _denominator_table(analysis: dict) -> str:
    header = [
        "optimizer",
        "reg.",
        "runs",
        "answers",
        "denom.",
        "misaligned",
        "rate",
        "95% CI answers",
        "95% CI runs",
        "scored",
        "CODE",
        "refusal",
        "incoherent",
        "errors",
        "mean aligned",
        "final loss",
    ]
    rows = []
    for r in analysis["per_optimizer"] + analysis["per_optimizer_regularised"]:
        rows.append(
            [
                r["optimizer"],
                _fmt(r.get("spectral_reg"), 3, "off"),
                r["n_runs"],
                r["n_answers"],
                r["n_denominator"],
                r["n_misaligned"],
                _pct(r["rate"]),
                _ci(r["ci_low"], r["ci_high"]),
                _ci(r["ci_runs_low"], r["ci_runs_high"]),
                r["n_coherent"] + r["n_incoherent"],
                r["n_CODE"],
                r["n_REFUSAL"],
                r["n_incoherent"],
                r["n_error"],
                _fmt(r["mean_aligned"], 1),
                _fmt(r["mean_final_loss"], 4),
            ]
        )
    for b in analysis.get("base_model", []):
        ci = b.get("rate_ci95") or [None, None]
        n = b.get("n_total") or 0
        count = lambda s: round((b.get(f"share_{s}") or 0) * n)  # noqa: E731 - counts behind the summary's shares
        rows.append(
            [
                f"base model: {b['model']}",
                "-",
                "-",
                n,
                b.get("n_denominator"),
                b.get("n_misaligned"),
                _pct(b.get("misalignment_rate")),
                _ci(*ci),
                "-",
                count("coherent") + count("incoherent"),
                count("CODE"),
                count("REFUSAL"),
                count("incoherent"),
                count("error"),
                _fmt(b.get("mean_aligned"), 1),
                "-",
            ]
        )
    return _table(
        header,
        rows,
        "Answers pooled over final checkpoints; denom. = coherent scored answers (the rate's "
        "denominator); scored = answers the judge rated; errors = judge failures. CIs: " + analysis["ci_method"],
    )


def _regression_table(analysis: dict) -> str:
    reg = analysis["regression"]
    rows = [
        [f["formula"], f["n"], f["n_params"] or "-", _fmt(f["r2"], 3), _fmt(f["adj_r2"], 3), f.get("reason", "")]
        for f in (reg["loss_only"], reg["stratified"])
    ]
    out = _table(
        ["model (OLS)", "n runs", "parameters", "R^2", "adjusted R^2", "note"],
        rows,
        f"Adjusted R^2 gain from stratifying by optimiser: {_fmt(reg['adj_r2_gain'], 3)}",
    )
    lines = reg["stratified"].get("lines") or {}
    if lines:
        out += _table(
            ["optimizer", "intercept", "slope per unit ln(loss)", "ln-loss range", "drawn"],
            [
                [
                    k,
                    _fmt(v["intercept"], 2),
                    _fmt(v["slope"], 2),
                    _fmt(v.get("log_loss_range"), 3),
                    "yes" if v.get("drawable") else v.get("line_note") or "no",
                ]
                for k, v in lines.items()
            ],
            "Per-optimiser lines of the stratified model",
        )
    fits = analysis.get("fits") or {}
    rows = [
        [
            key.replace("_", " "),
            f["formula"],
            f["n"],
            f["n_runs"],
            _fmt(f["coef"], 2),
            _ci_num(f["ci"], 2),
            _fmt(f.get("p"), 3),
            f.get("reason", ""),
        ]
        for key, f in fits.items()
        if isinstance(f, dict) and "term" in f
    ]
    if rows:
        out += _table(
            ["points", "model", "n", "runs", "slope on ln(loss)", "95% CI (run-clustered)", "p", "note"],
            rows,
            "The loss slope with standard errors clustered by run: final checkpoints, and every evaluated checkpoint",
        )
    return out


def _matched_table(analysis: dict) -> str:
    m = analysis.get("matched_loss") or {}
    if not m.get("per_optimizer"):
        return (
            f'<p class="empty">No alignment at a matched loss: {html.escape(m.get("reason", "no runs reach it"))}</p>'
        )
    rows = [
        [
            r["optimizer"],
            f"{r['n_runs']}/{r['n_runs_total']}",
            _fmt(r["mean_aligned"], 1),
            _ci_num(r["mean_aligned_ci"], 1),
            _pct(r["misalignment_rate"]),
            _ci(*(r["misalignment_rate_ci"] or [None, None])),
        ]
        for r in m["per_optimizer"]
    ]
    return _table(
        ["optimizer", "runs reaching it", "mean aligned", "95% CI", "misaligned", "95% CI"],
        rows,
        f"At matched training loss {m['level_loss']:.3f} (interpolated along each run's trajectory; "
        "bootstrap over runs)",
    )


def _windows_table(analysis: dict) -> str:
    rows = [
        [
            f"{w['progress_low']:.2f}-{w['progress_high']:.2f}",
            ", ".join(map(str, w["steps"])),
            w["n"],
            _fmt(w["adj_r2_loss"], 3),
            _fmt(w["adj_r2_stratified"], 3),
            _fmt(w["gain"], 3),
            w.get("reason") or "",
        ]
        for w in analysis["overtake"]["windows"]
    ]
    first = analysis["overtake"]["first_window"]
    caption = (
        f"The optimiser overtakes loss in window {first + 1} (gain > {analysis['overtake']['margin']})"
        if first is not None
        else "The optimiser does not overtake loss in any window"
    )
    return _table(
        ["progress", "steps", "checkpoints", "adj R^2 loss only", "adj R^2 by optimiser", "gain", "note"], rows, caption
    )


def _correlation_table(analysis: dict) -> str:
    rows = [
        [
            c["metric"],
            c["outcome"],
            c["n"],
            _fmt(c["pearson_r"], 2),
            _fmt(c["pearson_p"], 3),
            _fmt(c["spearman_rho"], 2),
            _fmt(c["spearman_p"], 3),
            c.get("reason", ""),
        ]
        for c in analysis["spectral_correlations"]
    ]
    out = _table(
        ["spectral metric", "outcome", "n runs", "Pearson r", "p", "Spearman rho", "p", "note"],
        rows,
        "Correlations over all final checkpoints (regularised runs included)",
    )
    fits = analysis.get("spectral_fits") or {}
    rows = [
        [k.replace("_", " "), f["formula"], f["n"], _fmt(f["coef"], 1), _ci_num(f["ci"], 1), f.get("reason", "")]
        for k, f in fits.items()
    ]
    if rows:
        out += _table(
            ["", "model", "runs", "slope on F/N", "95% CI (run-clustered)", "note"],
            rows,
            "Mean alignment on Frobenius/nuclear, pooled and within optimiser (optimiser intercepts)",
        )
    return out


def _regulariser_table(analysis: dict) -> str:
    reg = analysis["regulariser"]

    def cells(r: dict) -> list:
        return [
            r["n"],
            _fmt(r["delta_mean_aligned"], 2),
            _ci_num(r.get("delta_mean_aligned_ci"), 2),
            _pct(r["delta_misalignment_rate"]),
            _fmt(r["delta_final_loss"], 4),
            _fmt(r["delta_frobenius_nuclear"], 3),
        ]

    rows = [[r["optimizer"], _fmt(r["spectral_reg"], 3), *cells(r)] for r in reg["by_optimizer"]]
    if reg["overall"]:
        rows.append(["all", "-", *cells(reg["overall"])])
    caption = (
        f"Paired differences, on minus off; {reg['n_pairs']} pairs of {reg['n_regularised_runs']} regularised runs, "
        f"paired on {', '.join(reg['pairing_columns'])}"
    )
    return _table(
        [
            "optimizer",
            "weight",
            "pairs",
            "delta mean aligned",
            "95% CI (pairs)",
            "delta misaligned",
            "delta final loss",
            "delta Frobenius/nuclear",
        ],
        rows,
        caption,
    )


# --------------------------------------------------------------------------------------- page


VERDICT_STYLE = {
    claims.REPRODUCED: "ok",
    claims.NOT_REPRODUCED: "no",
    claims.CONTRADICTED: "no",
    claims.UNDERPOWERED: "maybe",
    claims.INCONCLUSIVE: "maybe",
    claims.FRAGILE: "maybe",
    claims.NOT_ESTIMABLE: "maybe",
}


def _stability_text(row: dict) -> str:
    """Leave-one-seed-out verdicts that differ, and the seed resamples' agreement."""
    st = row.get("stability")
    if not st:
        return "not checked"
    base = row.get("verdict_unperturbed", row["verdict"])
    moved = {s: v for s, v in st["leave_one_seed_out"].items() if v != base}
    loo = "same without any one seed" if not moved else "; ".join(f"without seed {s}: {v}" for s, v in moved.items())
    agree = st.get("resample_agreement")
    return f"{loo}; {agree:.0%} of {st['n_resamples']} seed resamples agree" if agree is not None else loo


def _claims_section(analysis: dict) -> str:
    """The study's claims, this sweep's figure with its interval and the verdict of the rule in
    evilspectra.claims; a plain sentence for every claim this world contradicts."""
    rows = analysis.get("claims") or []
    if not rows:
        return ""
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(c))}</td>"
            for c in (
                r["claim"],
                r["paper"],
                _fmt(r["estimate"], 3),
                _ci_num(r["ci"], 3),
                r.get("quantity", r.get("measured_as", "")),
                f"{_fmt(r.get('p_holm'), 3)} / {_fmt(r.get('power'), 2)}",
            )
        )
        + f'<td class="{VERDICT_STYLE.get(r["verdict"], "maybe")}">{html.escape(r["verdict"])} '
        f"({html.escape(r['reason'])})</td><td>{html.escape(_stability_text(r))}</td></tr>"
        for r in rows
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("claim", "paper", "this sweep", "95% CI", "quantity", "Holm p / power", "verdict", "stability")
    )
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICT_STYLE}
    counts = {v: n for v, n in counts.items() if n}
    disagree = [r["claim"] for r in rows if r["verdict"] in (claims.NOT_REPRODUCED, claims.CONTRADICTED)]
    note = (
        "<p>Where this world disagrees with the paper: " + "; ".join(html.escape(d) for d in disagree) + ".</p>"
        if disagree
        else ""
    )
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    return (
        f'<section><h2>The study\'s claims, checked</h2><p class="judge">{html.escape(judge_note(analysis))}</p>'
        f'<p class="how">{summary}. A verdict is computed from the '
        "interval and its Holm-adjusted p (Holm over the confirmatory rows) by the rules in evilspectra.claims: "
        "reproduced (the paper's direction, and a size compatible with its band), not reproduced (the direction, not "
        "the size), contradicted (the interval excludes the paper's band and direction), underpowered (the interval "
        "is wider than the question), inconclusive, not estimable; a verdict that changes when one seed is left out, "
        "or in more than half of 200 seed resamples, is fragile. Power: at the paper's effect, this sweep's SD and "
        "n.</p>"
        f'{note}<div class="scroll"><table class="claims"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div></section>"
    )


def _config_section(sweep_dir: Path, analysis: dict) -> str:
    try:
        spec = json.loads(SweepDir(sweep_dir).spec.read_text())
    except (OSError, json.JSONDecodeError):
        spec = {}
    rows = [
        [key, json.dumps(spec[key], sort_keys=True)]
        for key in ("name", "base", "grid", "optimizers", "variants", "eval")
        if key in spec
    ]
    rows.append(["runs by status", ", ".join(f"{k}: {v}" for k, v in analysis["runs"].items())])
    return _section("Sweep", "", "", _table(["setting", "value"], rows, cls="kv"))


def _section(title: str, figure: str, how_to_read: str, tables: str, judge: str = "") -> str:
    read = f'<p class="how">How to read this: {html.escape(how_to_read)}</p>' if how_to_read else ""
    who = f'<p class="judge">{html.escape(judge)}</p>' if judge else ""
    return f"<section><h2>{html.escape(title)}</h2>{who}{figure}{read}{tables}</section>"


def judge_name(analysis: dict) -> str:
    """The judge of an analysis as its evaluation summaries record it ("?" for an analysis written
    before analyses named their judge)."""
    return (analysis.get("judge") or {}).get("name") or "?"


def judge_note(analysis: dict) -> str:
    """One line naming the judge whose scores a figure or table shows."""
    label = (analysis.get("judge") or {}).get("label")
    which = f"re-judgement {label}" if label else "the first judgement"
    return f"Judge: {judge_name(analysis)} ({which})."


# ----------------------------------------------------------------------------- judges compared


def _judges_section(sweep_dir: Path, first: dict, rejudged: dict[str, dict], runs: dict | None) -> str:
    """Each claim under every judge, then per re-judgement its agreement with the first judge on
    the same answers (empty when the sweep was judged once)."""
    if not rejudged:
        return ""
    parts = [_claims_by_judge(first, rejudged)]
    for label, other in rejudged.items():
        parts.append(_agreement_part(sweep_dir, label, runs, judge_name(first), judge_name(other)))
    return _section(
        "Judges compared",
        "",
        "The same sampled answers scored by each judge (evilspectra rejudge), each judge's scores analysed "
        "alone. A claim whose verdict changes with the judge rests on the judge as much as on the sweep. "
        "Scatter: one point per answer, the first judge on x; on the dashed line the judges agree. Kappa and "
        "raw agreement are over the classes misaligned / aligned / incoherent / CODE / REFUSAL.",
        "".join(parts),
    )


def _claims_by_judge(first: dict, rejudged: dict[str, dict]) -> str:
    """One row per claim: this sweep's estimate with its interval and the verdict, under each judge."""
    analyses = [first, *rejudged.values()]
    header = ["claim", "paper"]
    for a in analyses:
        header += [f"{judge_name(a)}: this sweep (95% CI)", f"{judge_name(a)}: verdict"]
    by_id = [{c["id"]: c for c in a.get("claims") or []} for a in analyses]
    rows = []
    for c in first.get("claims") or []:
        row, verdicts = [c["claim"], c["paper"]], set()
        for claims_of in by_id:
            other = claims_of.get(c["id"])
            verdicts.add(other["verdict"] if other else None)
            row += (
                [f"{_fmt(other['estimate'], 3)} ({_ci_num(other['ci'], 3)})", other["verdict"]] if other else ["-"] * 2
            )
        rows.append([*row, "yes" if len(verdicts) == 1 else "no"])
    return _table([*header, "same verdict"], rows, "The study's claims under each judge", cls="claims")


def _agreement_part(sweep_dir: Path, label: str, runs: dict | None, name_a: str, name_b: str) -> str:
    """Score against score and the agreement statistics of the first judge (A) and re-judgement
    `label` (B), pooled over every evaluation of the results table that was re-judged."""
    pairs = paired_evals(sweep_dir, label, runs)
    definition = pairs[0][1].read_summary().definition  # re-judgements keep the first's thresholds
    result, paired = agreement.compare(
        agreement.read_answers([(unit, a) for unit, a, _ in pairs]),
        agreement.read_answers([(unit, b) for unit, _, b in pairs]),
        definition.aligned_threshold,
        definition.coherent_threshold,
    )
    m, ci = result["misalignment"], result["misalignment"]["ci95"]
    rows = [
        ["answers (evaluations)", f"{result['n_answers']} ({len(pairs)})"],
        ["aligned: Pearson / Spearman (n)", _corr(result["aligned"])],
        ["coherent: Pearson / Spearman (n)", _corr(result["coherent"])],
        ["Cohen's kappa (classes)", _fmt(result["kappa"], 3)],
        ["raw agreement", _pct(result["raw_agreement"])],
        [f"misaligned: {name_a} / {name_b}", f"{_pct(m['rate_a'])} / {_pct(m['rate_b'])}"],
        ["B - A (95% paired CI)", f"{_points(m['difference'])} ({_points(ci[0])} to {_points(ci[1])})"],
    ]
    title = f"{name_a} (A) vs {name_b} (B), re-judgement {label}"
    return (
        f"<h3>{html.escape(title)}</h3>"
        + _figure(agreement.figure(paired, (name_a, name_b)))
        + _table(["statistic", "value"], rows, f"Answer by answer; B - A: {m['method']}", cls="kv")
    )


def _points(x: float | None) -> str:
    """A difference of two rates in percentage points, signed."""
    return "-" if x is None else f"{100 * x:+.1f} pp"


def _corr(c: dict) -> str:
    return f"{_fmt(c['pearson'], 3)} / {_fmt(c['spearman'], 3)} ({c['n']})"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.how { color: #555; font-size: 0.92em; max-width: 60em; }
.empty { color: #a33; font-style: italic; }
.judge { font-size: 0.92em; font-weight: 600; margin: 0.3em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.8em; }
caption { text-align: left; color: #555; padding-bottom: 0.3em; caption-side: top; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.kv td { text-align: left; white-space: normal; max-width: 60em; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
table.claims td { white-space: normal; text-align: left; max-width: 30em; }
td.ok { background: #e3f4e1; } td.no { background: #f9e0e0; } td.maybe { background: #f6f0d8; }
"""

# Records how many images decoded, for headless checks: <body data-images-ok="N/M">.
IMAGE_CHECK = """window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesOk = ok + '/' + imgs.length;
});"""


def _page(analysis: dict, sections: list[str]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>evilspectra report</title>
<style>{CSS}</style><script>{IMAGE_CHECK}</script></head>
<body><h1>Emergent misalignment by optimiser</h1>
<p class="how">Sweep {html.escape(analysis["sweep_dir"])}, report written {when} by evilspectra.
{html.escape(definition_text(analysis.get("definitions") or []))} Rates are of the coherent answers, and the
denominators are shown beside every rate.</p>
{"".join(sections)}
</body></html>
"""


def _fmt(x: float | None, digits: int, none: str = "-") -> str:
    return none if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci_num(ci: list[float] | None, digits: int) -> str:
    return "-" if not ci or ci[0] is None or ci[1] is None else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def _ci(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"{100 * lo:.1f}-{100 * hi:.1f}%"
