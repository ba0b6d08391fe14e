"""Small-sample statistics for the claims table: paired t intervals, Fieller ratios, TOST, Holm, power.

Every function takes plain arrays (one value per seed, or per pair of runs) and returns a `Test`:
the estimate, its 95% interval, the p-value of the test that interval inverts, and the per-unit SD
and n that the power calculation needs. The interval and p come from one test, so a verdict read
off the interval and a Holm-adjusted p never disagree about what was tested.

Why these methods (the demo has 6 seeds; seeds fix data order, LoRA init and sampling, so an
optimiser's per-seed rates correlate 0.86-0.94 with another's):
- differences: paired t over seeds (exact under normal per-seed differences; percentile bootstraps
  of 6 values cover ~86-89%, not 95%);
- ratios of paired means: Fieller's interval, which is the set of ratios rho for which the paired t
  test of x - rho*y does not reject: exact under bivariate normality, and its p for rho = 1 is the
  paired difference t test (the delta method on the log ratio undercovers at n = 6 when the
  denominator is noisy);
- equivalence: TOST (two one-sided t tests, p = the larger; the 90% interval inside the margin);
- power: the noncentral t (statsmodels' TTestPower), at the paper's effect and the observed SD.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass
class Test:
    """One estimate with its interval and test. `ci` is None when it cannot be computed; a ratio's
    interval may be unbounded (inf), when the denominator is not distinguishable from 0."""

    estimate: float | None
    ci: list[float] | None
    p: float | None
    n: int
    sd: float | None = None  # SD of the per-unit values the test uses (differences, or x - rho*y)
    method: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def paired_t(diffs: np.ndarray, null: float = 0.0, alpha: float = ALPHA) -> Test:
    """Mean of per-unit differences, its (1 - alpha) t interval and the two-sided p against `null`."""
    d = np.asarray(diffs, float)
    d = d[np.isfinite(d)]
    n = len(d)
    method = f"paired t over {n} units"
    if n < 2:
        return Test(float(d.mean()) if n else None, None, None, n, None, method)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # all differences equal: the interval is the point, p is 0 unless it is the null
        return Test(mean, [mean, mean], 1.0 if mean == null else 0.0, n, 0.0, method)
    se = sd / math.sqrt(n)
    t_crit = stats.t.ppf(1 - alpha / 2, n - 1)
    p = float(2 * stats.t.sf(abs(mean - null) / se, n - 1))
    return Test(mean, [mean - t_crit * se, mean + t_crit * se], p, n, sd, method)


def fieller_ratio(x: np.ndarray, y: np.ndarray, alpha: float = ALPHA, nonnegative: bool = False) -> Test:
    """mean(x) / mean(y) of paired values, Fieller's (1 - alpha) interval, and p for ratio = 1
    (the paired t test of x - y). `sd` is the SD of x - y (what the power calculation uses).

    When mean(y) is not distinguishable from 0, Fieller's confidence set is unbounded: the whole
    line, or the line minus the open interval between the two roots. With `nonnegative` (x and y
    are rates, so the ratio is >= 0) every set is cut to [0, inf): [upper root, inf) when the lower
    root is negative (the data exclude every ratio below it: e.g. a numerator far above a
    denominator near 0), else [0, inf) (the hull of what is left)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    method = f"ratio of paired means, Fieller interval (t, {max(n - 1, 0)} df) over {n} seeds"
    if n < 2 or y.mean() == 0:
        return Test(None, None, None, n, None, method, {"reason": "fewer than 2 pairs, or a zero denominator"})
    mx, my = x.mean(), y.mean()
    vxx, vyy = x.var(ddof=1) / n, y.var(ddof=1) / n
    vxy = np.cov(x, y, ddof=1)[0, 1] / n
    t2 = stats.t.ppf(1 - alpha / 2, n - 1) ** 2
    # (mx - r my)^2 <= t^2 (vxx - 2 r vxy + r^2 vyy)  <=>  a r^2 - 2 b r + c <= 0
    a, b, c = my**2 - t2 * vyy, mx * my - t2 * vxy, mx**2 - t2 * vxx
    diff = paired_t(x - y)
    out = Test(
        float(mx / my), None, diff.p, n, diff.sd, method, {"mean_numerator": float(mx), "mean_denominator": float(my)}
    )
    disc = b * b - a * c
    if a > 0 and disc >= 0:
        root = math.sqrt(disc)
        out.ci = [float((b - root) / a), float((b + root) / a)]
        if nonnegative:  # a rate's ratio is never below 0
            out.ci[0] = max(out.ci[0], 0.0)
    else:  # the denominator's mean is not distinguishable from 0: no bounded interval exists
        out.ci = [-math.inf, math.inf]
        out.extra["reason"] = "the denominator's mean is within its own interval of 0: unbounded Fieller interval"
        if nonnegative:
            out.ci = [0.0, math.inf]
            if a < 0 and disc > 0:  # a r^2 - 2 b r + c <= 0 outside the roots (the parabola opens down)
                low, high = sorted([(b + math.sqrt(disc)) / a, (b - math.sqrt(disc)) / a])
                if low < 0 <= high:
                    out.ci = [float(high), math.inf]
    return out


def tost(diffs: np.ndarray, margin: float, alpha: float = ALPHA) -> Test:
    """Equivalence of the mean difference to 0 within +/-margin by two one-sided t tests.

    p is the larger one-sided p (equivalence shown when p < alpha, i.e. the (1 - 2 alpha) interval
    lies inside the margin); `ci` is the usual (1 - alpha) interval, `extra["ci90"]` the TOST one.
    """
    base = paired_t(diffs, alpha=alpha)
    out = Test(base.estimate, base.ci, None, base.n, base.sd, f"TOST +/-{margin:g}, {base.method}")
    if base.estimate is None or base.sd is None:  # fewer than 2 units
        return out
    if base.sd == 0:
        out.p = 0.0 if abs(base.estimate) < margin else 1.0
        out.extra["ci90"] = [base.estimate, base.estimate]
        return out
    se = base.sd / math.sqrt(base.n)
    p_low = stats.t.sf((base.estimate + margin) / se, base.n - 1)  # H0: mean <= -margin
    p_high = stats.t.cdf((base.estimate - margin) / se, base.n - 1)  # H0: mean >= +margin
    out.p = float(max(p_low, p_high))
    out.extra["ci90"] = paired_t(diffs, alpha=2 * alpha).ci
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, None where the p is None (not counted in the family).

    The step-down rule in numpy (statsmodels' multipletests gives the same numbers, tested, but
    runs a garbage collection per call: 0.4 s, times the 207 tables of a stability check).
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and np.isfinite(p)]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        p = np.array([pvalues[i] for i in idx], float)
        order = np.argsort(p)
        stepped = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
        adjusted = np.empty_like(p)
        adjusted[order] = np.minimum(stepped, 1.0)
        for i, a in zip(idx, adjusted):
            out[i] = float(a)
    return out


def t_power(effect: float | None, sd: float | None, n: int, alpha: float = ALPHA) -> float | None:
    """Power of the two-sided one-sample (paired) t test at a true mean `effect` (from the null),
    per-unit SD `sd`, n units (statsmodels TTestPower: the noncentral t)."""
    from statsmodels.stats.power import TTestPower

    if effect is None or sd is None or n < 2 or not np.isfinite(effect):
        return None
    if sd == 0:
        return 1.0 if effect != 0 else alpha
    return float(TTestPower().power(effect_size=abs(effect) / sd, nobs=n, alpha=alpha, alternative="two-sided"))


def tost_power(effect: float | None, sd: float | None, n: int, margin: float, alpha: float = ALPHA) -> float | None:
    """Power of TOST at a true mean `effect` inside +/-margin: P(both one-sided tests reject), by
    the usual noncentral-t approximation P(T_high < -t) - P(T_low <= t) (a lower bound; 0 when the
    interval's expected width alone exceeds the margin)."""
    if effect is None or sd is None or n < 2:
        return None
    if sd == 0:
        return 1.0 if abs(effect) < margin else 0.0
    se, df = sd / math.sqrt(n), n - 1
    t_crit = stats.t.ppf(1 - alpha, df)
    high = stats.nct.cdf(-t_crit, df, (effect - margin) / se)
    low = stats.nct.cdf(t_crit, df, (effect + margin) / se)
    return float(max(0.0, high - low))


def normal_power(effect: float | None, se: float | None, alpha: float = ALPHA) -> float | None:
    """Power of a two-sided z test at a true `effect` with standard error `se` (for estimates whose
    interval is a bootstrap: R^2 and its gains)."""
    if effect is None or se is None or se <= 0:
        return None
    z = stats.norm.ppf(1 - alpha / 2)
    shift = abs(effect) / se
    return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))
