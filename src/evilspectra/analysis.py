"""Statistics of a sweep: the numbers behind the study's claims, from a sweep's results table.

`analyze(sweep_dir)` reads the results table (one row per run x evaluated checkpoint, written by
`evilspectra.sweep`) and returns, and writes to the sweep's analysis file (SweepDir.analysis), an Analysis record:

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

Every fit or statistic that the data cannot support is None with a `reason`, never an exception.
This module composes the analysis and writes it; the statistics live beside it:

    analysis_table         the results table as read (columns, duplicates, thin evaluations), definitions
    analysis_rates         pooled rates per optimiser, spread
    analysis_fits          loss and spectral fits: OLS, run-clustered, bootstrap of R^2; correlations
    analysis_trajectories  checkpoints in training order, `overtake`
    analysis_matched       alignment at a matched training loss
    analysis_regulariser   paired regulariser differences
    analysis_references    the reference table `audit` quotes (SweepDir.references)

The file's record is artefacts.analysis_record.Analysis; every name importable from this module
before the split still is (the re-export block below).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evilspectra import claim_inputs as claim_data
from evilspectra import claims, stability
from evilspectra.analysis_fits import (
    LOSS_FORMULA,
    MIN_LINE_POINTS,
    MIN_LOG_LOSS_RANGE,
    STRATIFIED_FORMULA,
    bootstrap_fits,
    clustered_fit,
    fit_ols,
    line_support,
    loss_fits,
    regressions,
    spectral_correlations,
    spectral_fits,
)
from evilspectra.analysis_matched import _crossing, matched_loss
from evilspectra.analysis_rates import OUTCOME_SHARES, pooled_rates, spread
from evilspectra.analysis_references import provenance, reference_table
from evilspectra.analysis_regulariser import DELTAS, regulariser_effect
from evilspectra.analysis_table import (
    checkpoints,
    deduplicate_runs,
    definition_text,
    definitions,
    judge_record,
    load_results,
    mark_not_estimable,
)
from evilspectra.analysis_trajectories import overtake, trajectories
from evilspectra.artefacts.analysis_record import Analysis, read_analysis, write_analysis
from evilspectra.artefacts.io import atomic_write_text, write_record
from evilspectra.artefacts.paths import ANALYSIS, RunDir, SweepDir
from evilspectra.artefacts.records import HEADLINE
from evilspectra.errors import DataError
from evilspectra.evaluate.rejudge import paired_evals, plain_label, rejudged

__all__ = [  # the public names of evilspectra.analysis before the split, and the record
    "ANALYSIS",
    "DELTAS",
    "LOSS_FORMULA",
    "MIN_LINE_POINTS",
    "MIN_LOG_LOSS_RANGE",
    "OUTCOME_SHARES",
    "STRATIFIED_FORMULA",
    "Analysis",
    "_crossing",
    "analysis_is_current",
    "analysis_path",
    "analyze",
    "base_models",
    "bootstrap_fits",
    "claim_inputs",
    "clustered_fit",
    "deduplicate_runs",
    "definition_text",
    "definitions",
    "fit_ols",
    "judge_record",
    "line_support",
    "load_analysis",
    "load_results",
    "loss_fits",
    "mark_not_estimable",
    "matched_loss",
    "overtake",
    "pooled_rates",
    "provenance",
    "reference_table",
    "regressions",
    "regulariser_effect",
    "spec_level",
    "spectral_correlations",
    "spectral_fits",
    "spread",
    "trajectories",
]


def analyze(
    sweep_dir: str | Path | Sequence[str | Path],
    windows: int = 2,
    margin: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    out: str | Path | None = None,
    judge_label: str | None = None,
) -> Analysis:
    """Analyse a sweep's results table, or run directories evaluated by hand; write the analysis
    atomically (into the sweep directory, or `out`) and return its record.

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
    if isinstance(source, Path):  # a sweep directory (run directories: `source` names them, `run_paths` lists them)
        base, runs = base_models(source, judge_label), _runs_elsewhere(source, df, dest)
    else:
        base, runs = [], run_paths or []
    result: dict[str, Any] = {  # the Analysis record's fields, as plain data until validated below
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
        "base_model": base,
        "run_dirs": _run_dirs(runs),
    }
    result["fits"] = loss_fits(df, plain, windows=windows, n_boot=n_boot, seed=seed)
    result["not_estimable"] = not_estimable
    result["matched_loss"] = matched_loss(df, base, n_boot=n_boot, seed=seed, level=spec_level(source))
    result["spectral_fits"] = spectral_fits(final)
    result["claims"] = claims.evaluate_claims(result, claim_inputs(df, result, n_boot, seed), stability.check)
    for row in result["claims"]:  # a verdict is the judge's as much as the sweep's
        row["judge"] = result["judge"]["name"]
    analysis = Analysis.model_validate(_jsonable(result))
    if judge_label is not None:
        write_analysis(dest.analysis_for(analysis.judge_label() or judge_label), analysis)
        return analysis
    write_analysis(dest.analysis, analysis)
    write_record(dest.references, reference_table(final, analysis, source))
    return analysis


def _results_of(
    source: str | Path | Sequence[str | Path], out: str | Path | None, judge_label: str | None = None
) -> tuple[Path | str, pd.DataFrame, list[Path] | None]:
    """(what was analysed, its results table, the run directories or None for a sweep). Run
    directories (one or several) get their table built and written to `out` (the first judge's
    table; `judge_label` then reads the re-judged outcomes beside it)."""
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if len(paths) == 1 and not RunDir(paths[0]).is_run():
        return paths[0], _sweep_results(paths[0], out, judge_label), None
    if out is None:
        raise DataError(f"analyze: give --out DIR for the analysis of run directories ({', '.join(map(str, paths))})")
    for path in paths:
        if not RunDir(path).is_run():
            raise DataError(f"{path}: neither a sweep directory nor a run directory (no manifest)")
    # here, not at the top (and below): the table's builder imports torch through the spectra
    # reader (seconds), which the analysis of a sweep in place never needs
    from evilspectra.results import results_from_runs, write_results

    write_results(results_from_runs(paths), Path(out))
    return ", ".join(str(p) for p in paths), load_results(Path(out), judge_label, _run_dirs(paths)), paths


def _sweep_results(sweep: Path, out: str | Path | None, judge_label: str | None) -> pd.DataFrame:
    """A sweep's results table (of the re-judgement `judge_label`, if given); with `out` elsewhere,
    the first judge's table and the spec copied there, where `report OUT` reads them."""
    df = load_results(sweep)
    if out is not None and Path(out).resolve() != sweep.resolve():
        from evilspectra.results import write_results  # here: torch, as in _results_of

        write_results(df, Path(out))
        if SweepDir(sweep).spec.is_file():
            atomic_write_text(SweepDir(out).spec, SweepDir(sweep).spec.read_text())
    if judge_label is None:
        return df
    # a directory written by `analyze RUN... --out DIR` finds its runs through its analysis
    return load_results(sweep, judge_label, _hand_runs(SweepDir(sweep)))


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
        if manifest is not None and manifest.run_id is not None:  # no id, no results row to find it by
            out[manifest.run_id] = str(Path(path).resolve())
    return out


def _hand_runs(sweep: SweepDir) -> dict[str, str] | None:
    """The runs of a directory written by `analyze RUN... --out DIR`, as its first analysis found
    them (None for a sweep's own runs, or before the first analysis)."""
    first = read_analysis(sweep.analysis)
    return (first.run_dirs or None) if first is not None else None


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
        runs = _hand_runs(sweep)
        inputs += [again.summary for _, _, again in paired_evals(Path(sweep_dir), judge_label, runs)]
    return all(not p.is_file() or p.stat().st_mtime <= path.stat().st_mtime for p in inputs)


def load_analysis(sweep_dir: str | Path, judge_label: str | None = None) -> Analysis:
    """The directory's analysis (of the first judgement, or of the re-judgement `judge_label`),
    (re)computed first when absent, torn or older than its results table."""
    current = (
        read_analysis(analysis_path(sweep_dir, judge_label)) if analysis_is_current(sweep_dir, judge_label) else None
    )
    return current if current is not None else analyze(sweep_dir, judge_label=judge_label)


def spec_level(source: Path | str) -> float | None:
    """The matched training loss fixed in the sweep spec before the data (`analysis.matched_loss`)."""
    spec = SweepDir(source).read_spec() if isinstance(source, Path) else {}
    level = (spec.get("analysis") or {}).get("matched_loss")
    return float(level) if level is not None else None


def claim_inputs(df: pd.DataFrame, result: dict, n_boot: int, seed: int) -> claim_data.ClaimInputs:
    """The per-seed tables every claim and its stability check read (evilspectra.claim_inputs)."""
    runs = pd.DataFrame(result["matched_loss"].get("runs") or [])
    pairs = pd.DataFrame(result["regulariser"]["pairs"])
    return claim_data.build(df, checkpoints(df), runs, pairs, result["matched_loss"].get("level_loss"), n_boot, seed)


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
