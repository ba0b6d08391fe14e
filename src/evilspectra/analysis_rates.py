"""Misalignment rates pooled over runs: one row per optimiser (and regulariser weight) of final
checkpoints, with a Wilson interval on the answers and a bootstrap over runs; the spread across
optimisers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from evilspectra.analysis_table import mean_of
from evilspectra.artefacts.records import RESULT_SHARES

OUTCOME_SHARES = RESULT_SHARES


# ----------------------------------------------------------------------------------------- pooled


def pooled_rates(rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0, **keys: Any) -> dict:
    """Pool the answers of some final checkpoints (one per run): rate, CIs, shares and counts.

    The shares are of all answers (n_answers), the rate and mean alignment of the denominator
    (coherent scored answers, plus coherent CODE answers under the `zero` convention).
    """
    from statsmodels.stats.proportion import proportion_confint  # here: statsmodels takes seconds to import

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
        "mean_final_loss": mean_of(rows["final_loss"]),
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
