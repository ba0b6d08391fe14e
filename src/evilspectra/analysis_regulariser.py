"""The spectral regulariser's effect: paired differences of runs identical but for its weight."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from evilspectra.analysis_table import num
from evilspectra.artefacts.records import config_columns

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
            "seed": num(row["seed"]) if "seed" in row else None,
            "spectral_reg": float(row["spectral_reg"]),
            "run_id": row["run_id"],
            "baseline_run_id": ref["run_id"],
        }
        for col, name in DELTAS.items():
            a, b = row[col], ref[col]
            pair[f"{col}_off"], pair[f"{col}_on"] = num(b), num(a)
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
            assert isinstance(weight, float)  # each pair's spectral_reg is a float (above): a float64 column
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


def _delta_means(pairs: pd.DataFrame) -> dict[str, float | list[float] | None]:
    """Mean of each paired difference with a 95% t interval over the pairs (`<delta>_ci`)."""
    out: dict[str, float | list[float] | None] = {}  # means and counts; intervals
    for name in DELTAS.values():
        values = pairs[name].dropna()
        out[name], out[f"n_{name}"] = (float(values.mean()) if len(values) else None), len(values)
        out[f"{name}_ci"] = _t_interval(values.to_numpy(float))
    out["n"] = len(pairs)
    return out


def _t_interval(values: np.ndarray) -> list[float] | None:
    """95% t interval of the mean (None below two values)."""
    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return [float(values[0]), float(values[0])]
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return [float(lo), float(hi)]
