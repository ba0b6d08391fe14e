"""Alignment at a matched training loss: each run's trajectory interpolated at one common loss, per
optimiser with a bootstrap over runs, their differences and spread.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from evilspectra.analysis_table import checkpoints, num


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
    points = checkpoints(df).sort_values(["run_id", "step"])
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
                    "seed": num(g["seed"].iloc[0]) if "seed" in g else None,
                    "mean_aligned": value[0],
                    "misalignment_rate": value[1],
                    "n_answers": value[2],
                }
            )
    columns = ["optimizer", "run_id", "seed", "mean_aligned", "misalignment_rate", "n_answers"]
    table = pd.DataFrame(runs, columns=columns)
    boots = {}
    for i, (name, g) in enumerate(table.groupby("optimizer")):
        row: dict[str, Any] = {"optimizer": name, "n_runs": len(g), "n_runs_total": int(lowest.loc[name].size)}
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
    assert isinstance(lowest.index, pd.MultiIndex)  # grouped by (optimizer, run_id)
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
        # with unbounded draws take order statistics: interpolating between two infs gives NaN
        method: Literal["linear", "inverted_cdf"] = "linear" if np.isfinite(ratio).all() else "inverted_cdf"
        out["ci"] = [float(x) for x in np.percentile(ratio, [2.5, 97.5], method=method)]
    return out
