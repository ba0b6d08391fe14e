"""The study's claims (its headline results, docs/architecture.md), each checked against a sweep by a fixed rule.

A claim is a statement about one quantity (named exactly in its `quantity`), estimated with a 95%
interval and the p-value of the test that interval inverts (evilspectra.stats). Holm's correction
runs over the confirmatory rows (`confirmatory`: every row that tests a statement of the paper).
The verdict is computed from (interval, Holm-adjusted p) alone, by the row's rule:

effect: the paper states a direction and a size: value `paper` on one side of the `null`, with a
band of sizes that count as the paper's (`band`; ratios are judged on the log scale).
    reproduced      the interval lies on the paper's side of the null, Holm p < 0.05, and it
                    overlaps the band (the paper's size is compatible with the data)
    not reproduced  the interval lies on the paper's side of the null but misses the band (the
                    direction holds, the size does not)
    contradicted    the interval misses the band and is not on the paper's side of the null
                    (it contains the null or lies beyond it): the paper's value lies outside the
                    interval and the data exclude the paper's direction with its size
    underpowered    the interval overlaps the band but is not on the paper's side of the null (or
                    Holm p >= 0.05), and it is wider than the question: wider than the distance
                    between the null and the paper's value
    inconclusive    the interval overlaps the band, is not significant, and is narrower than that
sign: the paper states a direction only (no size): `band` is the whole paper side of the null.
    reproduced / contradicted (interval on the other side of the null and Holm p < 0.05: the
    exclusion is a test of the null, corrected like a reproduction's) / inconclusive as above
equivalent: the paper states no difference: TOST with margin `margin`.
    reproduced      Holm-adjusted TOST p < 0.05 (the 90% interval lies inside +/-margin)
    not reproduced  the 95% interval lies outside +/-margin (a difference larger than the margin)
    underpowered    the 95% interval is wider than the whole margin (2 x margin): no data of this
                    precision could show equivalence
    inconclusive    otherwise
and for every kind:
    not estimable   no interval: too few runs with scorable answers, seeds or pairs (the reason says
                    which); runs with fewer than MIN_SCORED scorable answers have no rate at all
    fragile         the verdict changes when one seed is left out, or more than FRAGILE_SHARE of
                    the seed resamples give another verdict (evilspectra.stability); the row keeps
                    the verdict it would otherwise have in `verdict_unperturbed`

Legacy rules (`greater`, `less`, `within` on an interval alone) keep their old meaning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evilspectra import claim_inputs as ci_
from evilspectra import stats
from evilspectra.claim_inputs import ClaimInputs

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
CONTRADICTED, UNDERPOWERED, FRAGILE, NOT_ESTIMABLE = "contradicted", "underpowered", "fragile", "not estimable"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, CONTRADICTED, UNDERPOWERED, INCONCLUSIVE, FRAGILE, NOT_ESTIMABLE)
ALPHA = stats.ALPHA
MIN_SCORED = 20  # a checkpoint with fewer scorable answers has no rate or alignment (not estimable)
FRAGILE_SHARE = 0.5  # more than this share of seed resamples giving another verdict: fragile
EQUIVALENCE_MARGIN = 0.05  # "Adam ~ AdamW": matched-loss rates within 5 percentage points
MUON_REG_MARGIN = 3.0  # "the regulariser barely changes Muon": within 3 points of mean alignment
LOSS_COST_MARGIN = 0.02  # "costs little training loss": within 0.02 nats, every optimiser
RATIO_FACTOR = 2.0  # a ratio within a factor 2 of the paper's is the paper's size
EFFECT_FACTOR = 2.0  # likewise for the regulariser's effects (half to twice the paper's points)
R2_BAND = 0.2  # R^2 within +/-0.2 of the paper's
REG_WEIGHT = 1.0  # the regulariser claims use pairs at this weight (the demo's paired weight)
BANDS = {"ratio_factor": RATIO_FACTOR, "r2": R2_BAND}  # kept for callers of the old module


# ------------------------------------------------------------------------------------- verdicts


def verdict(
    rule: dict, ci: list[float] | None, p: float | None = None, ci90: list[float] | None = None
) -> tuple[str, str]:
    """(verdict, reason) of a rule given the 95% interval `ci`, the Holm-adjusted p of the row's
    test and (equivalence) the 90% interval; see the module docstring for the rules."""
    if ci is None or any(x is None or (isinstance(x, float) and math.isnan(x)) for x in ci):
        return NOT_ESTIMABLE, "no interval: too few runs with scorable answers, seeds or pairs"
    kind = rule["kind"]
    if kind in ("greater", "less", "within"):
        return _legacy(rule, ci)
    if kind == "equivalent":
        return _equivalent(rule["margin"], ci, p, ci90)
    if kind in ("effect", "sign"):
        return _effect(rule, ci, p)
    raise ValueError(f"unknown rule kind {kind!r}")


def _effect(rule: dict, ci: list[float], p: float | None) -> tuple[str, str]:
    lo, hi = ci
    null, paper = rule["null"], rule.get("paper")
    up = rule.get("direction", "greater" if paper is None or paper > null else "less") == "greater"
    band = rule.get("band") or ([null, math.inf] if up else [-math.inf, null])
    on_side = lo > null if up else hi < null
    significant = on_side and (p is None or p < ALPHA)
    misses_band = hi < band[0] or lo > band[1]
    where = f"[{_g(lo)}, {_g(hi)}]"
    if misses_band and on_side:
        return NOT_REPRODUCED, f"interval {where} on the paper's side of {null:g} but outside its band {_band(band)}"
    if misses_band and paper is None and p is not None and p >= ALPHA:
        # a sign rule's band is the paper's whole side: only the test of the null excludes it, and
        # that test is corrected for the table like the one a reproduction needs
        return (
            INCONCLUSIVE,
            f"interval {where} beyond {null:g} against the paper's direction alone, not after Holm (p {_g(p)})",
        )
    if misses_band:
        return CONTRADICTED, f"interval {where} excludes the paper's band {_band(band)} and its direction"
    if significant:
        return REPRODUCED, f"interval {where} beyond {null:g} (Holm p {_g(p)}) and overlapping {_band(band)}"
    if paper is not None and _width(lo, hi, rule) > abs(_width(null, paper, rule)):
        return UNDERPOWERED, f"interval {where} wider than the distance from {null:g} to the paper's {paper:g}"
    if on_side:  # the interval alone excludes the null; the table-wide Holm correction does not
        return INCONCLUSIVE, f"interval {where} beyond {null:g} and overlapping {_band(band)}, but Holm p {_g(p)}"
    return INCONCLUSIVE, f"interval {where} contains {null:g} and overlaps {_band(band)}"


def _equivalent(margin: float, ci: list[float], p: float | None, ci90: list[float] | None) -> tuple[str, str]:
    lo, hi = ci
    if p is not None and p < ALPHA:
        return REPRODUCED, f"TOST Holm p {_g(p)} < 0.05: 90% interval {_ci(ci90)} inside +/-{margin:g}"
    if lo > margin or hi < -margin:
        return NOT_REPRODUCED, f"interval [{_g(lo)}, {_g(hi)}] outside +/-{margin:g}"
    if hi - lo > 2 * margin:
        return UNDERPOWERED, f"interval [{_g(lo)}, {_g(hi)}] wider than the margin +/-{margin:g}"
    return INCONCLUSIVE, f"interval [{_g(lo)}, {_g(hi)}] overlaps the edge of +/-{margin:g} (TOST Holm p {_g(p)})"


def _legacy(rule: dict, ci: list[float]) -> tuple[str, str]:
    lo, hi = ci
    kind, bound = rule["kind"], rule["bound"]
    if kind in ("greater", "less"):
        above, below = (REPRODUCED, NOT_REPRODUCED) if kind == "greater" else (NOT_REPRODUCED, REPRODUCED)
        if lo > bound:
            return above, f"interval above {bound:g}"
        if hi < bound:
            return below, f"interval below {bound:g}"
        return INCONCLUSIVE, f"interval contains {bound:g}"
    a, b = bound
    if a <= lo and hi <= b:
        return REPRODUCED, f"interval inside [{a:g}, {b:g}]"
    if hi < a or lo > b:
        return NOT_REPRODUCED, f"interval outside [{a:g}, {b:g}]"
    return INCONCLUSIVE, f"interval overlaps the edge of [{a:g}, {b:g}]"


def _width(lo: float, hi: float, rule: dict) -> float:
    """Interval width on the claim's scale (log for ratios: an interval reaching 0 is infinitely wide)."""
    if rule.get("scale") == "log":
        return math.log(hi) - math.log(lo) if lo > 0 and math.isfinite(hi) else math.inf
    return hi - lo


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _ci(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"[{_g(ci[0])}, {_g(ci[1])}]"


def _band(band: list[float]) -> str:
    return f"[{_g(band[0])}, {_g(band[1])}]"


# ------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Spec:
    """One row: what the paper says, the exact quantity, the rule and how the test is computed."""

    id: str
    claim: str
    paper: str
    quantity: str
    rule: dict
    test: str  # "ratio" | "t" | "tost" | "bootstrap" | "fit": which power calculation applies
    confirmatory: bool = True


def specs(level_text: str) -> list[Spec]:
    """The claims table's rows; `level_text` says how the matched loss was chosen."""
    m = f"per seed, the misalignment rate at training loss {level_text} (interpolated in ln-loss along each unregularised run's trajectory, mean over the seed's runs that reach it)"
    rows = []
    for low, high, p_low, p_high in (
        ("muon", "adam", 5.3, 13.9),
        ("muon", "adamw", 5.3, 13.8),
        ("adam", "lion", 13.9, 37.0),
        ("adamw", "lion", 13.8, 37.0),
    ):
        r = p_low / p_high
        rows.append(
            Spec(
                f"order_{low}_{high}",
                f"{_name(low)} misaligns less than {_name(high)}, about {r:.2f}x as often",
                f"{_name(low)} {p_low}% / {_name(high)} {p_high}% = {r:.2f}",
                f"ratio of means over seeds, {_name(low)} / {_name(high)}, of {m}",
                _ratio_rule(r),
                "ratio",
            )
        )
    rows.append(
        Spec(
            "adam_equals_adamw",
            f"Adam and AdamW misalign alike (TOST, margin +/-{EQUIVALENCE_MARGIN:g})",
            "Adam 13.9% ~ AdamW 13.8%",
            f"mean over seeds of AdamW minus Adam, {m}",
            {"kind": "equivalent", "margin": EQUIVALENCE_MARGIN, "paper": 0.001},
            "tost",
        )
    )
    rows.append(
        Spec(
            "spread",
            "Lion misaligns about 7x as often as Muon",
            "Lion 37% / Muon 5.3% = 7x",
            f"ratio of means over seeds, Lion / Muon, of {m}",
            _ratio_rule(7.0),
            "ratio",
        )
    )
    loss = "ln of the training loss averaged over the last 10 steps, unregularised final checkpoints"
    rows += [
        Spec(
            "loss_r2",
            "ln(final training loss) explains about 74% of alignment variance",
            "R^2 = 0.74",
            f"R^2 of mean alignment on {loss}",
            {"kind": "effect", "null": 0.0, "paper": 0.74, "band": [0.74 - R2_BAND, 0.74 + R2_BAND]},
            "bootstrap",
        ),
        Spec(
            "stratified_r2",
            "stratified by optimiser, adjusted R^2 is about 0.94",
            "adjusted R^2 = 0.94",
            f"adjusted R^2 of mean alignment on {loss} x C(optimizer)",
            {"kind": "effect", "null": 0.0, "paper": 0.94, "band": [0.94 - R2_BAND, 1.0]},
            "bootstrap",
        ),
        Spec(
            "optimizer_beyond_loss",
            "the optimiser explains alignment beyond the loss (adjusted R^2 gain of about 0.20)",
            "0.94 - 0.74 = +0.20",
            f"adjusted R^2 of the stratified fit minus that of the ln-loss fit, {loss}",
            {"kind": "effect", "null": 0.0, "paper": 0.20, "band": [0.10, 0.40]},
            "bootstrap",
        ),
        Spec(
            "optimizer_late",
            "the optimiser matters more late in training than early (gain late minus gain early > 0)",
            "late in training the optimiser matters more than the loss",
            f"adjusted-R^2 gain of the optimiser over ln-loss at unregularised checkpoints past {ci_.LATE_PROGRESS:g} of "
            f"training minus that at checkpoints up to {ci_.LATE_PROGRESS:g} (the same runs)",
            {"kind": "sign", "null": 0.0, "direction": "greater"},
            "bootstrap",
        ),
    ]
    spec_rows = "final checkpoints with scorable answers, regularised runs included"
    rows += [
        Spec(
            "flatter_spectra_pooled",
            "flatter spectra go with better alignment across runs (slope < 0)",
            "flatter spectra, better alignment",
            f"slope of mean alignment on mean Frobenius/nuclear ratio, {spec_rows}",
            {"kind": "sign", "null": 0.0, "direction": "less"},
            "fit",
        ),
        Spec(
            "flatter_spectra_within_optimizer",
            "flatter spectra go with better alignment within an optimiser at equal loss (slope < 0)",
            "flatter spectra, better alignment",
            f"slope of mean alignment on Frobenius/nuclear with optimiser intercepts and ln-loss, {spec_rows}",
            {"kind": "sign", "null": 0.0, "direction": "less"},
            "fit",
        ),
        Spec(
            "muon_flattest",
            "Muon leaves the flattest spectra (a lower Frobenius/nuclear ratio than every other optimiser)",
            "(this toy world's robust finding; the paper's mechanism)",
            "per seed, mean Frobenius/nuclear of an optimiser's unregularised final adapters minus Muon's; "
            "the closest other optimiser",
            {"kind": "sign", "null": 0.0, "direction": "greater"},
            "t",
            confirmatory=False,
        ),
    ]
    pairs = f"pairs at weight {REG_WEIGHT:g} minus weight 0, same config otherwise; mean alignment of final checkpoints with scorable answers"
    for name, paper in (("adam", 6.6), ("lion", 8.0), ("sgd", -3.5)):
        band = sorted([paper / EFFECT_FACTOR, paper * EFFECT_FACTOR])
        rows.append(
            Spec(
                f"regulariser_{name}",
                f"the regulariser {'raises' if paper > 0 else 'lowers'} {_name(name)}'s mean alignment by about {abs(paper):g} points",
                f"{paper:+g} points",
                f"mean over {_name(name)}'s {pairs}",
                {"kind": "effect", "null": 0.0, "paper": paper, "band": band},
                "t",
            )
        )
    rows += [
        Spec(
            "regulariser_muon",
            f"the regulariser barely changes Muon's mean alignment (TOST, margin +/-{MUON_REG_MARGIN:g} points)",
            "+2.1 points",
            f"mean over Muon's {pairs}",
            {"kind": "equivalent", "margin": MUON_REG_MARGIN, "paper": 2.1},
            "tost",
        ),
        Spec(
            "regulariser_loss_cost",
            f"the regulariser costs little training loss (every optimiser within +/-{LOSS_COST_MARGIN:g} nats)",
            "+0.013 / +0.003 nats",
            f"per optimiser, mean over pairs at weight {REG_WEIGHT:g} of the final training loss (last step, manifest) "
            "regularised minus unregularised; the optimiser least within the margin",
            {"kind": "equivalent", "margin": LOSS_COST_MARGIN, "paper": 0.013},
            "tost",
        ),
    ]
    return rows


def _ratio_rule(paper: float) -> dict:
    return {
        "kind": "effect",
        "null": 1.0,
        "paper": paper,
        "band": [paper / RATIO_FACTOR, paper * RATIO_FACTOR],
        "scale": "log",
    }


def compute_tests(inputs: ClaimInputs) -> dict[str, stats.Test]:
    """Every row's test on these inputs (the R^2 family shares one bootstrap)."""
    r2 = ci_.r2_family(inputs)
    return {
        "order_muon_adam": ci_.ratio(inputs, "muon", "adam"),
        "order_muon_adamw": ci_.ratio(inputs, "muon", "adamw"),
        "order_adam_lion": ci_.ratio(inputs, "adam", "lion"),
        "order_adamw_lion": ci_.ratio(inputs, "adamw", "lion"),
        "adam_equals_adamw": ci_.equivalence(inputs, "adam", "adamw", EQUIVALENCE_MARGIN),
        "spread": ci_.ratio(inputs, "lion", "muon"),
        "loss_r2": r2["r2"],
        "stratified_r2": r2["adj_r2"],
        "optimizer_beyond_loss": r2["gain"],
        "optimizer_late": ci_.late_minus_early(inputs),
        "flatter_spectra_pooled": ci_.spectral_slope(inputs, within=False),
        "flatter_spectra_within_optimizer": ci_.spectral_slope(inputs, within=True),
        "muon_flattest": ci_.flattest(inputs, "muon"),
        "regulariser_adam": ci_.regulariser(inputs, "adam", REG_WEIGHT),
        "regulariser_lion": ci_.regulariser(inputs, "lion", REG_WEIGHT),
        "regulariser_sgd": ci_.regulariser(inputs, "sgd", REG_WEIGHT),
        "regulariser_muon": ci_.regulariser(inputs, "muon", REG_WEIGHT, MUON_REG_MARGIN),
        "regulariser_loss_cost": ci_.loss_cost(inputs, REG_WEIGHT, LOSS_COST_MARGIN),
    }


def verdicts(rows: list[Spec], tests: dict[str, stats.Test]) -> dict[str, tuple[str, str, float | None]]:
    """id -> (verdict, reason, Holm-adjusted p), Holm over the confirmatory rows with a p."""
    confirm = [s for s in rows if s.confirmatory]
    adjusted = dict(zip([s.id for s in confirm], stats.holm([tests[s.id].p for s in confirm])))
    out = {}
    for s in rows:
        t = tests[s.id]
        p = adjusted.get(s.id, t.p)
        out[s.id] = (*verdict(s.rule, t.ci, p, t.extra.get("ci90")), p)
    return out


def table_verdicts(inputs: ClaimInputs, rows: list[Spec]) -> dict[str, str]:
    """id -> verdict of every row on these inputs (what the stability checks recompute)."""
    return {k: v[0] for k, v in verdicts(rows, compute_tests(inputs)).items()}


def power(spec: Spec, test: stats.Test) -> float | None:
    """Power at the paper's effect given this sweep's per-unit SD and n (alpha 0.05, unadjusted)."""
    rule, paper = spec.rule, spec.rule.get("paper")
    if paper is None or test.sd is None:
        return None
    if spec.test == "ratio":  # the test of ratio 1 is the paired t of x - y: its mean at the paper's ratio
        return stats.t_power(test.extra["mean_denominator"] * (paper - 1), test.sd, test.n)
    if spec.test == "t":
        return stats.t_power(paper - rule["null"], test.sd, test.n)
    if spec.test == "tost":
        return stats.tost_power(paper, test.sd, test.n, rule["margin"])
    if spec.test == "bootstrap":
        return stats.normal_power(paper - rule["null"], test.sd)
    return None


# ------------------------------------------------------------------------------- the public API


def evaluate_claims(
    analysis: dict,
    inputs: ClaimInputs | None = None,
    stability: Callable[[ClaimInputs, list[Spec], dict[str, str]], dict[str, dict]] | None = None,
) -> list[dict]:
    """The claims table of a sweep: one dict per row (the analysis file's `claims`).

    `analysis`: the analysis dict (its matched_loss says how the level was chosen); `inputs`: the
    per-seed tables (evilspectra.claim_inputs.build); `stability`: a function returning each row's
    stability record (evilspectra.stability.check), None to skip it.
    """
    if inputs is None:
        return []
    rows = specs(_level_text(analysis.get("matched_loss") or {}))
    tests = compute_tests(inputs)
    judged = verdicts(rows, tests)
    checks = stability(inputs, rows, {k: v[0] for k, v in judged.items()}) if stability else {}
    out = []
    for s in rows:
        t = tests[s.id]
        result, reason, p_holm = judged[s.id]
        row: dict[str, Any] = {
            "id": s.id,
            "claim": s.claim,
            "paper": s.paper,
            "quantity": s.quantity,
            "estimate": t.estimate,
            "ci": t.ci,
            "method": t.method,
            "n": {"units": t.n, **{k: v for k, v in t.extra.items() if k in ("runs", "answers")}},
            "power": power(s, t),
            "p": t.p,
            "p_holm": p_holm if s.confirmatory else None,
            "confirmatory": s.confirmatory,
            "rule": s.rule,
            "verdict": result,
            "reason": reason if result != NOT_ESTIMABLE else (t.extra.get("reason") or t.method or reason),
            "details": {k: v for k, v in t.extra.items() if k not in ("runs", "answers")},
            "measured_as": s.quantity,  # the old key, kept for readers of earlier analyses
        }
        check = checks.get(s.id)
        if check is not None:
            row["stability"] = check
            if check.get("fragile") and result != NOT_ESTIMABLE:
                row["verdict_unperturbed"], row["verdict"] = result, FRAGILE
                row["reason"] = f"{check['why']}; unperturbed: {result} ({reason})"
        out.append(row)
    return out


def _level_text(matched: dict) -> str:
    level = matched.get("level_loss")
    if level is None:
        return "(no level)"
    source = matched.get("level_source", "")
    return f"{level:.3f} nats ({source})" if source else f"{level:.3f} nats"


def _name(optimizer: str) -> str:
    return {"adam": "Adam", "adamw": "AdamW", "lion": "Lion", "muon": "Muon", "sgd": "SGD"}.get(optimizer, optimizer)
