"""The study's claims (its headline results, docs/architecture.md), each checked against a sweep's analysis by a fixed rule.

A claim is a statement about one quantity that the analysis estimates with a 95% interval. Its
rule is one of three, and the verdict is computed from the interval alone, never by hand:

    greater than t   reproduced: the interval lies above t;  not reproduced: it lies below t
    less than t      reproduced: the interval lies below t;  not reproduced: it lies above t
    within [a, b]    reproduced: the interval lies inside;   not reproduced: it lies outside
    anything else (interval straddles the bound, or no interval): inconclusive

Magnitude claims (the 7x spread, R^2 of 0.74 and 0.94) are "within" a band around the paper's
figure: a factor of 2 for the ratio, +/- 0.2 for R^2 (BANDS). Ordering and sign claims compare
with 0. "Adam ~ AdamW" is within +/- EQUIVALENCE_MARGIN of misalignment rate.
"""

from __future__ import annotations

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
EQUIVALENCE_MARGIN = 0.05  # "Adam ~ AdamW": rates within 5 percentage points
BANDS = {"ratio_factor": 2.0, "r2": 0.2}
REG_WEIGHT = 1.0  # the regulariser claims use pairs at this weight (the demo's paired weight)


def verdict(rule: dict, ci: list[float] | None) -> tuple[str, str]:
    """(verdict, reason) of a rule {"kind": "greater"|"less"|"within", "bound": t | [a, b]} given a 95% CI."""
    if ci is None or any(x is None for x in ci):
        return INCONCLUSIVE, "no interval: too few runs or pairs"
    lo, hi = ci
    kind, bound = rule["kind"], rule["bound"]
    if kind == "greater":
        if lo > bound:
            return REPRODUCED, f"interval above {bound:g}"
        if hi < bound:
            return NOT_REPRODUCED, f"interval below {bound:g}"
        return INCONCLUSIVE, f"interval contains {bound:g}"
    if kind == "less":
        if hi < bound:
            return REPRODUCED, f"interval below {bound:g}"
        if lo > bound:
            return NOT_REPRODUCED, f"interval above {bound:g}"
        return INCONCLUSIVE, f"interval contains {bound:g}"
    if kind == "within":
        a, b = bound
        if a <= lo and hi <= b:
            return REPRODUCED, f"interval inside [{a:g}, {b:g}]"
        if hi < a or lo > b:
            return NOT_REPRODUCED, f"interval outside [{a:g}, {b:g}]"
        return INCONCLUSIVE, f"interval overlaps the edge of [{a:g}, {b:g}]"
    raise ValueError(f"unknown rule kind {kind!r}")


def claim(claim_id: str, text: str, paper: str, estimate: float | None, ci: list[float] | None, rule: dict, how: str):
    """One row of the claims table, its verdict computed from `ci` by `rule`."""
    result, reason = verdict(rule, ci)
    return {
        "id": claim_id,
        "claim": text,
        "paper": paper,
        "estimate": estimate,
        "ci": ci,
        "rule": rule,
        "verdict": result,
        "reason": reason,
        "measured_as": how,
    }


def evaluate_claims(analysis: dict) -> list[dict]:
    """The claims table of an analysis dict (evilspectra.analysis.analyze builds its inputs)."""
    return [*_ordering(analysis), *_loss(analysis), *_spectra(analysis), *_regulariser(analysis)]


def _ordering(a: dict) -> list[dict]:
    matched = a.get("matched_loss") or {}
    level = matched.get("level_loss")
    how = f"misalignment rate interpolated at training loss {level:.3f}, runs bootstrapped" if level else "no level"
    diffs = {(d["a"], d["b"]): d for d in matched.get("differences", [])}

    def diff(low: str, high: str) -> tuple[float | None, list[float] | None]:
        """rate(high) - rate(low) with its interval, whichever order the analysis stored the pair in."""
        if (low, high) in diffs:
            d = diffs[(low, high)]
            return d["rate_b_minus_a"], d["ci"]
        if (high, low) in diffs:
            d = diffs[(high, low)]
            neg = None if d["rate_b_minus_a"] is None else -d["rate_b_minus_a"]
            return neg, None if d["ci"] is None else [-d["ci"][1], -d["ci"][0]]
        return None, None

    rows = []
    for low, high, paper in (
        ("muon", "adam", "Muon 5.3% < Adam 13.9%"),
        ("muon", "adamw", "Muon 5.3% < AdamW 13.8%"),
        ("adam", "lion", "Adam 13.9% < Lion 37%"),
        ("adamw", "lion", "AdamW 13.8% < Lion 37%"),
    ):
        est, ci = diff(low, high)
        text = f"{_name(low)} misaligns less than {_name(high)} (rate difference {high} - {low} > 0)"
        rows.append(claim(f"order_{low}_{high}", text, paper, est, ci, {"kind": "greater", "bound": 0.0}, how))
    est, ci = diff("adam", "adamw")
    m = EQUIVALENCE_MARGIN
    rows.append(
        claim(
            "adam_equals_adamw",
            f"Adam and AdamW misalign alike (difference within +/-{m:g})",
            "Adam 13.9% ~ AdamW 13.8%",
            est,
            ci,
            {"kind": "within", "bound": [-m, m]},
            how,
        )
    )
    spread = matched.get("spread") or {}
    f = BANDS["ratio_factor"]
    rows.append(
        claim(
            "spread",
            f"the most misaligning optimiser misaligns about 7x as often as the least (within a factor {f:g})",
            "Lion / Muon = 7x",
            spread.get("ratio"),
            spread.get("ci"),
            {"kind": "within", "bound": [7 / f, 7 * f]},
            how + (f"; {spread.get('max_optimizer')} / {spread.get('min_optimizer')}" if spread.get("ratio") else ""),
        )
    )
    return rows


def _loss(a: dict) -> list[dict]:
    reg, fits = a["regression"], a.get("fits") or {}
    boot, late = fits.get("bootstrap_final") or {}, fits.get("bootstrap_late_window") or {}
    band = BANDS["r2"]
    how = "unregularised final checkpoints; 95% bootstrap over runs"
    return [
        claim(
            "loss_r2",
            f"ln(final training loss) explains about 74% of alignment variance (R^2 within +/-{band:g})",
            "R^2 = 0.74",
            reg["loss_only"].get("r2"),
            boot.get("r2_loss"),
            {"kind": "within", "bound": [0.74 - band, min(1.0, 0.74 + band)]},
            how,
        ),
        claim(
            "stratified_r2",
            f"stratified by optimiser, adjusted R^2 is about 0.94 (within +/-{band:g})",
            "adjusted R^2 = 0.94",
            reg["stratified"].get("adj_r2"),
            boot.get("adj_r2_stratified"),
            {"kind": "within", "bound": [0.94 - band, 1.0]},
            how,
        ),
        claim(
            "optimizer_beyond_loss",
            "the optimiser explains alignment beyond the loss (adjusted R^2 gain > 0)",
            "0.94 - 0.74 = +0.20",
            reg.get("adj_r2_gain"),
            boot.get("gain"),
            {"kind": "greater", "bound": 0.0},
            how,
        ),
        claim(
            "optimizer_late",
            "late in training the optimiser explains alignment beyond the loss (gain > 0 in the last window)",
            "optimiser matters more late in training",
            (a["overtake"]["windows"][-1]["gain"] if a["overtake"]["windows"] else None),
            late.get("gain"),
            {"kind": "greater", "bound": 0.0},
            f"checkpoints past {late.get('progress_above', 0):.2f} of training; 95% bootstrap over runs",
        ),
    ]


def _spectra(a: dict) -> list[dict]:
    fits = a.get("spectral_fits") or {}
    rows = []
    for key, label in (("pooled", "across runs"), ("within_optimizer", "within an optimiser at equal loss")):
        fit = fits.get(key) or {}
        rows.append(
            claim(
                f"flatter_spectra_{key}",
                f"flatter spectra go with better alignment {label} (slope of alignment on Frobenius/nuclear < 0)",
                "flatter spectra, better alignment",
                fit.get("coef"),
                fit.get("ci"),
                {"kind": "less", "bound": 0.0},
                f"{fit.get('formula')}, all final checkpoints, run-clustered 95% CI",
            )
        )
    return rows


def _regulariser(a: dict) -> list[dict]:
    by = {r["optimizer"]: r for r in a["regulariser"]["by_optimizer"] if r["spectral_reg"] == REG_WEIGHT}
    how = f"paired runs (weight {REG_WEIGHT:g} minus 0, same config), 95% t interval over pairs"
    rows = []
    for name, paper, kind in (("adam", "+6.6", "greater"), ("lion", "+8.0", "greater"), ("sgd", "-3.5", "less")):
        r = by.get(name, {})
        sign = "raises" if kind == "greater" else "lowers"
        rows.append(
            claim(
                f"regulariser_{name}",
                f"the regulariser {sign} {_name(name)}'s mean alignment",
                f"{paper} points",
                r.get("delta_mean_aligned"),
                r.get("delta_mean_aligned_ci"),
                {"kind": kind, "bound": 0.0},
                how,
            )
        )
    muon = by.get("muon", {})
    rows.append(
        claim(
            "regulariser_muon",
            "the regulariser barely changes Muon's mean alignment (within +/-3 points)",
            "+2.1 points",
            muon.get("delta_mean_aligned"),
            muon.get("delta_mean_aligned_ci"),
            {"kind": "within", "bound": [-3.0, 3.0]},
            how,
        )
    )
    overall = [r for r in a["regulariser"]["by_optimizer"] if r["spectral_reg"] == REG_WEIGHT]
    loss = [r.get("delta_final_loss_ci") for r in overall if r.get("delta_final_loss_ci")]
    ci = [min(c[0] for c in loss), max(c[1] for c in loss)] if loss else None
    rows.append(
        claim(
            "regulariser_loss_cost",
            "the regulariser costs little training loss (every optimiser within +/-0.02 nats)",
            "+0.013 / +0.003 nats",
            max(
                (r["delta_final_loss"] for r in overall if r.get("delta_final_loss") is not None), default=None, key=abs
            ),
            ci,
            {"kind": "within", "bound": [-0.02, 0.02]},
            how + "; interval: the hull of the per-optimiser intervals",
        )
    )
    return rows


def _name(optimizer: str) -> str:
    return {"adam": "Adam", "adamw": "AdamW", "lion": "Lion", "muon": "Muon", "sgd": "SGD"}.get(optimizer, optimizer)
