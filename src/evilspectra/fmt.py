"""Number formatting shared by the renderers (audit, card, CLI tables): one home for each format."""

from __future__ import annotations

from collections.abc import Sequence


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage (0.0531 -> '5.3%'); '-' for None."""
    return "-" if value is None else f"{value:.{digits}%}"


def rate_ci(rate: float | None, ci: Sequence[float | None] | None) -> str:
    """A rate with its interval, '5.3% [4.1%, 6.8%]'; '-' when there is no rate."""
    if rate is None:
        return "-"
    lo, hi = ci if ci is not None else (None, None)
    return f"{pct(rate)} [{pct(lo)}, {pct(hi)}]"
