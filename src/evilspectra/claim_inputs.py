"""The data behind the claims table, per seed, and the estimators that turn it into tests.

`ClaimInputs.build(df, base, level)` gathers from a sweep's results table what every claim reads:

- matched: one row per (optimiser, seed), the misalignment rate at the matched training loss
  (mean over the seed's unregularised runs whose trajectory reaches the level);
- final: unregularised final checkpoints (R^2 fits), points: their evaluated checkpoints by
  progress (the early/late windows), spectral: every estimable final checkpoint (spectral fits);
- fn: one row per (optimiser, seed), the mean Frobenius/nuclear ratio of its unregularised final
  adapters;
- pairs: regulariser pairs (regularised run minus its twin with weight 0, same config otherwise).

Every table carries `seed`, so `resample(seeds)` rebuilds the inputs from any multiset of seeds
(leave-one-seed-out, resampling): a seed drawn twice contributes its rows twice, as distinct runs.
The estimators (module-level functions taking ClaimInputs) return a stats.Test each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

from evilspectra import stats

LOSS_FORMULA = "mean_aligned ~ log_loss"
STRATIFIED_FORMULA = "mean_aligned ~ log_loss * C(optimizer)"
LATE_PROGRESS = 0.5  # checkpoints past half of training are "late", the others "early"


@dataclass
class Design:
    """Rows of a regression with what a resample of seeds needs: outcome, design matrices, each
    row's run (an integer code) and its seed (an index into ClaimInputs.seeds)."""

    y: np.ndarray
    X: dict[str, np.ndarray]
    run: np.ndarray
    seed: np.ndarray
    answers: np.ndarray  # scorable answers (n_denominator) behind each row's outcome

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class ClaimInputs:
    """Per-seed arrays (aligned with `seeds`) and regression designs; `counts` is each seed's
    multiplicity (all 1 for the sweep itself; 0 for a left-out seed; resample counts otherwise)."""

    seeds: np.ndarray
    matched: dict[str, np.ndarray]  # optimiser -> per-seed matched-loss misalignment rate (NaN: none)
    matched_runs: dict[str, np.ndarray]  # optimiser -> per-seed number of runs behind `matched`
    matched_answers: dict[str, np.ndarray]  # optimiser -> per-seed scorable answers behind `matched`
    fn: dict[str, np.ndarray]  # optimiser -> per-seed mean Frobenius/nuclear of unregularised finals
    fn_runs: dict[str, np.ndarray]  # optimiser -> per-seed number of runs behind `fn`
    pairs: pd.DataFrame  # optimizer, spectral_reg, seed_index, delta_mean_aligned, delta_final_loss, answers
    final: Design | None  # unregularised final checkpoints: X "loss", "strat"
    late: Design | None  # checkpoints past LATE_PROGRESS (run codes shared with `early`)
    early: Design | None
    spectral: Design | None  # estimable final checkpoints, all weights: X "pooled", "within"
    level: float | None = None
    n_boot: int = 2000
    seed: int = 0
    counts: np.ndarray | None = None

    def with_counts(self, counts: np.ndarray, n_boot: int | None = None) -> ClaimInputs:
        """The inputs of a sweep made of these seeds, each `counts[i]` times (copies are new units)."""
        return replace(self, counts=np.asarray(counts, int), n_boot=self.n_boot if n_boot is None else n_boot)

    def multiplicity(self) -> np.ndarray:
        return np.ones(len(self.seeds), int) if self.counts is None else self.counts

    def per_seed(self, values: np.ndarray) -> np.ndarray:
        """Per-seed values repeated by the seeds' multiplicity."""
        return np.repeat(values, self.multiplicity())

    def rows(self, seed_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row indices repeated by their seed's multiplicity, the copy number of each)."""
        m = self.multiplicity()[seed_index]
        idx = np.repeat(np.arange(len(seed_index)), m)
        copy = np.arange(len(idx)) - np.repeat(np.cumsum(m) - m, m)
        return idx, copy


# ---------------------------------------------------------------------------------- estimators


def _pair(inputs: ClaimInputs, table: dict[str, np.ndarray], a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed values of a and b (repeated by multiplicity) over the seeds where both have one."""
    if a not in table or b not in table:
        return np.array([]), np.array([])
    x, y = inputs.per_seed(table[a]), inputs.per_seed(table[b])
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _support(
    inputs: ClaimInputs, names: list[str], values: dict, runs: dict, answers: dict | None = None
) -> dict[str, int | None]:
    """Runs and scorable answers (None: the values read no answers) behind the per-seed `values` of
    `names`, over the seeds where all have one, each seed counted by its multiplicity."""
    if any(n not in values for n in names):
        return {"runs": 0, "answers": None if answers is None else 0}
    keep = np.logical_and.reduce([np.isfinite(values[n]) for n in names]) * inputs.multiplicity()

    def total(per_seed: dict) -> int:
        return int(sum(per_seed.get(n, np.zeros(len(keep))) @ keep for n in names))

    return {"runs": total(runs), "answers": None if answers is None else total(answers)}


def ratio(inputs: ClaimInputs, num: str, den: str) -> stats.Test:
    """mean rate(num) / mean rate(den) at the matched loss, paired by seed (Fieller)."""
    test = stats.fieller_ratio(*_pair(inputs, inputs.matched, num, den), nonnegative=True)  # rates
    test.extra |= _support(inputs, [num, den], inputs.matched, inputs.matched_runs, inputs.matched_answers)
    return test


def equivalence(inputs: ClaimInputs, a: str, b: str, margin: float) -> stats.Test:
    """TOST of rate(b) - rate(a) at the matched loss, paired by seed."""
    x, y = _pair(inputs, inputs.matched, a, b)
    test = stats.tost(y - x, margin)
    test.extra |= _support(inputs, [a, b], inputs.matched, inputs.matched_runs, inputs.matched_answers)
    return test


def flattest(inputs: ClaimInputs, name: str = "muon") -> stats.Test:
    """F/N(other) - F/N(name) per seed for every other optimiser: intersection-union of paired t tests;
    the reported test is the closest competitor's (largest p), so the claim holds only if all do."""
    tests = {}
    for other in sorted(set(inputs.fn) - {name}):
        x, y = _pair(inputs, inputs.fn, name, other)
        tests[other] = stats.paired_t(y - x)
    tests = {k: t for k, t in tests.items() if t.p is not None}
    if name not in inputs.fn or not tests:
        return stats.Test(None, None, None, 0, method=f"fewer than 2 seeds pairing {name} with another optimiser")
    closest = max(tests, key=lambda k: (tests[k].p, -(tests[k].estimate or 0)))
    out = tests[closest]
    out.method = f"intersection-union of paired t tests (closest: {closest}), {out.method}"
    out.extra["per_optimizer"] = {k: {"estimate": t.estimate, "ci": t.ci, "p": t.p} for k, t in tests.items()}
    out.extra |= _support(inputs, [name, *tests], inputs.fn, inputs.fn_runs)  # spectra: no answers
    return out


def _pair_values(inputs: ClaimInputs, mask: pd.Series, column: str) -> np.ndarray:
    rows = inputs.pairs[mask]
    idx, _ = inputs.rows(rows["seed_index"].to_numpy(int))
    return rows[column].to_numpy(float)[idx]


def regulariser(inputs: ClaimInputs, name: str, weight: float, margin: float | None = None) -> stats.Test:
    """Paired mean alignment, regularised minus unregularised twin, over the optimiser's pairs
    (t interval; TOST when `margin` is given). Pairs with a not-estimable run are NaN and left out."""
    pairs = inputs.pairs
    d = _pair_values(inputs, (pairs["optimizer"] == name) & (pairs["spectral_reg"] == weight), "delta_mean_aligned")
    test = stats.tost(d, margin) if margin is not None else stats.paired_t(d)
    thin = int(np.isnan(d).sum())
    test.extra["pairs_not_estimable"] = thin
    answers = _pair_values(inputs, (pairs["optimizer"] == name) & (pairs["spectral_reg"] == weight), "answers")
    test.extra |= {"runs": 2 * int(np.isfinite(d).sum()), "answers": int(answers[np.isfinite(d)].sum())}
    if thin:
        test.method += f"; {thin} of {len(d)} pairs left out: a run with too few scorable answers"
    if test.ci is None:
        test.extra["reason"] = (
            f"{len(d) - thin} pair(s) with scorable answers in both runs ({thin} of {len(d)} left out)"
        )
    return test


def loss_cost(inputs: ClaimInputs, weight: float, margin: float) -> stats.Test:
    """Final-loss cost of the regulariser per optimiser (TOST +/-margin on paired differences);
    intersection-union over optimisers: the reported test is the one least within the margin."""
    pairs = inputs.pairs
    tests = {}
    for name in sorted(pairs["optimizer"].unique()) if len(pairs) else []:
        d = _pair_values(inputs, (pairs["optimizer"] == name) & (pairs["spectral_reg"] == weight), "delta_final_loss")
        tests[name] = stats.tost(d, margin)
    tests = {k: t for k, t in tests.items() if t.p is not None}
    if not tests:
        return stats.Test(None, None, None, 0, method="no optimiser with 2 pairs")
    worst = max(tests, key=lambda k: (tests[k].p, abs(tests[k].estimate or 0)))
    out = tests[worst]
    out.method = f"intersection-union of TOST per optimiser (least within the margin: {worst}), {out.method}"
    out.extra["per_optimizer"] = {k: {"estimate": t.estimate, "ci": t.ci, "p": t.p} for k, t in tests.items()}
    out.extra |= {"runs": 2 * sum(t.n for t in tests.values()), "answers": None}  # training losses: no answers
    return out


def spectral_slope(inputs: ClaimInputs, within: bool) -> stats.Test:
    """Slope of mean alignment on Frobenius/nuclear over estimable final checkpoints (all weights),
    pooled or with optimiser intercepts and ln-loss; t interval with run-clustered SEs."""
    import statsmodels.api as sm

    d = inputs.spectral
    if d is None:
        return stats.Test(None, None, None, 0, method="no final checkpoint with scorable answers and spectra")
    idx, copy = inputs.rows(d.seed)
    X, y = d.X["within" if within else "pooled"][idx], d.y[idx]
    groups = pd.factorize(d.run[idx] * 1000 + copy)[0]
    n_runs = int(groups.max() + 1) if len(groups) else 0
    method = f"OLS, run-clustered SE, t({max(n_runs - 1, 0)} df) interval, {len(y)} final checkpoints of {n_runs} runs"
    if n_runs < 5 or np.linalg.matrix_rank(X) < X.shape[1]:
        return stats.Test(None, None, None, n_runs, method=method + "; too few runs or rank-deficient")
    fit = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    lo, hi = fit.conf_int()[1]
    test = stats.Test(float(fit.params[1]), [float(lo), float(hi)], float(fit.pvalues[1]), n_runs, method=method)
    test.extra |= _design_support(inputs, [d])
    return test


def _design_support(inputs: ClaimInputs, designs: list[Design]) -> dict:
    """Runs (copies of a resampled seed counted again) and scorable answers behind the designs' rows."""
    runs, answers = set(), 0
    for d in designs:
        idx, copy = inputs.rows(d.seed)
        runs |= set(zip(d.run[idx].tolist(), copy.tolist()))
        answers += int(d.answers[idx].sum())
    return {"runs": len(runs), "answers": answers}


# ------------------------------------------------------------------ R^2 by a vectorised bootstrap


def _weighted_r2(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R^2, adjusted R^2) of least squares with frequency weights, one row of `w` per draw
    (NaN where the weighted design is rank-deficient). Adjusted with n = the weights' sum."""
    XtWX = np.einsum("bn,ni,nj->bij", w, X, X)
    XtWy = np.einsum("bn,ni,n->bi", w, X, y)
    k = X.shape[1]
    ok = np.linalg.matrix_rank(XtWX, hermitian=True) == k
    beta = np.zeros((len(w), k))
    if ok.any():
        beta[ok] = np.linalg.solve(XtWX[ok], XtWy[ok][..., None])[..., 0]
    n = w.sum(axis=1)
    ybar = (w @ y) / n
    sst = (w * (y[None, :] - ybar[:, None]) ** 2).sum(axis=1)
    rss = (w * (y[None, :] - beta @ X.T) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ok & (sst > 0) & (n > k), 1 - rss / sst, np.nan)
        adj = 1 - (1 - r2) * (n - 1) / (n - k)
    return r2, adj


def _run_counts(inputs: ClaimInputs, designs: list[Design]) -> tuple[np.ndarray, np.ndarray]:
    """(per-run multiplicity in this sweep of seeds, n_boot resamples of those runs): row 0 of
    the resamples is the sweep itself. Runs are coded 0..R-1 across `designs`."""
    n_run = 1 + max(int(d.run.max()) for d in designs)
    run_seed = np.zeros(n_run, int)
    for d in designs:
        run_seed[d.run] = d.seed
    m = inputs.multiplicity()[run_seed]
    total = int(m.sum())
    draws = np.random.default_rng(inputs.seed).multinomial(total, m / max(total, 1), size=inputs.n_boot)
    return m, np.vstack([m, draws]).astype(float)


def r2_family(inputs: ClaimInputs) -> dict[str, stats.Test]:
    """R^2 of ln-loss, stratified adjusted R^2 and their gain over unregularised final checkpoints,
    with 95% percentile intervals resampling runs; p from the F tests of the same fits."""
    d = inputs.final
    method = f"OLS; 95% percentile bootstrap over runs ({inputs.n_boot} resamples); p of the F test"
    if d is None or len(d) < 6:
        return {k: stats.Test(None, None, None, 0, method=method) for k in ("r2", "adj_r2", "gain")}
    m, counts = _run_counts(inputs, [d])
    w = counts[:, d.run]
    n_runs = int(m.sum())
    r2_l, adj_l = _weighted_r2(d.X["loss"], d.y, w)
    r2_s, adj_s = _weighted_r2(d.X["strat"], d.y, w)
    p_loss, p_strat, p_gain = _f_tests(d.y, d.X["loss"], d.X["strat"], w[0])
    tests = {
        key: _boot_test(draws, p, n_runs, method)
        for key, draws, p in (("r2", r2_l, p_loss), ("adj_r2", adj_s, p_strat), ("gain", adj_s - adj_l, p_gain))
    }
    for test in tests.values():
        test.extra |= _design_support(inputs, [d])
    return tests


def late_minus_early(inputs: ClaimInputs) -> stats.Test:
    """The optimiser's adjusted-R^2 gain over ln-loss in the late window (progress > LATE_PROGRESS)
    minus that in the early window, the same runs resampled in both; p from the bootstrap."""
    late, early = inputs.late, inputs.early
    method = f"percentile bootstrap over runs ({inputs.n_boot} resamples), both windows resampled together"
    if late is None or early is None or min(len(late), len(early)) < 6:
        return stats.Test(None, None, None, 0, method=method + "; too few checkpoints in a window")
    m, counts = _run_counts(inputs, [late, early])
    gains = []
    for d in (late, early):
        w = counts[:, d.run]
        gains.append(_weighted_r2(d.X["strat"], d.y, w)[1] - _weighted_r2(d.X["loss"], d.y, w)[1])
    draws = gains[0] - gains[1]
    rest = draws[1:][np.isfinite(draws[1:])]
    p = float(min(1.0, 2 * min((rest <= 0).mean(), (rest >= 0).mean()))) if len(rest) else None
    test = _boot_test(draws, p, int(m.sum()), method)
    test.extra |= {"gain_late": _num(gains[0][0]), "gain_early": _num(gains[1][0])}
    test.extra |= _design_support(inputs, [late, early])
    return test


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _boot_test(draws: np.ndarray, p: float | None, n: int, method: str) -> stats.Test:
    """Estimate draws[0] (the data), 95% percentile interval of the other draws, their SD."""
    rest = draws[1:][np.isfinite(draws[1:])]
    if not np.isfinite(draws[0]) or len(rest) < len(draws[1:]) / 2:
        return stats.Test(_num(draws[0]), None, p, n, method=method + "; rank-deficient")
    lo, hi = np.percentile(rest, [2.5, 97.5])
    return stats.Test(float(draws[0]), [float(lo), float(hi)], p, n, float(rest.std(ddof=1)), method)


def _f_tests(y: np.ndarray, X_loss: np.ndarray, X_strat: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """p of the loss-only model's F test, the stratified model's F test, and the nested F test of
    the stratified model's extra terms (statsmodels; rows repeated by their weight)."""
    import statsmodels.api as sm

    idx = np.repeat(np.arange(len(y)), w.astype(int))
    y, X_loss, X_strat = y[idx], X_loss[idx], X_strat[idx]
    if len(y) <= X_strat.shape[1] or np.linalg.matrix_rank(X_strat) < X_strat.shape[1]:
        return math.nan, math.nan, math.nan
    loss, strat = sm.OLS(y, X_loss).fit(), sm.OLS(y, X_strat).fit()
    return float(loss.f_pvalue), float(strat.f_pvalue), float(strat.compare_f_test(loss)[1])


# ------------------------------------------------------------------------------------- building


def build(
    df: pd.DataFrame,
    checkpoints: pd.DataFrame,
    matched_runs: pd.DataFrame,
    pairs: pd.DataFrame,
    level: float | None,
    n_boot: int = 2000,
    seed: int = 0,
) -> ClaimInputs:
    """The claims' inputs from the results table (not-estimable checkpoints already have NaN
    alignment and rate), its unregularised checkpoints with `progress`, the per-run matched-loss
    values and the regulariser pairs (each with the run's seed)."""
    final = df[(df["status"] == "done") & (df["checkpoint"] == "final")].dropna(subset=["seed"])
    plain = final[final["spectral_reg"].fillna(0) == 0]
    seeds = np.sort(pd.concat([df["seed"], matched_runs.get("seed", pd.Series(dtype=float))]).dropna().unique())
    code = {s: i for i, s in enumerate(seeds)}
    runs = {r: i for i, r in enumerate(df["run_id"].astype(str).unique())}
    points = checkpoints.dropna(subset=["seed"])
    pair_cols = ["optimizer", "spectral_reg", "seed", "delta_mean_aligned", "delta_final_loss", "answers"]
    pairs = _pair_answers(pairs.dropna(subset=["seed"]), final) if len(pairs) else pd.DataFrame(columns=pair_cols)
    rated = matched_runs[matched_runs["misalignment_rate"].notna()] if len(matched_runs) else pd.DataFrame()
    return ClaimInputs(
        seeds=seeds,
        matched=_by_seed(matched_runs, "misalignment_rate", seeds),
        matched_runs=_by_seed(rated, "misalignment_rate", seeds, "count"),
        matched_answers=_by_seed(rated, "n_answers", seeds, "sum"),
        fn=_by_seed(plain, "frobenius_nuclear", seeds),
        fn_runs=_by_seed(plain, "frobenius_nuclear", seeds, "count"),
        pairs=pairs.assign(seed_index=pairs["seed"].map(code)).reset_index(drop=True),
        final=_design(plain, {"loss": LOSS_FORMULA, "strat": STRATIFIED_FORMULA}, runs, code),
        late=_design(
            points[points["progress"] > LATE_PROGRESS], {"loss": LOSS_FORMULA, "strat": STRATIFIED_FORMULA}, runs, code
        ),
        early=_design(
            points[points["progress"] <= LATE_PROGRESS], {"loss": LOSS_FORMULA, "strat": STRATIFIED_FORMULA}, runs, code
        ),
        spectral=_design(
            final,
            {
                "pooled": "mean_aligned ~ frobenius_nuclear",
                "within": "mean_aligned ~ frobenius_nuclear + log_loss + C(optimizer)",
            },
            runs,
            code,
        ),
        level=level,
        n_boot=n_boot,
        seed=seed,
    )


def _by_seed(
    table: pd.DataFrame, value: str, seeds: np.ndarray, agg: Literal["mean", "sum", "count"] = "mean"
) -> dict[str, np.ndarray]:
    """optimiser -> per-seed `agg` of `value`, aligned with `seeds` (mean: NaN where the seed has
    none; count and sum: 0)."""
    if table.empty or value not in table:
        return {}
    wide = table.pivot_table(index="seed", columns="optimizer", values=value, aggfunc=agg).reindex(seeds)
    if agg != "mean":
        wide = wide.fillna(0)
    return {str(k): wide[k].to_numpy(float) for k in wide.columns}


def _pair_answers(pairs: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """The pairs with `answers`: the scorable answers of both final checkpoints (regularised and twin)."""
    if not {"run_id", "baseline_run_id"} <= set(pairs.columns):
        return pairs.assign(answers=0.0)
    scored = final.set_index(final["run_id"].astype(str))["n_denominator"].fillna(0)
    scored = scored[~scored.index.duplicated()]

    def n(col: str) -> pd.Series:
        return pairs[col].astype(str).map(scored).fillna(0)

    return pairs.assign(answers=n("run_id") + n("baseline_run_id"))


def _design(rows: pd.DataFrame, formulas: dict[str, str], runs: dict, code: dict) -> Design | None:
    """The rows' design matrices (one per formula, the same rows: those complete for all)."""
    from patsy import dmatrices

    cols = ["mean_aligned", "log_loss", "frobenius_nuclear", "optimizer"]
    need = [c for c in cols if any(c in f for f in formulas.values())]
    rows = rows.replace([np.inf, -np.inf], np.nan).dropna(subset=need)
    if len(rows) < 3 or rows["optimizer"].nunique() < (2 if "C(optimizer)" in "".join(formulas.values()) else 1):
        return None
    X = {}
    for key, formula in formulas.items():
        y, x = dmatrices(formula, rows, return_type="dataframe")
        X[key] = x.to_numpy(float)
    return Design(
        y=y.to_numpy(float)[:, 0],
        X=X,
        run=rows["run_id"].astype(str).map(runs).to_numpy(int),
        seed=rows["seed"].map(code).to_numpy(int),
        answers=rows["n_denominator"].fillna(0).to_numpy(float) if "n_denominator" in rows else np.zeros(len(rows)),
    )
