"""The results table as the analysis reads it: every column present, one copy of each run, rates
only where enough answers were scorable; the checkpoints of the trajectories; the definition of
`misaligned` and the judge the evaluations recorded; number helpers the analysis modules share.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evilspectra import claims
from evilspectra.artefacts.paths import SweepDir
from evilspectra.artefacts.records import NUMERIC_OUTCOMES, ReferenceDefinition
from evilspectra.errors import DataError
from evilspectra.evaluate.rejudge import plain_label, results_for

# -------------------------------------------------------------------------------------- the table


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
            "spectral_reg": num(r["spectral_reg"]),
            "seed": num(r.get("seed")),
            "checkpoint": r["checkpoint"],
            "n_scored": int(r["n_denominator"]) if pd.notna(r["n_denominator"]) else 0,
            "n_answers": int(r["n_answers"]),
            "share_CODE": num(r.get("share_CODE")),
            "share_incoherent": num(r.get("share_incoherent")),
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


def checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """Evaluated checkpoints of unregularised finished runs, with progress = step / the run's final step."""
    rows = df[(df["status"] == "done") & df["checkpoint"].notna() & (df["spectral_reg"].fillna(0) == 0)].copy()
    rows = rows.dropna(subset=["step"])
    total = rows["step"].where(rows["checkpoint"] == "final").groupby(rows["run_id"]).transform("max")
    rows["progress"] = rows["step"] / total.fillna(rows.groupby("run_id")["step"].transform("max"))
    return rows[rows["progress"].notna() & np.isfinite(rows["progress"])]


# ------------------------------------------------------------------ what the evaluations recorded


def definitions(df: pd.DataFrame) -> list[dict]:
    """The distinct (aligned threshold, coherent threshold, CODE convention, judge) of the evaluations
    in the table, as recorded in their summaries, with how many rows used each."""
    cols = ["aligned_threshold", "coherent_threshold", "code_convention", "judge"]
    rows = df.dropna(subset=["n_answers"]) if "n_answers" in df else df.iloc[0:0]
    if rows.empty or not set(cols) <= set(rows.columns) or rows[cols[0]].isna().all():
        return []
    counts = rows[cols].astype(object).where(rows[cols].notna(), None).value_counts(dropna=False)
    out = []
    for key, n in counts.items():
        assert isinstance(key, tuple)  # a DataFrame's value_counts: one tuple of column values per key
        out.append(dict(zip(cols, key), n_rows=int(n)))
    return out


def definition_text(definitions: Sequence[ReferenceDefinition]) -> str:
    """What `misaligned` meant in these evaluations, from the thresholds their summaries recorded
    (an analysis' `definitions`)."""
    if not definitions:
        return "No evaluation summary recorded its thresholds."
    parts = [
        f"aligned < {d.aligned_threshold:g} and coherent > {d.coherent_threshold:g}, "
        f"CODE answers: {d.code_convention}, judge {d.judge} ({d.n_rows} evaluations)"
        for d in definitions
    ]
    lead = "An answer is misaligned when the judge rates it " if len(parts) == 1 else "Mixed definitions: "
    return lead + "; ".join(parts) + "."


def judge_record(df: pd.DataFrame, judge_label: str | None) -> dict:
    """Which judge scored the evaluations of a results table: {"label": the `rejudge --label`, None
    for the first judgement; "name": the judge(s) their summaries record, joined by " + "}."""
    judged = df.loc[df["n_answers"].notna(), "judge"] if "judge" in df else pd.Series(dtype=object)
    names = sorted(set(judged.dropna().astype(str)))
    return {"label": plain_label(judge_label) if judge_label else None, "name": " + ".join(names) or None}


# ---------------------------------------------------------------------------------------- numbers


def mean_of(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def num(x: Any) -> float | None:
    return float(x) if pd.notna(x) else None
