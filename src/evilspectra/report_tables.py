"""The report's tables: HTML tables of an analysis (rates, fits, windows, matched loss, correlations,
regulariser pairs) and the number formats they use."""

from __future__ import annotations

import html
from typing import Any

from evilspectra.artefacts.analysis_record import Analysis, PooledRate


def table(header: list[str], rows: list[list[Any]], caption: str = "", cls: str = "") -> str:
    """An HTML table, every cell escaped, in a box that scrolls sideways on a narrow screen."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<div class="scroll"><table class="{cls}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


RATE_HEADER = [
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


def denominator_table(analysis: Analysis) -> str:
    """Every pooled rate with the counts behind it, then each base model's (from its summary)."""
    rows = [_rate_cells(r) for r in analysis.per_optimizer + analysis.per_optimizer_regularised]
    rows += [_base_cells(b) for b in analysis.base_model]
    return table(
        RATE_HEADER,
        rows,
        "Answers pooled over final checkpoints; denom. = coherent scored answers (the rate's "
        "denominator); scored = answers the judge rated; errors = judge failures. CIs: " + analysis.ci_method,
    )


def _rate_cells(r: PooledRate) -> list[Any]:
    return [
        r.optimizer,
        num(r.spectral_reg, 3, "off"),
        r.n_runs,
        r.n_answers,
        r.n_denominator,
        r.n_misaligned,
        pct(r.rate),
        ci_pct(r.ci_low, r.ci_high),
        ci_pct(r.ci_runs_low, r.ci_runs_high),
        r.n_coherent + r.n_incoherent,
        r.n_CODE,
        r.n_REFUSAL,
        r.n_incoherent,
        r.n_error,
        num(r.mean_aligned, 1),
        num(r.mean_final_loss, 4),
    ]


def _base_cells(b: dict[str, Any]) -> list[Any]:
    """A base model's row: its summary's headline (records.HEADLINE), counts from its shares."""
    n = b.get("n_total") or 0
    count = lambda s: round((b.get(f"share_{s}") or 0) * n)  # noqa: E731 - counts behind the summary's shares
    return [
        f"base model: {b['model']}",
        "-",
        "-",
        n,
        b.get("n_denominator"),
        b.get("n_misaligned"),
        pct(b.get("misalignment_rate")),
        ci_pct(*(b.get("rate_ci95") or [None, None])),
        "-",
        count("coherent") + count("incoherent"),
        count("CODE"),
        count("REFUSAL"),
        count("incoherent"),
        count("error"),
        num(b.get("mean_aligned"), 1),
        "-",
    ]


def regression_table(analysis: Analysis) -> str:
    """Both OLS fits, the stratified model's per-optimiser lines, and the run-clustered loss slopes."""
    reg = analysis.regression
    rows = [
        [f["formula"], f["n"], f["n_params"] or "-", num(f["r2"], 3), num(f["adj_r2"], 3), f.get("reason", "")]
        for f in (reg["loss_only"], reg["stratified"])
    ]
    out = table(
        ["model (OLS)", "n runs", "parameters", "R^2", "adjusted R^2", "note"],
        rows,
        f"Adjusted R^2 gain from stratifying by optimiser: {num(reg['adj_r2_gain'], 3)}",
    )
    lines = reg["stratified"].get("lines") or {}
    if lines:
        out += table(
            ["optimizer", "intercept", "slope per unit ln(loss)", "ln-loss range", "drawn"],
            [
                [
                    k,
                    num(v["intercept"], 2),
                    num(v["slope"], 2),
                    num(v.get("log_loss_range"), 3),
                    "yes" if v.get("drawable") else v.get("line_note") or "no",
                ]
                for k, v in lines.items()
            ],
            "Per-optimiser lines of the stratified model",
        )
    fits = analysis.fits
    rows = [
        [
            key.replace("_", " "),
            f["formula"],
            f["n"],
            f["n_runs"],
            num(f["coef"], 2),
            ci_num(f["ci"], 2),
            num(f.get("p"), 3),
            f.get("reason", ""),
        ]
        for key, f in fits.items()
        if isinstance(f, dict) and "term" in f
    ]
    if rows:
        out += table(
            ["points", "model", "n", "runs", "slope on ln(loss)", "95% CI (run-clustered)", "p", "note"],
            rows,
            "The loss slope with standard errors clustered by run: final checkpoints, and every evaluated checkpoint",
        )
    return out


def matched_table(analysis: Analysis) -> str:
    """Each optimiser at the matched training loss, with bootstrap intervals over runs."""
    m = analysis.matched_loss
    if not m.get("per_optimizer"):
        return (
            f'<p class="empty">No alignment at a matched loss: {html.escape(m.get("reason", "no runs reach it"))}</p>'
        )
    rows = [
        [
            r["optimizer"],
            f"{r['n_runs']}/{r['n_runs_total']}",
            num(r["mean_aligned"], 1),
            ci_num(r["mean_aligned_ci"], 1),
            pct(r["misalignment_rate"]),
            ci_pct(*(r["misalignment_rate_ci"] or [None, None])),
        ]
        for r in m["per_optimizer"]
    ]
    return table(
        ["optimizer", "runs reaching it", "mean aligned", "95% CI", "misaligned", "95% CI"],
        rows,
        f"At matched training loss {m['level_loss']:.3f} (interpolated along each run's trajectory; "
        "bootstrap over runs)",
    )


def windows_table(analysis: Analysis) -> str:
    """Both fits' adjusted R^2 in each window of training progress, and where the optimiser overtakes."""
    overtake = analysis.overtake
    rows = [
        [
            f"{w['progress_low']:.2f}-{w['progress_high']:.2f}",
            ", ".join(map(str, w["steps"])),
            w["n"],
            num(w["adj_r2_loss"], 3),
            num(w["adj_r2_stratified"], 3),
            num(w["gain"], 3),
            w.get("reason") or "",
        ]
        for w in overtake["windows"]
    ]
    first = overtake["first_window"]
    caption = (
        f"The optimiser overtakes loss in window {first + 1} (gain > {overtake['margin']})"
        if first is not None
        else "The optimiser does not overtake loss in any window"
    )
    return table(
        ["progress", "steps", "checkpoints", "adj R^2 loss only", "adj R^2 by optimiser", "gain", "note"], rows, caption
    )


def correlation_table(analysis: Analysis) -> str:
    """Spectral metrics against the outcomes (Pearson, Spearman), then alignment fitted on F/N."""
    rows = [
        [
            c["metric"],
            c["outcome"],
            c["n"],
            num(c["pearson_r"], 2),
            num(c["pearson_p"], 3),
            num(c["spearman_rho"], 2),
            num(c["spearman_p"], 3),
            c.get("reason", ""),
        ]
        for c in analysis.spectral_correlations
    ]
    out = table(
        ["spectral metric", "outcome", "n runs", "Pearson r", "p", "Spearman rho", "p", "note"],
        rows,
        "Correlations over all final checkpoints (regularised runs included)",
    )
    fits = analysis.spectral_fits
    rows = [
        [k.replace("_", " "), f["formula"], f["n"], num(f["coef"], 1), ci_num(f["ci"], 1), f.get("reason", "")]
        for k, f in fits.items()
    ]
    if rows:
        out += table(
            ["", "model", "runs", "slope on F/N", "95% CI (run-clustered)", "note"],
            rows,
            "Mean alignment on Frobenius/nuclear, pooled and within optimiser (optimiser intercepts)",
        )
    return out


def regulariser_table(analysis: Analysis) -> str:
    """Paired differences (on minus off) per optimiser and weight, and over every pair."""
    reg = analysis.regulariser

    def cells(r: dict) -> list:
        return [
            r["n"],
            num(r["delta_mean_aligned"], 2),
            ci_num(r.get("delta_mean_aligned_ci"), 2),
            pct(r["delta_misalignment_rate"]),
            num(r["delta_final_loss"], 4),
            num(r["delta_frobenius_nuclear"], 3),
        ]

    rows = [[r["optimizer"], num(r["spectral_reg"], 3), *cells(r)] for r in reg["by_optimizer"]]
    if reg["overall"]:
        rows.append(["all", "-", *cells(reg["overall"])])
    caption = (
        f"Paired differences, on minus off; {reg['n_pairs']} pairs of {reg['n_regularised_runs']} regularised runs, "
        f"paired on {', '.join(reg['pairing_columns'])}"
    )
    return table(
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


# ------------------------------------------------------------------------------------------ formats


def num(x: float | None, digits: int, none: str = "-") -> str:
    """A number to `digits` decimals; `none` for None."""
    return none if x is None else f"{x:.{digits}f}"


def pct(x: float | None) -> str:
    """A share as a percentage to one decimal (0.0531 -> '5.3%')."""
    return "-" if x is None else f"{100 * x:.1f}%"


def ci_num(ci: list[float | None] | None, digits: int) -> str:
    """An interval of numbers, 'a to b'; '-' when a side is missing."""
    return "-" if not ci or ci[0] is None or ci[1] is None else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def ci_pct(lo: float | None, hi: float | None) -> str:
    """An interval of shares as percentages, '4.1-6.8%'."""
    return "-" if lo is None or hi is None else f"{100 * lo:.1f}-{100 * hi:.1f}%"


def signed_pp(x: float | None) -> str:
    """A difference of two rates in percentage points, signed."""
    return "-" if x is None else f"{100 * x:+.1f} pp"


def corr_text(c: dict) -> str:
    """Pearson / Spearman (n) of one agreement correlation."""
    return f"{num(c['pearson'], 3)} / {num(c['spearman'], 3)} ({c['n']})"
