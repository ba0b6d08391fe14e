"""Alignment along training: each optimiser's checkpoints in step order, and where (in windows of
training progress) the optimiser starts to explain alignment beyond the loss (`overtake`).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd

from evilspectra.analysis_fits import regressions
from evilspectra.analysis_table import checkpoints, mean_of


def trajectories(df: pd.DataFrame) -> dict[str, list[dict]]:
    """optimiser -> [{step, progress, loss, mean_aligned, misalignment_rate, n_runs}] by step.

    loss is the mean over runs of the smoothed training loss at that step; alignment and rate are
    pooled over the runs' answers at that checkpoint (weights: n_denominator).
    """
    out: dict[str, list[dict]] = {}
    for name, g in checkpoints(df).groupby("optimizer"):
        points: list[dict[str, int | float | None]] = []
        for step, s in g.groupby("step"):
            assert isinstance(step, numbers.Real)  # checkpoints' steps: a numeric column without NaN
            den = s["n_denominator"].fillna(0)
            points.append(
                {
                    "step": int(step),
                    "progress": float(s["progress"].mean()),
                    "loss": mean_of(s["loss_smoothed"]),
                    "mean_aligned": float((s["mean_aligned"].fillna(0) * den).sum() / den.sum()) if den.sum() else None,
                    "misalignment_rate": float(s["n_misaligned"].fillna(0).sum() / den.sum()) if den.sum() else None,
                    "n_runs": int(s["run_id"].nunique()),
                }
            )
        out[str(name)] = points  # optimiser names: the optimizer column's strings
    return out


def overtake(df: pd.DataFrame, windows: int = 2, margin: float = 0.05) -> dict:
    """Both regressions within equal-width windows of training progress (0, 1/w], ..., ((w-1)/w, 1].

    A window where the stratified model's adjusted R^2 exceeds the loss-only one by more than
    `margin` is where the optimiser explains alignment beyond what the loss explains; `first_window`
    is the first such window (None when none is).
    """
    rows = checkpoints(df)
    edges = np.linspace(0, 1, windows + 1)
    result: dict[str, Any] = {"windows": [], "margin": margin, "first_window": None}
    for i in range(windows):
        lo, hi = edges[i], edges[i + 1]
        inside = rows[(rows["progress"] > lo) & (rows["progress"] <= hi)] if i else rows[rows["progress"] <= hi]
        reg: dict[str, Any] = (
            regressions(inside)
            if len(inside)
            else {
                "loss_only": {"adj_r2": None, "reason": "no checkpoints"},
                "stratified": {"adj_r2": None, "reason": "no checkpoints"},
                "adj_r2_gain": None,
            }
        )
        window: dict[str, Any] = {
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
