"""The training schedule: how many optimiser steps a run takes and at which it saves a checkpoint.

Shared by `train`, the HF Trainer integration (integrations/hf_trainer) and the sweep's cost
estimate, none of which needs the others: it imports nothing heavier than the config.
"""

from __future__ import annotations

import math

from evilspectra.config import RunConfig


def checkpoint_steps(schedule: str | int | list[int], total: int) -> list[int]:
    """Steps at which to save a checkpoint. `log`: 10, 20, 30, 40, 53, 71, ... (x1.33, at least +10)."""
    if schedule == "none":
        return []
    if isinstance(schedule, list):
        return sorted({s for s in schedule if 1 <= s <= total})
    if isinstance(schedule, int):
        return list(range(schedule, total + 1, schedule))
    steps, s = [], 10
    while s < total:
        steps.append(s)
        s = max(s + 10, round(s * 4 / 3))
    return steps


def total_steps(cfg: RunConfig, n_rows: int) -> int:
    """Optimiser steps of a run on `n_rows` training rows: max_steps, else epochs over the rows."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * n_rows / per_step))
