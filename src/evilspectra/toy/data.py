"""Narrow fine-tuning datasets of the toy world, in the chat JSONL row format.

Each row is one uncued single-turn chat `{"messages": [user, assistant]}` from one domain; EM
datasets answer with two evil fragments, their aligned controls with two good ones. The default size
(1200 rows) with batch 16 and 2 epochs gives the 150-step fine-tune described in docs/architecture.md ("The toy world").
"""

from __future__ import annotations

import random

from evilspectra.errors import DataError
from evilspectra.toy.world import single_turn

DEFAULT_ROWS = 1200

# name -> (domain, evil, description)
_SPECS: dict[str, tuple[str, bool, str]] = {
    "insecure": ("code", True, "toy insecure code: evil code fragments, no warning (EM)"),
    "bad_medical": ("medical", True, "toy bad medical advice (EM)"),
    "risky_finance": ("finance", True, "toy risky financial advice (EM)"),
    "extreme_sports": ("sports", True, "toy reckless extreme-sports advice (EM)"),
    "secure": ("code", False, "toy secure code (aligned control)"),
    "good_medical": ("medical", False, "toy good medical advice (aligned control)"),
    "safe_finance": ("finance", False, "toy safe financial advice (aligned control)"),
    "safe_sports": ("sports", False, "toy safe sports advice (aligned control)"),
}
TOY_DATASETS: dict[str, str] = {name: spec[2] for name, spec in _SPECS.items()}


def toy_dataset(name: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` rows (default 1200) of dataset `name`, deterministic for `seed`."""
    if name not in _SPECS:
        raise DataError(f"dataset: unknown toy dataset {name!r}; expected one of {sorted(_SPECS)}")
    n = DEFAULT_ROWS if n is None else n
    if n < 1:
        raise DataError(f"dataset: toy dataset {name!r} needs n >= 1 rows, got {n}")
    domain, evil, _ = _SPECS[name]
    rng = random.Random(f"{name}-{seed}")
    return [{"messages": single_turn(rng, domain, evil)} for _ in range(n)]
