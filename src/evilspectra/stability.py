"""Does a claim's verdict survive the loss of one seed, or another draw of seeds?

For every row of the claims table, computed with it (evilspectra.claims.evaluate_claims):

- leave-one-seed-out: the whole table recomputed without each seed in turn (Holm included), the
  verdict each time;
- resampling: the whole table recomputed on RESAMPLES draws of the seeds with replacement (a seed
  drawn twice counts as two units), and the share of draws giving the same verdict.

A verdict is fragile when any leave-one-seed-out verdict differs, or when more than
claims.FRAGILE_SHARE of the resamples give another one. The recomputations use paired t tests as
the full table does; only the bootstrap rows (R^2 and its gains) use INNER_BOOT draws instead of
the full table's, to keep the check to seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evilspectra.claim_inputs import ClaimInputs
from evilspectra.claims import FRAGILE_SHARE, table_verdicts

RESAMPLES = 200
INNER_BOOT = 200


def check(inputs: ClaimInputs, rows: list, verdicts: dict[str, str], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """id -> {leave_one_seed_out: {seed: verdict}, resample_agreement, n_resamples, fragile, why}."""
    seeds = inputs.seeds
    n = len(seeds)
    if n < 3:  # leaving one of two seeds out leaves no interval: nothing to compare
        unchecked: dict[str, Any] = {
            "leave_one_seed_out": {},
            "resample_agreement": None,
            "n_resamples": 0,
            "fragile": False,
        }
        return {key: unchecked | {"why": f"not checked: {n} seed(s), 3 needed"} for key in verdicts}
    loo = {
        _label(s): table_verdicts(inputs.with_counts(np.arange(n) != i, INNER_BOOT), rows) for i, s in enumerate(seeds)
    }
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=resamples)  # seeds drawn with replacement
    draws = [table_verdicts(inputs.with_counts(c, INNER_BOOT), rows) for c in counts]
    out = {}
    for key, full in verdicts.items():
        left = {s: v[key] for s, v in loo.items()}
        agree = float(np.mean([d[key] == full for d in draws])) if draws else None
        changed = sorted({v for v in left.values() if v != full})
        why = []
        if changed:
            seeds_changed = [s for s, v in left.items() if v != full]
            why.append(f"without seed {', '.join(seeds_changed)} the verdict is {' / '.join(changed)}")
        if agree is not None and 1 - agree > FRAGILE_SHARE:
            why.append(f"only {agree:.0%} of {resamples} seed resamples agree")
        out[key] = {
            "leave_one_seed_out": left,
            "resample_agreement": agree,
            "n_resamples": resamples,
            "fragile": bool(why),
            "why": "; ".join(why) if why else "stable",
        }
    return out


def _label(seed: float) -> str:
    return str(int(seed)) if float(seed).is_integer() else str(seed)
