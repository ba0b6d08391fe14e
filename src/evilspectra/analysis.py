"""Statistics of a sweep: the numbers behind the study's claims, from a sweep's results table.

`analyze(sweep_dir)` reads the results table (one row per run x evaluated checkpoint, written by
`evilspectra.sweep`) and returns, and writes to the sweep's analysis file (SweepDir.analysis):

- per_optimizer: misalignment rate pooled over each optimiser's final checkpoints
  (sum n_misaligned / sum n_denominator) with a 95% Wilson interval on those pooled answers and,
  beside it, a percentile bootstrap over runs (answers of one run are not independent, so the
  run-level interval is the honest one when there are several runs); incoherent / CODE / refusal
  shares and mean alignment over the same answers. Runs with the spectral regulariser on are left
  out (they are `per_optimizer_regularised`) and the `spread` is max rate / min rate.
- regression: OLS mean_aligned ~ log_loss (R^2), then mean_aligned ~ log_loss * C(optimizer)
  (optimiser-specific intercepts and slopes, adjusted R^2), over unregularised final checkpoints.
- trajectories: per optimiser and checkpoint step, mean training loss and pooled alignment; and
  `overtake`: both models fitted on windows of training progress (step / the run's final step),
  with the first window where the stratified model's adjusted R^2 beats the loss-only one by
  more than `margin`.
- spectral_correlations: Pearson and Spearman of each spectral metric with mean_aligned and
  misalignment_rate over all final checkpoints (regularised runs included: they move the spectrum).
- regulariser: paired differences (weight > 0 minus weight 0, same config otherwise), with a 95%
  t interval over the pairs of each optimiser and weight.
- fits: the loss fits again with standard errors clustered by run (statsmodels), over final
  checkpoints and over every trajectory point, plus a bootstrap over runs of R^2, stratified
  adjusted R^2 and their gain (final checkpoints, and the last progress window).
- matched_loss: each unregularised run's alignment and misalignment rate interpolated along its
  trajectory (base model at its first-step loss, then its evaluated checkpoints) at one common
  training loss, per optimiser with a bootstrap interval over runs, and pairwise differences.
- spectral_fits: mean alignment on Frobenius/nuclear pooled and within optimiser (C(optimizer)
  intercepts), with run-clustered intervals, over all final checkpoints.
- claims: the study's claims with this sweep's figure, interval and verdict (evilspectra.claims).
- judge: which judge scored the analysed evaluations ({"label", "name"}); every claim row names it.

`analyze(SWEEP, judge_label=L)` is the same analysis of the evaluations re-judged with
`evilspectra rejudge SWEEP --label L` (evaluate/rejudge.results_for: the same rows, that judge's
outcome columns, its base-model evaluation), written to its own file (SweepDir.analysis_for) so
the first judgement's analysis and reference table are never overwritten.

A fitted line is drawn only where its points span at least MIN_LOG_LOSS_RANGE in ln-loss
(`line_support`); narrower data gives a slope that extrapolates noise.

Every fit or statistic that the data cannot support is None with a `reason`, never an exception.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evilspectra import claim_inputs as claim_data
from evilspectra import claims, stability
from evilspectra.errors import DataError
from evilspectra.evaluate.rejudge import paired_evals, plain_label, rejudged, results_for
from evilspectra.rundir import ANALYSIS as ANALYSIS  # public name kept
from evilspectra.rundir import (
    HEADLINE,
    NUMERIC_OUTCOMES,
    RESULT_SHARES,
    SPECTRAL_METRICS,
    RunDir,
    SweepDir,
    atomic_write_json,
    atomic_write_text,
    config_columns,
    read_json,
)

OUTCOME_SHARES = RESULT_SHARES
LOSS_FORMULA = "mean_aligned ~ log_loss"
STRATIFIED_FORMULA = "mean_aligned ~ log_loss * C(optimizer)"


def analyze(
    sweep_dir: str | Path | list[str | Path],
    windows: int = 2,
    margin: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    out: str | Path | None = None,
    judge_label: str | None = None,
) -> dict:
    """Analyse a sweep's results table, or run directories evaluated by hand; write the analysis
    atomically (into the sweep directory, or `out`) and return the same dict.

    sweep_dir: a sweep directory, or a list of run directories (their results table is built as a
    sweep builds it and written to `out` beside the analysis, so `report OUT` works on it);
    windows: number of equal-width bins of training progress (step / final step) for `overtake`;
    margin: adjusted-R^2 gain of the stratified model that counts as the optimiser overtaking loss;
    n_boot, seed: the bootstrap over runs of the per-optimiser interval;
    judge_label: analyse the evaluations re-judged with `rejudge --label judge_label` instead of the
    first judgement's, into SweepDir.analysis_for(judge_label) (no reference table: `audit` quotes
    the first judge's).
    """
    source, df, run_paths = _results_of(sweep_dir, out, judge_label)
    df = deduplicate_runs(df)
    df, not_estimable = mark_not_estimable(df)
    dest = SweepDir(out if out is not None else source)
    final = df[(df["status"] == "done") & (df["checkpoint"] == "final")]
    plain = final[final["spectral_reg"].fillna(0) == 0]
    regularised = final[final["spectral_reg"].fillna(0) > 0]
    per_opt = [pooled_rates(g, optimizer=name, n_boot=n_boot, seed=seed) for name, g in plain.groupby("optimizer")]
    result = {
        "sweep_dir": str(source),
        "judge": judge_record(df, judge_label),
        "runs": {str(k): int(v) for k, v in df.drop_duplicates("run_id")["status"].value_counts().items()},
        "ci_method": "Wilson 95% on answers pooled over the optimiser's runs (ci_low/ci_high); "
        f"percentile bootstrap 95% over runs, {n_boot} resamples, seed {seed} (ci_runs_low/ci_runs_high)",
        "definitions": definitions(df),
        "per_optimizer": per_opt,
        "spread": spread(per_opt),
        "per_optimizer_regularised": [
            pooled_rates(g, optimizer=name[0], spectral_reg=name[1], n_boot=n_boot, seed=seed)
            for name, g in regularised.groupby(["optimizer", "spectral_reg"])
        ],
        "regression": regressions(plain),
        "trajectories": trajectories(df),
        "overtake": overtake(df, windows=windows, margin=margin),
        "spectral_correlations": spectral_correlations(final),
        "regulariser": regulariser_effect(df),
        "base_model": base_models(source, judge_label) if run_paths is None else [],
        "run_dirs": _run_dirs(run_paths if run_paths is not None else _runs_elsewhere(source, df, dest)),
    }
    result["fits"] = loss_fits(df, plain, windows=windows, n_boot=n_boot, seed=seed)
    result["not_estimable"] = not_estimable
    result["matched_loss"] = matched_loss(df, result["base_model"], n_boot=n_boot, seed=seed, level=spec_level(source))
    result["spectral_fits"] = spectral_fits(final)
    result["claims"] = claims.evaluate_claims(result, claim_inputs(df, result, n_boot, seed), stability.check)
    for row in result["claims"]:  # a verdict is the judge's as much as the sweep's
        row["judge"] = result["judge"]["name"]
    result = _jsonable(result)
    if judge_label is not None:
        atomic_write_json(dest.analysis_for(result["judge"]["label"]), result)
        return result
    atomic_write_json(dest.analysis, result)
    atomic_write_json(dest.references, _jsonable(reference_table(final, result, source)))
    return result


def judge_record(df: pd.DataFrame, judge_label: str | None) -> dict:
    """Which judge scored the evaluations of a results table: {"label": the `rejudge --label`, None
    for the first judgement; "name": the judge(s) their summaries record, joined by " + "}."""
    judged = df.loc[df["n_answers"].notna(), "judge"] if "judge" in df else pd.Series(dtype=object)
    names = sorted(set(judged.dropna().astype(str)))
    return {"label": plain_label(judge_label) if judge_label else None, "name": " + ".join(names) or None}


def _results_of(
    source: str | Path | list[str | Path], out: str | Path | None, judge_label: str | None = None
) -> tuple[Path | str, pd.DataFrame, list[Path] | None]:
    """(what was analysed, its results table, the run directories or None for a sweep). Run
    directories (one or several) get their table built and written to `out` (the first judge's
    table; `judge_label` then reads the re-judged outcomes beside it)."""
    from evilspectra.sweep import results_from_runs, write_results

    paths = [Path(p) for p in source] if isinstance(source, (list, tuple)) else [Path(source)]
    if len(paths) == 1 and not RunDir(paths[0]).is_run():
        df = load_results(paths[0])
        if out is not None and Path(out).resolve() != paths[0].resolve():
            write_results(df, Path(out))  # the report of OUT reads its own copies of the table and spec
            spec = SweepDir(paths[0]).spec
            if spec.is_file():
                atomic_write_text(SweepDir(out).spec, spec.read_text())
        if judge_label is not None:
            # a directory written by `analyze RUN... --out DIR` finds its runs through its analysis
            runs = (read_json(SweepDir(paths[0]).analysis) or {}).get("run_dirs")
            df = load_results(paths[0], judge_label, runs)
        return paths[0], df, None
    if out is None:
        raise DataError(f"analyze: give --out DIR for the analysis of run directories ({', '.join(map(str, paths))})")
    for path in paths:
        if not RunDir(path).is_run():
            raise DataError(f"{path}: neither a sweep directory nor a run directory (no manifest)")
    write_results(results_from_runs(paths), Path(out))
    df = load_results(Path(out), judge_label, _run_dirs(paths))
    return ", ".join(str(p) for p in paths), df, paths


def _runs_elsewhere(sweep: Path, df: pd.DataFrame, dest: SweepDir) -> list[Path]:
    """The run directories of a sweep analysed into another directory (none when analysed in place)."""
    if dest.path.resolve() == Path(sweep).resolve():
        return []
    return [SweepDir(sweep).run(run_id).path for run_id in df["run_id"].dropna().unique()]


def _run_dirs(paths: list[Path]) -> dict[str, str]:
    """run id -> run directory, for analyses written away from the runs (the report finds spectra there)."""
    out = {}
    for path in paths:
        manifest = RunDir(path).read_manifest()
        if manifest is not None:
            out[manifest.run_id] = str(Path(path).resolve())
    return out


def definitions(df: pd.DataFrame) -> list[dict]:
    """The distinct (aligned threshold, coherent threshold, CODE convention, judge) of the evaluations
    in the table, as recorded in their summaries, with how many rows used each."""
    cols = ["aligned_threshold", "coherent_threshold", "code_convention", "judge"]
    rows = df.dropna(subset=["n_answers"]) if "n_answers" in df else df.iloc[0:0]
    if rows.empty or not set(cols) <= set(rows.columns) or rows[cols[0]].isna().all():
        return []
    counts = rows[cols].astype(object).where(rows[cols].notna(), None).value_counts(dropna=False)
    return [dict(zip(cols, key), n_rows=int(n)) for key, n in counts.items()]


def definition_text(definitions: list[dict]) -> str:
    """What `misaligned` meant in these evaluations, from the thresholds their summaries recorded."""
    if not definitions:
        return "No evaluation summary recorded its thresholds."
    parts = [
        f"aligned < {d['aligned_threshold']:g} and coherent > {d['coherent_threshold']:g}, "
        f"CODE answers: {d['code_convention']}, judge {d['judge']} ({d['n_rows']} evaluations)"
        for d in definitions
    ]
    lead = "An answer is misaligned when the judge rates it " if len(parts) == 1 else "Mixed definitions: "
    return lead + "; ".join(parts) + "."


def analysis_path(sweep_dir: str | Path, judge_label: str | None = None) -> Path:
    """The analysis file of the first judgement (None) or of the re-judgement `judge_label`."""
    sweep = SweepDir(sweep_dir)
    return sweep.analysis if judge_label is None else sweep.analysis_for(plain_label(judge_label))


def analysis_is_current(sweep_dir: str | Path, judge_label: str | None = None) -> bool:
    """True when the analysis file exists and is newer than the results table it was computed from
    (for a re-judgement, also newer than every summary of that re-judgement: `rejudge` of one run
    of the sweep changes the analysis without touching the table)."""
    sweep, path = SweepDir(sweep_dir), analysis_path(sweep_dir, judge_label)
    if not path.is_file():
        return False
    inputs = [sweep.results]
    if judge_label is not None and sweep.results.is_file():
        runs = (read_json(sweep.analysis) or {}).get("run_dirs")  # the runs of `analyze RUN... --out DIR`
        inputs += [again.summary for _, _, again in paired_evals(Path(sweep_dir), judge_label, runs)]
    return all(not p.is_file() or p.stat().st_mtime <= path.stat().st_mtime for p in inputs)


def load_analysis(sweep_dir: str | Path, judge_label: str | None = None) -> dict:
    """The directory's analysis (of the first judgement, or of the re-judgement `judge_label`),
    (re)computed first when absent or older than its results table."""
    if not analysis_is_current(sweep_dir, judge_label):
        return analyze(sweep_dir, judge_label=judge_label)
    return json.loads(analysis_path(sweep_dir, judge_label).read_text())


def load_results(sweep_dir: Path, judge_label: str | None = None, runs: dict[str, str] | None = None) -> pd.DataFrame:
    """The sweep's results table with every column the analysis reads present (missing ones all-NaN).

    judge_label: the same rows with the outcomes of that re-judgement (evaluate/rejudge.results_for);
    runs: run id -> run directory, for a table whose runs are not under SWEEP/runs/.
    """
    path = SweepDir(sweep_dir).results
    if not path.is_file():
        raise DataError(f"{path}: no results table; run `evilspectra sweep` into {sweep_dir} first")
    try:
        df = pd.read_csv(path) if judge_label is None else results_for(Path(sweep_dir), judge_label, runs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV results table ({exc})") from exc
    missing = {"run_id", "optimizer", "status"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; expected the table written by evilspectra.sweep")
    numeric = ["spectral_reg", *NUMERIC_OUTCOMES]
    for col in [*numeric, "checkpoint"]:
        if col not in df.columns:
            df[col] = np.nan
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    df["optimizer"] = df["optimizer"].astype(str)
    return df


# ------------------------------------------------------------------- estimable runs, spec level


def deduplicate_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One copy of each (run_id, checkpoint): the same run found twice (two directories of one
    run id) would count twice in every statistic. Dropped copies are named in a warning."""
    key = ["run_id", "checkpoint"]
    dup = df.duplicated(subset=key, keep="first")
    if dup.any():
        ids = sorted(df.loc[dup, "run_id"].astype(str).unique())
        warnings.warn(
            f"results: {len(ids)} run id(s) appear more than once, later copies dropped: {', '.join(ids[:5])}",
            stacklevel=2,
        )
    return df[~dup].reset_index(drop=True)


def mark_not_estimable(df: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Checkpoints with fewer than claims.MIN_SCORED scorable answers (n_denominator) get no
    misalignment rate and no mean alignment (NaN): 2 answers make a rate of 0 or 100%, which no
    statistic should read as a measurement. Returns the table and one record per such checkpoint
    with its CODE / incoherent shares (why the model had so little to score)."""
    evaluated = df["n_answers"].fillna(0) > 0
    thin = evaluated & (df["n_denominator"].fillna(0) < claims.MIN_SCORED)
    records = [
        {
            "run_id": r["run_id"],
            "optimizer": r["optimizer"],
            "spectral_reg": _num(r["spectral_reg"]),
            "seed": _num(r.get("seed")),
            "checkpoint": r["checkpoint"],
            "n_scored": int(r["n_denominator"]) if pd.notna(r["n_denominator"]) else 0,
            "n_answers": int(r["n_answers"]),
            "share_CODE": _num(r.get("share_CODE")),
            "share_incoherent": _num(r.get("share_incoherent")),
            "reason": f"{int(r['n_denominator'] if pd.notna(r['n_denominator']) else 0)} of {int(r['n_answers'])} "
            f"answers scorable (< {claims.MIN_SCORED}): CODE {_pct(r.get('share_CODE'))}, "
            f"incoherent {_pct(r.get('share_incoherent'))}",
        }
        for _, r in df[thin].iterrows()
    ]
    df = df.copy()
    df.loc[thin, ["misalignment_rate", "mean_aligned"]] = np.nan
    return df, records


def _pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if x is not None and pd.notna(x) else "n/a"


def spec_level(source: Path | str) -> float | None:
    """The matched training loss fixed in the sweep spec before the data (`analysis.matched_loss`)."""
    spec = read_json(SweepDir(source).spec) if isinstance(source, Path) else None
    level = ((spec or {}).get("analysis") or {}).get("matched_loss")
    return float(level) if level is not None else None


def claim_inputs(df: pd.DataFrame, result: dict, n_boot: int, seed: int) -> claim_data.ClaimInputs:
    """The per-seed tables every claim and its stability check read (evilspectra.claim_inputs)."""
    runs = pd.DataFrame(result["matched_loss"].get("runs") or [])
    pairs = pd.DataFrame(result["regulariser"]["pairs"])
    return claim_data.build(df, _checkpoints(df), runs, pairs, result["matched_loss"].get("level_loss"), n_boot, seed)


# ----------------------------------------------------------------------------- per optimiser


def pooled_rates(rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0, **keys: Any) -> dict:
    """Pool the answers of some final checkpoints (one per run): rate, CIs, shares and counts.

    The shares are of all answers (n_answers), the rate and mean alignment of the denominator
    (coherent scored answers, plus coherent CODE answers under the `zero` convention).
    """
    from statsmodels.stats.proportion import proportion_confint

    rows = rows[rows["n_answers"].fillna(0) > 0]
    n_den, n_mis = rows["n_denominator"].fillna(0), rows["n_misaligned"].fillna(0)
    den, mis, total = int(n_den.sum()), int(n_mis.sum()), int(rows["n_answers"].sum())
    out: dict[str, Any] = {
        **keys,
        "n_runs": len(rows),
        "n_answers": total,
        "n_denominator": den,
        "n_misaligned": mis,
        "rate": mis / den if den else None,
        "ci_low": None,
        "ci_high": None,
        "ci_runs_low": None,
        "ci_runs_high": None,
        "mean_aligned": float((rows["mean_aligned"].fillna(0) * n_den).sum() / den) if den else None,
        "mean_final_loss": _mean(rows["final_loss"]),
    }
    for name in OUTCOME_SHARES:  # the per-answer counts behind each share: share = n / n_answers exactly
        n = int(np.round(rows[f"share_{name}"].fillna(0) * rows["n_answers"]).sum())
        out[f"n_{name}"], out[f"share_{name}"] = n, n / total if total else None
    if den:
        out["ci_low"], out["ci_high"] = (float(x) for x in proportion_confint(mis, den, alpha=0.05, method="wilson"))
        out["ci_runs_low"], out["ci_runs_high"] = _bootstrap_runs(n_mis.to_numpy(), n_den.to_numpy(), n_boot, seed)
    return out


def _bootstrap_runs(n_mis: np.ndarray, n_den: np.ndarray, n_boot: int, seed: int) -> tuple[float | None, float | None]:
    """95% percentile interval of the pooled rate, resampling runs (not answers) with replacement."""
    if len(n_mis) < 2:
        return None, None
    idx = np.random.default_rng(seed).integers(0, len(n_mis), size=(n_boot, len(n_mis)))
    den = n_den[idx].sum(axis=1)
    rates = n_mis[idx].sum(axis=1)[den > 0] / den[den > 0]
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return float(lo), float(hi)


def spread(per_opt: list[dict]) -> dict:
    """Highest over lowest pooled misalignment rate across optimisers."""
    rated = [r for r in per_opt if r["rate"] is not None]
    if len(rated) < 2:
        return {"ratio": None, "reason": "fewer than two optimisers with a misalignment rate"}
    hi, lo = max(rated, key=lambda r: r["rate"]), min(rated, key=lambda r: r["rate"])
    out = {
        "max_optimizer": hi["optimizer"],
        "max_rate": hi["rate"],
        "min_optimizer": lo["optimizer"],
        "min_rate": lo["rate"],
        "difference": hi["rate"] - lo["rate"],
        "ratio": None,
    }
    if lo["rate"] > 0:
        out["ratio"] = hi["rate"] / lo["rate"]
    else:
        out["reason"] = f"{lo['optimizer']} has a rate of 0: the ratio is unbounded"
    return out


# ------------------------------------------------------------------------------ regressions


def fit_ols(data: pd.DataFrame, formula: str) -> dict:
    """OLS via statsmodels' formula API; None fields with a `reason` when the data cannot support it.

    Returns formula, n, n_params, r2, adj_r2, params (name -> coefficient), pvalues, and for each
    optimiser in the data (stratified formulas) its own line: intercept and slope in log_loss (read off the predictions
    at log_loss 0 and 1, so they do not depend on how patsy names the interaction terms).
    """
    import statsmodels.formula.api as smf
    from patsy import PatsyError

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


MIN_LOG_LOSS_RANGE = 0.3  # ln-loss span a fitted line needs before the report draws it
MIN_LINE_POINTS = 4


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


# ----------------------------------------------------------------------------- trajectories


def _checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """Evaluated checkpoints of unregularised finished runs, with progress = step / the run's final step."""
    rows = df[(df["status"] == "done") & df["checkpoint"].notna() & (df["spectral_reg"].fillna(0) == 0)].copy()
    rows = rows.dropna(subset=["step"])
    total = rows["step"].where(rows["checkpoint"] == "final").groupby(rows["run_id"]).transform("max")
    rows["progress"] = rows["step"] / total.fillna(rows.groupby("run_id")["step"].transform("max"))
    return rows[rows["progress"].notna() & np.isfinite(rows["progress"])]


def trajectories(df: pd.DataFrame) -> dict[str, list[dict]]:
    """optimiser -> [{step, progress, loss, mean_aligned, misalignment_rate, n_runs}] by step.

    loss is the mean over runs of the smoothed training loss at that step; alignment and rate are
    pooled over the runs' answers at that checkpoint (weights: n_denominator).
    """
    out = {}
    for name, g in _checkpoints(df).groupby("optimizer"):
        points = []
        for step, s in g.groupby("step"):
            den = s["n_denominator"].fillna(0)
            points.append(
                {
                    "step": int(step),
                    "progress": float(s["progress"].mean()),
                    "loss": _mean(s["loss_smoothed"]),
                    "mean_aligned": float((s["mean_aligned"].fillna(0) * den).sum() / den.sum()) if den.sum() else None,
                    "misalignment_rate": float(s["n_misaligned"].fillna(0).sum() / den.sum()) if den.sum() else None,
                    "n_runs": int(s["run_id"].nunique()),
                }
            )
        out[name] = points
    return out


def overtake(df: pd.DataFrame, windows: int = 2, margin: float = 0.05) -> dict:
    """Both regressions within equal-width windows of training progress (0, 1/w], ..., ((w-1)/w, 1].

    A window where the stratified model's adjusted R^2 exceeds the loss-only one by more than
    `margin` is where the optimiser explains alignment beyond what the loss explains; `first_window`
    is the first such window (None when none is).
    """
    rows = _checkpoints(df)
    edges = np.linspace(0, 1, windows + 1)
    result: dict[str, Any] = {"windows": [], "margin": margin, "first_window": None}
    for i in range(windows):
        lo, hi = edges[i], edges[i + 1]
        inside = rows[(rows["progress"] > lo) & (rows["progress"] <= hi)] if i else rows[rows["progress"] <= hi]
        reg = (
            regressions(inside)
            if len(inside)
            else {
                "loss_only": {"adj_r2": None, "reason": "no checkpoints"},
                "stratified": {"adj_r2": None, "reason": "no checkpoints"},
                "adj_r2_gain": None,
            }
        )
        window = {
            "index": i,
            "progress_low": float(lo),
            "progress_high": float(hi),
            "n": len(inside),
            "steps": sorted(int(s) for s in inside["step"].unique()),
            "adj_r2_loss": reg["loss_only"]["adj_r2"],
            "adj_r2_stratified": reg["stratified"]["adj_r2"],
            "gain": reg["adj_r2_gain"],
            "reason": reg["stratified"].get("reason") or reg["loss_only"].get("reason"),
        }
        result["windows"].append(window)
        if result["first_window"] is None and window["gain"] is not None and window["gain"] > margin:
            result["first_window"] = i
    return result


# ------------------------------------------------------------------------------ correlations


def spectral_correlations(final: pd.DataFrame) -> list[dict]:
    """Pearson and Spearman (with p-values and n) of each spectral metric with each outcome."""
    from scipy import stats

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


# ------------------------------------------------------------------------------- regulariser


DELTAS = {
    "mean_aligned": "delta_mean_aligned",
    "misalignment_rate": "delta_misalignment_rate",
    "final_loss": "delta_final_loss",
    "frobenius_nuclear": "delta_frobenius_nuclear",
}


def regulariser_effect(df: pd.DataFrame) -> dict:
    """Paired differences, regularised minus unregularised, of runs identical in every other config column.

    Config columns: the declared ones (rundir.ResultConfig and opt_<field>) except run_id and
    spectral_reg; any other column, present or added later, never becomes a pairing key. Returns
    the pairs, and means (with n) per optimiser and regulariser weight and overall.
    """
    final = df[(df["status"] == "done") & (df["checkpoint"] == "final")]
    config = [c for c in config_columns(df.columns) if c not in ("run_id", "spectral_reg")]
    final = final.assign(_key=final[config].map(str).agg("|".join, axis=1) if len(final) else "")  # NaN-safe equality
    base = final[final["spectral_reg"].fillna(0) == 0].drop_duplicates("_key").set_index("_key")
    treated = final[final["spectral_reg"].fillna(0) > 0]
    pairs = []
    for _, row in treated.iterrows():
        if row["_key"] not in base.index:
            continue
        ref = base.loc[row["_key"]]
        pair = {
            "optimizer": row["optimizer"],
            "seed": _num(row["seed"]) if "seed" in row else None,
            "spectral_reg": float(row["spectral_reg"]),
            "run_id": row["run_id"],
            "baseline_run_id": ref["run_id"],
        }
        for col, name in DELTAS.items():
            a, b = row[col], ref[col]
            pair[f"{col}_off"], pair[f"{col}_on"] = _num(b), _num(a)
            pair[name] = float(a - b) if pd.notna(a) and pd.notna(b) else None
        pairs.append(pair)
    unpaired = sorted(set(treated["run_id"]) - {p["run_id"] for p in pairs})
    if unpaired:
        warnings.warn(
            f"regulariser: {len(unpaired)} regularised run(s) have no unregularised twin of the same config "
            f"({', '.join(config)}): {', '.join(map(str, unpaired[:5]))}",
            stacklevel=2,
        )
    table = pd.DataFrame(pairs)
    summary = []
    if len(table):
        for (opt, weight), g in table.groupby(["optimizer", "spectral_reg"]):
            summary.append({"optimizer": opt, "spectral_reg": float(weight), **_delta_means(g)})
    return {
        "n_regularised_runs": len(treated),
        "n_pairs": len(pairs),
        "unpaired": unpaired,
        "pairing_columns": config,
        "pairs": pairs,
        "by_optimizer": summary,
        "overall": _delta_means(table) if len(table) else None,
    }


def _delta_means(pairs: pd.DataFrame) -> dict:
    """Mean of each paired difference with a 95% t interval over the pairs (`<delta>_ci`)."""
    out = {}
    for name in DELTAS.values():
        values = pairs[name].dropna()
        out[name], out[f"n_{name}"] = (float(values.mean()) if len(values) else None), len(values)
        out[f"{name}_ci"] = _t_interval(values.to_numpy(float))
    out["n"] = len(pairs)
    return out


def _t_interval(values: np.ndarray) -> list[float] | None:
    """95% t interval of the mean (None below two values)."""
    from scipy import stats

    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return [float(values[0]), float(values[0])]
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return [float(lo), float(hi)]


# ---------------------------------------------------------------- fits with run-level uncertainty


def clustered_fit(data: pd.DataFrame, formula: str, term: str) -> dict:
    """OLS of `formula` with standard errors clustered by run_id (CR1, statsmodels): `term`'s
    coefficient, SE, 95% CI and p, with n points and n runs; None fields with a `reason`."""
    import statsmodels.formula.api as smf

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
    from patsy import dmatrices

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
    points = _checkpoints(df)
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


# ----------------------------------------------------------------------------- matched loss


def matched_loss(
    df: pd.DataFrame, base: list[dict], n_boot: int = 2000, seed: int = 0, level: float | None = None
) -> dict:
    """Each unregularised run's mean alignment and misalignment rate at one common training loss.

    A run's trajectory is the base model (at the run's first-step loss, B = 0) followed by its
    evaluated checkpoints in step order; the values are interpolated linearly in ln(loss) at the
    first crossing of the level. The level is the highest loss that at least half of every
    optimiser's runs reach (max over optimisers of the lower median of the runs' lowest checkpoint
    loss: a loss some run actually reached, never the midpoint between two rungs of a learning-rate
    ladder), so that every optimiser is compared where its runs have trained to that loss, not
    part-way along a straight line from the base model. Per optimiser: mean over the runs that
    reach it, 95% bootstrap over runs; pairwise differences of misalignment rate.

    `level` (nats), when given, is the level fixed before the data (the sweep spec's
    `analysis.matched_loss`); the data-chosen level above is the fallback, and `level_source`
    says which was used. `runs` lists every run's values at the level, with its seed.
    """
    points = _checkpoints(df).sort_values(["run_id", "step"])
    ref = next((b for b in base if b.get("mean_aligned") is not None), None)
    out: dict[str, Any] = {"level_loss": None, "per_optimizer": [], "differences": []}
    if points.empty or ref is None:
        return out | {"reason": "needs evaluated checkpoints and the base model's evaluation"}
    lowest = points.groupby(["optimizer", "run_id"])["loss_smoothed"].min()
    source = "fixed in the sweep spec before the data (analysis.matched_loss)"
    if level is None:
        level = float(lowest.groupby(level=0).quantile(0.5, interpolation="lower").max())
        source = "chosen from the data: the highest loss half of every optimiser's runs reach (no level in the spec)"
    runs = []
    for (name, run_id), g in points.groupby(["optimizer", "run_id"]):
        first = g["initial_loss"].dropna()
        base_n = ref.get("n_denominator") or 0
        start = [(float(first.iloc[0]), ref["mean_aligned"], ref["misalignment_rate"], base_n)] if len(first) else []
        scored = g["n_denominator"].fillna(0) if "n_denominator" in g else pd.Series(0, index=g.index)
        traj = start + list(zip(g["loss_smoothed"], g["mean_aligned"], g["misalignment_rate"], scored))
        value = _crossing(traj, level)
        if value is not None:
            runs.append(
                {
                    "optimizer": name,
                    "run_id": run_id,
                    "seed": _num(g["seed"].iloc[0]) if "seed" in g else None,
                    "mean_aligned": value[0],
                    "misalignment_rate": value[1],
                    "n_answers": value[2],
                }
            )
    columns = ["optimizer", "run_id", "seed", "mean_aligned", "misalignment_rate", "n_answers"]
    table = pd.DataFrame(runs, columns=columns)
    boots = {}
    for i, (name, g) in enumerate(table.groupby("optimizer")):
        row = {"optimizer": name, "n_runs": len(g), "n_runs_total": int(lowest.loc[name].size)}
        for col in ("mean_aligned", "misalignment_rate"):
            values = g[col].dropna().to_numpy(float)
            boots[(name, col)] = _boot_means(values, n_boot, seed + 1000 * i)  # independent draws per optimiser
            row[col] = float(values.mean()) if len(values) else None
            row[f"{col}_ci"] = _percentile(boots[(name, col)])
        out["per_optimizer"].append(row)
    names = [r["optimizer"] for r in out["per_optimizer"]]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = (
                boots[(b, "misalignment_rate")] - boots[(a, "misalignment_rate")]
                if len(boots[(a, "misalignment_rate")]) and len(boots[(b, "misalignment_rate")])
                else np.array([])
            )
            est = _diff(out["per_optimizer"], a, b)
            out["differences"].append({"a": a, "b": b, "rate_b_minus_a": est, "ci": _percentile(d)})
    out["spread"] = _matched_spread(out["per_optimizer"], boots)
    reach = {
        name: int(table["misalignment_rate"].notna()[table["optimizer"] == name].sum())
        for name in lowest.index.levels[0]
    }
    return out | {
        "level_loss": level,
        "level_log_loss": math.log(level) if level > 0 else None,
        "level_source": source,
        "runs_reaching": {name: {"n": reach[name], "of": int(lowest.loc[name].size)} for name in reach},
        "runs": table.to_dict("records"),
        "n_boot": n_boot,
    }


def _crossing(
    traj: list[tuple[float, float, float, float]], level: float
) -> tuple[float | None, float | None, int] | None:
    """(alignment, rate, scorable answers of the two evaluations interpolated between) where the
    trajectory of (loss, alignment, rate, scorable answers) first reaches `level`, in ln(loss)."""
    for (l0, a0, r0, n0), (l1, a1, r1, n1) in zip(traj, traj[1:]):
        if l0 >= level >= l1 and l0 > 0 and l1 > 0:
            w = 0.0 if l0 == l1 else (math.log(l0) - math.log(level)) / (math.log(l0) - math.log(l1))
            lerp = lambda x, y: None if pd.isna(x) or pd.isna(y) else float(x + w * (y - x))  # noqa: E731
            return lerp(a0, a1), lerp(r0, r1), int(n0) + int(n1)
    return None


def _boot_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    if len(values) < 2:
        return np.array([])
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def _percentile(draws: np.ndarray) -> list[float] | None:
    return [float(x) for x in np.percentile(draws, [2.5, 97.5])] if len(draws) else None


def _diff(rows: list[dict], a: str, b: str) -> float | None:
    ra = next(r["misalignment_rate"] for r in rows if r["optimizer"] == a)
    rb = next(r["misalignment_rate"] for r in rows if r["optimizer"] == b)
    return rb - ra if ra is not None and rb is not None else None


def _matched_spread(rows: list[dict], boots: dict) -> dict:
    """Highest over lowest matched-loss misalignment rate, with the bootstrap of that same ratio."""
    rated = [r for r in rows if r["misalignment_rate"] is not None]
    if len(rated) < 2:
        return {"ratio": None, "ci": None, "reason": "fewer than two optimisers at the matched loss"}
    hi, lo = max(rated, key=lambda r: r["misalignment_rate"]), min(rated, key=lambda r: r["misalignment_rate"])
    out = {"max_optimizer": hi["optimizer"], "min_optimizer": lo["optimizer"], "ratio": None, "ci": None}
    if lo["misalignment_rate"] <= 0:
        return out | {"reason": f"{lo['optimizer']} has a rate of 0 at the matched loss: the ratio is unbounded"}
    out["ratio"] = hi["misalignment_rate"] / lo["misalignment_rate"]
    num, den = boots[(hi["optimizer"], "misalignment_rate")], boots[(lo["optimizer"], "misalignment_rate")]
    if len(num) and len(den):
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1), np.inf)
        out["ci"] = [float(x) for x in np.percentile(ratio, [2.5, 97.5])]
    return out


# ------------------------------------------------------------------------- spectra vs alignment


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


# ------------------------------------------------------------------------------- references


def reference_table(final: pd.DataFrame, analysis: dict, source: Path | str) -> dict:
    """The per-optimiser reference that `audit` quotes: for each optimiser and regulariser weight,
    the final adapters' mean Frobenius/nuclear ratio (mean and range over runs), the learning rates
    used, and the pooled misalignment rate with its 95% Wilson interval; with its provenance.

    Rows come from `analysis` (per_optimizer and per_optimizer_regularised) and the final rows of the
    results table; `lora_r` is the adapter ranks the F/N values are on.
    """
    rows = []
    for pooled in analysis["per_optimizer"] + analysis["per_optimizer_regularised"]:
        weight = pooled.get("spectral_reg") or 0.0
        runs = final[(final["optimizer"] == pooled["optimizer"]) & (final["spectral_reg"].fillna(0) == weight)]
        fn = runs["frobenius_nuclear"].dropna()
        rows.append(
            {
                "optimizer": pooled["optimizer"],
                "spectral_reg": weight,
                "n_runs": pooled["n_runs"],
                "lr_low": _num(runs["lr"].min()) if "lr" in runs and len(runs) else None,
                "lr_high": _num(runs["lr"].max()) if "lr" in runs and len(runs) else None,
                "fn_mean": float(fn.mean()) if len(fn) else None,
                "fn_low": float(fn.min()) if len(fn) else None,
                "fn_high": float(fn.max()) if len(fn) else None,
                **{k: pooled[k] for k in ("rate", "ci_low", "ci_high", "n_denominator", "n_misaligned")},
                "share_incoherent": pooled["share_incoherent"],
                "mean_final_loss": pooled["mean_final_loss"],
            }
        )
    return {
        "provenance": provenance(source),
        "lora_r": sorted(int(r) for r in final["lora_r"].dropna().unique()) if "lora_r" in final else [],
        "definitions": analysis["definitions"],
        "ci_method": "Wilson 95% on answers pooled over the runs",
        "rows": rows,
    }


def provenance(source: Path | str) -> dict:
    """Where a table comes from: the command line, UTC date, git commit of the code, package version."""
    import subprocess
    import sys
    from datetime import UTC, datetime
    from importlib import metadata

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        version = metadata.version("evilspectra")
    except metadata.PackageNotFoundError:
        version = None
    prog = Path(sys.argv[0]).name
    prog = "evilspectra" if prog in ("__main__.py", "evilspectra") else prog
    spec = read_json(SweepDir(source).spec) if isinstance(source, Path) else None
    return {
        "command": " ".join([prog, *sys.argv[1:]]),
        "source": str(source),
        "sweep": (spec or {}).get("name"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit or None,
        "evilspectra": version,
    }


# ------------------------------------------------------------------------------------ helpers


def base_models(sweep_dir: Path, judge_label: str | None = None) -> list[dict]:
    """The base models' evaluation summaries (SweepDir.base_evals): the reference. With a
    `judge_label`, their re-judgements (a base model not re-judged is left out, never mixed in)."""
    out = []
    for slug, evaldir in SweepDir(sweep_dir).base_evals():
        if judge_label is not None:
            evaldir = rejudged(evaldir, plain_label(judge_label))
        summary = evaldir.read_summary()
        if summary is None:
            continue
        s = summary.model_dump()
        out.append({"model": slug, **{k: s.get(k) for k in HEADLINE}})
    return out


def _mean(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def _num(x: Any) -> float | None:
    return float(x) if pd.notna(x) else None


def _jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN and inf to None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
