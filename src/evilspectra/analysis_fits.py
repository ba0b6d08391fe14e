"""Fits of mean alignment on the training loss and on the spectra: OLS with R^2 (`fit_ols`,
`regressions`), run-clustered standard errors (`clustered_fit`), a bootstrap over runs of R^2 and its
gain (`bootstrap_fits`), and the correlations of each spectral metric with the outcomes.

A fitted line is drawn only where its points span at least MIN_LOG_LOSS_RANGE in ln-loss
(`line_support`); narrower data gives a slope that extrapolates noise. A fit the data cannot support
is None with a `reason`, never an exception.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from patsy import PatsyError, dmatrices
from scipy import stats

from evilspectra.analysis_table import checkpoints
from evilspectra.artefacts.records import SPECTRAL_METRICS

LOSS_FORMULA = "mean_aligned ~ log_loss"
STRATIFIED_FORMULA = "mean_aligned ~ log_loss * C(optimizer)"
MIN_LOG_LOSS_RANGE = 0.3  # ln-loss span a fitted line needs before the report draws it
MIN_LINE_POINTS = 4


# -------------------------------------------------------------------------------------- loss fits


def fit_ols(data: pd.DataFrame, formula: str) -> dict:
    """OLS via statsmodels' formula API; None fields with a `reason` when the data cannot support it.

    Returns formula, n, n_params, r2, adj_r2, params (name -> coefficient), pvalues, and for each
    optimiser in the data (stratified formulas) its own line: intercept and slope in log_loss (read off the predictions
    at log_loss 0 and 1, so they do not depend on how patsy names the interaction terms).
    """
    import statsmodels.formula.api as smf  # here, not at the top: statsmodels takes seconds to import

    data = data.dropna(subset=["mean_aligned", "log_loss"])
    out: dict[str, Any] = {"formula": formula, "n": len(data), "n_params": None, "r2": None, "adj_r2": None}
    if len(data) == 0:
        return out | {"reason": "no final checkpoint with both mean_aligned and log_loss"}
    try:
        model = smf.ols(formula, data=data)
    except PatsyError as exc:
        return out | {"reason": f"cannot build the design: {exc}"}
    k = model.exog.shape[1]
    out["n_params"] = k
    if len(data) <= k:
        return out | {"reason": f"{len(data)} points for {k} parameters: need more points than parameters"}
    if np.linalg.matrix_rank(model.exog) < k:
        return out | {"reason": "the design is rank-deficient (e.g. one loss value within an optimiser)"}
    fit = model.fit()
    if not np.isfinite(fit.rsquared):
        return out | {"reason": "alignment has no variance: R^2 undefined"}
    lines = {}
    for name in sorted(data["optimizer"].unique()) if "optimizer" in formula else []:
        at = fit.predict(pd.DataFrame({"log_loss": [0.0, 1.0], "optimizer": [name, name]}))
        lines[name] = {
            "intercept": float(at.iloc[0]),
            "slope": float(at.iloc[1] - at.iloc[0]),
            "log_loss_min": float(data.loc[data["optimizer"] == name, "log_loss"].min()),
            "log_loss_max": float(data.loc[data["optimizer"] == name, "log_loss"].max()),
            **line_support(data.loc[data["optimizer"] == name, "log_loss"]),
        }
    return out | {
        **line_support(data["log_loss"]),
        "r2": float(fit.rsquared),
        "adj_r2": float(fit.rsquared_adj),
        "params": {k: float(v) for k, v in fit.params.items()},
        "pvalues": {k: float(v) for k, v in fit.pvalues.items()},
        "lines": lines,
    }


def line_support(log_loss: pd.Series) -> dict:
    """May a line fitted over these ln-loss values be drawn? {"drawable", "log_loss_range", "line_note"}.

    The rule: at least MIN_LINE_POINTS points spanning at least MIN_LOG_LOSS_RANGE in ln-loss. Over a
    narrower span the slope is set by noise (0.018 of ln-loss gave slopes of 19,788 points per unit).
    """
    x = log_loss.replace([np.inf, -np.inf], np.nan).dropna()
    span = float(x.max() - x.min()) if len(x) else 0.0
    note = None
    if len(x) < MIN_LINE_POINTS:
        note = f"{len(x)} points: a line needs at least {MIN_LINE_POINTS}"
    elif span < MIN_LOG_LOSS_RANGE:
        note = f"ln-loss spans {span:.3f} < {MIN_LOG_LOSS_RANGE}: too narrow for a slope"
    return {"drawable": note is None, "log_loss_range": span, "line_note": note}


def regressions(final: pd.DataFrame) -> dict:
    """Loss-only and optimiser-stratified fits of mean alignment on log final training loss."""
    loss = fit_ols(final, LOSS_FORMULA)
    strat = (
        fit_ols(final, STRATIFIED_FORMULA)
        if final["optimizer"].nunique() > 1
        else {
            "formula": STRATIFIED_FORMULA,
            "n": len(final),
            "n_params": None,
            "r2": None,
            "adj_r2": None,
            "reason": "one optimiser only: nothing to stratify by",
        }
    )
    gain = strat["adj_r2"] - loss["adj_r2"] if strat["adj_r2"] is not None and loss["adj_r2"] is not None else None
    return {"loss_only": loss, "stratified": strat, "adj_r2_gain": gain}


# ---------------------------------------------------------------- fits with run-level uncertainty


def clustered_fit(data: pd.DataFrame, formula: str, term: str) -> dict:
    """OLS of `formula` with standard errors clustered by run_id (CR1, statsmodels): `term`'s
    coefficient, SE, 95% CI and p, with n points and n runs; None fields with a `reason`."""
    import statsmodels.formula.api as smf  # here, not at the top: statsmodels takes seconds to import

    outcome, *_ = formula.split("~")
    cols = [outcome.strip(), term, "run_id"] + [c for c in ("optimizer", "log_loss") if c in formula and c != term]
    data = data[cols].replace([np.inf, -np.inf], np.nan).dropna()
    out: dict[str, Any] = {"formula": formula, "term": term, "n": len(data), "n_runs": int(data["run_id"].nunique())}
    out |= {"coef": None, "se": None, "ci": None, "p": None}
    model = smf.ols(formula, data=data) if len(data) else None
    if model is None or len(data) <= model.exog.shape[1] or out["n_runs"] < 3:
        return out | {"reason": f"{len(data)} points from {out['n_runs']} runs: too few for a clustered fit"}
    if np.linalg.matrix_rank(model.exog) < model.exog.shape[1] or data[term].nunique() < 2:
        return out | {"reason": f"the design is rank-deficient ({term} does not vary enough)"}
    groups = pd.factorize(data["run_id"])[0]
    fit = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
    lo, hi = fit.conf_int().loc[term]
    return out | {
        "coef": float(fit.params[term]),
        "se": float(fit.bse[term]),
        "ci": [float(lo), float(hi)],
        "p": float(fit.pvalues[term]),
        "r2": float(fit.rsquared),
    }


def bootstrap_fits(rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """95% percentile intervals, resampling runs, of the loss-only R^2, the stratified adjusted R^2 and
    their gain (`rows`: checkpoints with log_loss, mean_aligned, optimizer, run_id). Resamples whose
    design is rank-deficient are skipped and counted."""
    rows = rows.dropna(subset=["mean_aligned", "log_loss"])
    out: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "r2_loss": None, "adj_r2_stratified": None, "gain": None}
    if rows["run_id"].nunique() < 4 or rows["optimizer"].nunique() < 2:
        return out | {"reason": "fewer than 4 runs or one optimiser: nothing to bootstrap"}
    y, X_loss = dmatrices(LOSS_FORMULA, rows, return_type="dataframe")
    _, X_strat = dmatrices(STRATIFIED_FORMULA, rows, return_type="dataframe")
    y, X_loss, X_strat = y.to_numpy()[:, 0], X_loss.to_numpy(), X_strat.to_numpy()
    runs = pd.factorize(rows["run_id"])[0]
    members = [np.flatnonzero(runs == k) for k in range(runs.max() + 1)]
    rng = np.random.default_rng(seed)
    stats_ = []
    for _ in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        fit_l, fit_s = _r2(X_loss[idx], y[idx]), _r2(X_strat[idx], y[idx])
        if fit_l is not None and fit_s is not None:
            stats_.append((fit_l[0], fit_s[1], fit_s[1] - fit_l[1]))
    out["n_skipped"] = n_boot - len(stats_)
    if len(stats_) < n_boot / 2:
        return out | {"reason": f"{out['n_skipped']} of {n_boot} resamples were rank-deficient"}
    lo, hi = np.percentile(np.array(stats_), [2.5, 97.5], axis=0)
    return out | {"r2_loss": [lo[0], hi[0]], "adj_r2_stratified": [lo[1], hi[1]], "gain": [lo[2], hi[2]]}


def _r2(X: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(R^2, adjusted R^2) of least squares, None when the design is rank-deficient or y constant."""
    n, k = X.shape
    if n <= k or np.linalg.matrix_rank(X) < k:
        return None
    resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    sst = ((y - y.mean()) ** 2).sum()
    if sst <= 0:
        return None
    r2 = 1 - (resid**2).sum() / sst
    return r2, 1 - (1 - r2) * (n - 1) / (n - k)


def loss_fits(df: pd.DataFrame, plain_final: pd.DataFrame, windows: int = 2, n_boot: int = 2000, seed: int = 0) -> dict:
    """Alignment on ln(loss) with run-level uncertainty, final checkpoints and trajectory points."""
    points = checkpoints(df)
    late = points[points["progress"] > 1 - 1 / windows]
    return {
        "final": clustered_fit(plain_final, LOSS_FORMULA, "log_loss"),
        "final_stratified": clustered_fit(plain_final, "mean_aligned ~ log_loss + C(optimizer)", "log_loss"),
        "trajectory": clustered_fit(points, LOSS_FORMULA, "log_loss"),
        "trajectory_stratified": clustered_fit(points, "mean_aligned ~ log_loss + C(optimizer)", "log_loss"),
        "final_log_loss_range": line_support(plain_final["log_loss"])["log_loss_range"],
        "bootstrap_final": bootstrap_fits(plain_final, n_boot, seed),
        "bootstrap_late_window": bootstrap_fits(late, n_boot, seed) | {"progress_above": 1 - 1 / windows},
    }


# --------------------------------------------------------------------------- spectra vs alignment


def spectral_fits(final: pd.DataFrame) -> dict:
    """Mean alignment on Frobenius/nuclear over all final checkpoints: pooled, and within optimiser
    at equal loss (optimiser intercepts and a ln-loss term: the slope compares runs of the same
    optimiser that reached the same loss), run-clustered CIs."""
    return {
        "pooled": clustered_fit(final, "mean_aligned ~ frobenius_nuclear", "frobenius_nuclear"),
        "within_optimizer": clustered_fit(
            final, "mean_aligned ~ frobenius_nuclear + log_loss + C(optimizer)", "frobenius_nuclear"
        ),
    }


def spectral_correlations(final: pd.DataFrame) -> list[dict]:
    """Pearson and Spearman (with p-values and n) of each spectral metric with each outcome."""
    out = []
    for metric in SPECTRAL_METRICS:
        for outcome in ("mean_aligned", "misalignment_rate"):
            pair = final[[metric, outcome]].replace([np.inf, -np.inf], np.nan).dropna()
            row: dict[str, Any] = {
                "metric": metric,
                "outcome": outcome,
                "n": len(pair),
                "pearson_r": None,
                "pearson_p": None,
                "spearman_rho": None,
                "spearman_p": None,
            }
            if len(pair) < 3:
                row["reason"] = f"{len(pair)} runs with both values: need at least 3"
            elif pair[metric].nunique() < 2 or pair[outcome].nunique() < 2:
                row["reason"] = "a constant variable: correlation undefined"
            else:
                pr, sr = stats.pearsonr(pair[metric], pair[outcome]), stats.spearmanr(pair[metric], pair[outcome])
                row |= {
                    "pearson_r": float(pr.statistic),
                    "pearson_p": float(pr.pvalue),
                    "spearman_rho": float(sr.statistic),
                    "spearman_p": float(sr.pvalue),
                }
            out.append(row)
    return out
