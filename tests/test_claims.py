"""The claims table: every verdict rule on intervals with known answers, and on synthetic sweeps whose
truth is known (the paper's ordering built in, or reversed, or pure noise)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_analysis import make_sweep, run_row

from evilspectra import claims, stability, stats
from evilspectra.analysis import analyze, line_support, matched_loss
from evilspectra.claim_inputs import ClaimInputs
from evilspectra.claims import (
    CONTRADICTED,
    FRAGILE,
    INCONCLUSIVE,
    NOT_ESTIMABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    UNDERPOWERED,
    verdict,
)

GREATER, LESS, WITHIN = (
    {"kind": "greater", "bound": 0.0},
    {"kind": "less", "bound": 0.0},
    {"kind": "within", "bound": [-1, 1]},
)
RATIO = claims._ratio_rule(0.38)  # Muon / Adam in the paper: null 1, band [0.19, 0.76] (log scale)
EFFECT = {"kind": "effect", "null": 0.0, "paper": 6.6, "band": [3.3, 13.2]}
EQUIV = {"kind": "equivalent", "margin": 3.0}
SIGN = {"kind": "sign", "null": 0.0, "direction": "less"}  # "flatter spectra, better alignment": slope < 0

# The demo's measured noise (102-run demo, 2026-12-06, matched loss 0.28 nats): per-seed SD of an
# optimiser's matched-loss misalignment rate 0.035-0.084 (Adam 0.060), correlation across optimisers
# 0.88-0.94; regulariser pairs (weight 1): per-pair SD of the alignment change 3.9-6.5 points. The
# 120-run design that replaced it (same day): Adam's SD 0.070 (Muon's and Lion's rates are near 0
# there, SD < 0.004), pairs' SD 3.6-5.4 points: the figures below stay within both.
RATE_SD, RATE_CORR, PAIR_SD = 0.06, 0.9, 5.0


@pytest.mark.parametrize(
    ("rule", "ci", "p", "expected"),
    [
        (RATIO, [0.30, 0.50], 0.001, REPRODUCED),
        (RATIO, [0.85, 0.95], 0.001, NOT_REPRODUCED),  # Muon below Adam, but not 0.38x: size outside the band
        (RATIO, [0.86, 1.08], 0.5, CONTRADICTED),  # the toy figure: excludes 0.38 and its band
        (RATIO, [1.04, 1.43], 0.01, CONTRADICTED),  # the other direction
        (RATIO, [0.20, 1.50], 0.3, UNDERPOWERED),  # wider (log) than the distance from 1 to 0.38
        (RATIO, [0.70, 1.05], 0.1, INCONCLUSIVE),  # overlaps the band, contains 1, narrower than the question
        (RATIO, [0.30, 0.50], 0.2, INCONCLUSIVE),  # beyond the null alone, not after Holm
        (RATIO, [0.0, math.inf], None, UNDERPOWERED),  # unbounded Fieller interval
        (EFFECT, [27.2, 36.0], 0.001, NOT_REPRODUCED),
        (EFFECT, [-9.0, -2.0], 0.01, CONTRADICTED),
        (EFFECT, [-5.0, 8.0], 0.4, UNDERPOWERED),
        (EFFECT, [-1.0, 4.0], 0.3, INCONCLUSIVE),
        (EFFECT, None, None, NOT_ESTIMABLE),
        (SIGN, [-0.5, -0.1], 0.01, REPRODUCED),
        (SIGN, [0.1, 0.5], 0.01, CONTRADICTED),
        (SIGN, [0.1, 0.5], 0.0501, INCONCLUSIVE),  # beyond the null on the wrong side, not after Holm
        (SIGN, [-0.1, 0.5], 0.4, INCONCLUSIVE),
        (GREATER, [0.1, 0.5], None, REPRODUCED),
        (GREATER, [-0.5, -0.1], None, NOT_REPRODUCED),
        (GREATER, [-0.1, 0.5], None, INCONCLUSIVE),
        (LESS, [-0.5, -0.1], None, REPRODUCED),
        (LESS, [0.1, 0.5], None, NOT_REPRODUCED),
        (WITHIN, [-0.5, 0.9], None, REPRODUCED),
        (WITHIN, [1.5, 3.0], None, NOT_REPRODUCED),
        (WITHIN, [0.5, 1.5], None, INCONCLUSIVE),
    ],
)
def test_verdict_rules(rule, ci, p, expected):
    assert verdict(rule, ci, p)[0] == expected


@pytest.mark.parametrize(
    ("ci", "p", "ci90", "expected"),
    [
        ([-1.0, 2.0], 0.01, [-0.7, 1.7], REPRODUCED),
        ([3.5, 9.0], 0.9, [4.0, 8.5], NOT_REPRODUCED),
        ([-4.0, 4.0], 0.3, [-3.2, 3.2], UNDERPOWERED),  # wider than the whole +/-3 margin
        ([0.7, 5.5], 0.4, [1.2, 5.0], INCONCLUSIVE),
        ([-1.0, 2.0], 0.2, [-0.7, 1.7], INCONCLUSIVE),  # TOST alone passes, Holm's p does not
    ],
)
def test_equivalence_rules(ci, p, ci90, expected):
    assert verdict(EQUIV, ci, p, ci90)[0] == expected


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="unknown rule"):
        verdict({"kind": "about", "bound": 0}, [0, 1])


def test_holm_matches_statsmodels_and_skips_missing():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, None, 0.03, 0.2, 0.001]
    got = stats.holm(p)
    ref = multipletests([x for x in p if x is not None], method="holm")[1]
    assert got[2] is None and np.allclose([x for x in got if x is not None], ref)
    # a row that is significant alone (0.03) is not after Holm over 5 rows: the verdict says so
    assert verdict(RATIO, [0.3, 0.5], 0.03)[0] == REPRODUCED
    held, reason = verdict(RATIO, [0.3, 0.5], got[3])
    assert held == INCONCLUSIVE and "Holm p" in reason and "contains" not in reason  # the interval excludes 1


# ------------------------------------------------------------------- coverage at the demo's noise


def _seed_rates(rng, n, means, sd=RATE_SD, corr=RATE_CORR):
    """n seeds of correlated per-seed rates (one column per mean), as in the demo."""
    cov = sd**2 * (corr * np.ones((len(means), len(means))) + (1 - corr) * np.eye(len(means)))
    return rng.multivariate_normal(means, cov, size=n)


def test_paired_intervals_cover_95_percent_at_the_demo_noise():
    """400 simulated 6-seed sweeps at the demo's noise: the paired t interval of a difference and
    Fieller's interval of a ratio each cover the truth 95% of the time, within the binomial band
    (99%: 0.95 +/- 2.58 sqrt(0.95 0.05 / 400) = [0.922, 0.978])."""
    rng = np.random.default_rng(0)
    truth = (0.24, 0.35)  # Muon, Adam at the matched loss
    hit_d = hit_r = 0
    for _ in range(400):
        x = _seed_rates(rng, 6, truth)
        d = stats.paired_t(x[:, 0] - x[:, 1]).ci
        r = stats.fieller_ratio(x[:, 0], x[:, 1]).ci
        hit_d += d[0] <= truth[0] - truth[1] <= d[1]
        hit_r += r[0] <= truth[0] / truth[1] <= r[1]
    band = 2.58 * math.sqrt(0.95 * 0.05 / 400)
    assert abs(hit_d / 400 - 0.95) <= band, hit_d
    assert abs(hit_r / 400 - 0.95) <= band, hit_r


def test_a_rate_far_above_a_rate_near_zero_contradicts_a_ratio_below_one():
    """Adam ~20% and Lion ~0.1% at the matched loss (the demo's toy figures): Lion's mean is within
    its own interval of 0, so Fieller's set for Adam / Lion is unbounded, but it is the line minus
    an interval around 0 and 1; cut to the non-negative ratios that rates allow it is [b, inf) with
    b > 1, which excludes the paper's 0.38 and its band: contradicted, not underpowered."""
    rng = np.random.default_rng(4)
    adam = rng.normal(0.20, 0.03, 8)
    lion = np.array([0, 0, 0.006, 0, 0, 0.004, 0, 0])  # one or none of 150 answers misaligned
    assert stats.fieller_ratio(adam, lion).ci == [-math.inf, math.inf]
    lo, hi = stats.fieller_ratio(adam, lion, nonnegative=True).ci
    assert lo > 1 and hi == math.inf
    row = table(inputs({"adam": adam, "lion": lion}, seeds=8))["order_adam_lion"]
    assert row["verdict"] == CONTRADICTED, row
    # the other way round the set is bounded; the negative ratios it holds are cut (Muon / Adam)
    lo, hi = stats.fieller_ratio(lion, adam).ci
    assert lo < 0 < hi
    assert stats.fieller_ratio(lion, adam, nonnegative=True).ci == [0.0, hi]
    # two rates both near 0: no ratio is excluded, the set is all of [0, inf)
    both = stats.fieller_ratio(np.array([0.006, 0, 0, 0, 0.006, 0, 0, 0.008]), lion, nonnegative=True)
    assert both.ci == [0.0, math.inf]


def test_power_matches_simulation():
    """t and TOST power against 2000 simulated 6-seed experiments (tolerance: 3 binomial SDs of
    2000 draws, about 0.034, plus the TOST approximation's known slack of a lower bound)."""
    rng = np.random.default_rng(1)
    draws = rng.normal(4.0, PAIR_SD, size=(2000, 6))
    sim = np.mean([stats.paired_t(d).p < 0.05 for d in draws])
    assert stats.t_power(4.0, PAIR_SD, 6) == pytest.approx(sim, abs=0.034)
    near = rng.normal(0.5, 1.0, size=(2000, 6))
    sim_tost = np.mean([stats.tost(d, 3.0).p < 0.05 for d in near])
    power = stats.tost_power(0.5, 1.0, 6, 3.0)
    assert power <= sim_tost + 0.034 and power >= sim_tost - 0.06


# ---------------------------------------------------------------- synthetic per-seed claim inputs


ANSWERS = 150  # scorable answers of one evaluation in the synthetic sweeps


def inputs(matched=None, pairs=None, fn=None, seeds=6):
    """ClaimInputs with only per-seed tables (no regression designs: those rows are not estimable)."""
    rows = [
        {
            "optimizer": o,
            "spectral_reg": 1.0,
            "seed": float(s),
            "seed_index": s,
            "delta_mean_aligned": d,
            "delta_final_loss": 0.0,
            "answers": 2 * ANSWERS,
        }
        for o, values in (pairs or {}).items()
        for s, d in enumerate(values)
    ]
    cols = ["optimizer", "spectral_reg", "seed", "seed_index", "delta_mean_aligned", "delta_final_loss", "answers"]
    matched = {k: np.asarray(v, float) for k, v in (matched or {}).items()}
    return ClaimInputs(
        seeds=np.arange(seeds, dtype=float),
        matched=matched,  # one run per seed, its rate interpolated between two evaluations of ANSWERS each
        matched_runs={k: np.ones(len(v)) for k, v in matched.items()},
        matched_answers={k: np.full(len(v), 2.0 * ANSWERS) for k, v in matched.items()},
        fn={k: np.asarray(v, float) for k, v in (fn or {}).items()},
        fn_runs={k: np.ones(len(v)) for k, v in (fn or {}).items()},
        pairs=pd.DataFrame(rows, columns=cols),
        final=None,
        late=None,
        early=None,
        spectral=None,
        n_boot=50,
    )


def table(inp):
    return {r["id"]: r for r in claims.evaluate_claims({"matched_loss": {"level_loss": 0.28}}, inp, stability.check)}


def test_paired_rates_reproduce_the_paper_ordering_at_the_demo_noise():
    rng = np.random.default_rng(2)
    x = _seed_rates(rng, 6, [0.053, 0.139, 0.138, 0.37])  # the paper's rates, the demo's noise
    x = np.clip(x, 0.005, 1)
    rows = table(inputs({"muon": x[:, 0], "adam": x[:, 1], "adamw": x[:, 1] + 0.001, "lion": x[:, 3]}))
    assert rows["order_adam_lion"]["verdict"] == REPRODUCED, rows["order_adam_lion"]
    assert rows["adam_equals_adamw"]["verdict"] == REPRODUCED
    assert rows["order_muon_adam"]["power"] > 0.8
    for r in rows.values():  # every row carries what analysis.json promises
        assert {"quantity", "estimate", "ci", "method", "n", "power", "p", "p_holm", "verdict", "reason"} <= set(r)
    # n: the 6 seeds, one run of each optimiser per seed, each rate read from two evaluations
    assert rows["order_adam_lion"]["n"] == {"units": 6, "runs": 12, "answers": 12 * 2 * ANSWERS}


def test_the_toy_ordering_contradicts_the_paper():
    """Muon / Adam about 0.97 (the issue's toy figure) at the demo's noise: the paper's 0.38 and its
    band lie outside the interval, which contains 1: contradicted, not inconclusive."""
    rng = np.random.default_rng(3)
    x = _seed_rates(rng, 6, [0.34, 0.35])
    rows = table(inputs({"muon": x[:, 0], "adam": x[:, 1]}))
    assert rows["order_muon_adam"]["verdict"] == CONTRADICTED, rows["order_muon_adam"]
    assert rows["order_muon_adam"]["stability"]["resample_agreement"] > 0.5


def test_underpowered_when_the_interval_is_wider_than_the_question():
    rng = np.random.default_rng(4)
    noisy = _seed_rates(rng, 3, [0.10, 0.14], sd=0.08, corr=0.0).clip(0.01, 1)
    rows = table(inputs({"muon": noisy[:, 0], "adam": noisy[:, 1]}, seeds=3))
    assert rows["order_muon_adam"]["verdict"] == UNDERPOWERED, rows["order_muon_adam"]


def test_tost_equivalence_of_adam_and_adamw():
    rng = np.random.default_rng(5)
    x = _seed_rates(rng, 6, [0.30, 0.30])
    same = table(inputs({"adam": x[:, 0], "adamw": x[:, 0] + rng.normal(0, 0.005, 6)}))
    apart = table(inputs({"adam": x[:, 0], "adamw": x[:, 0] + 0.12 + rng.normal(0, 0.005, 6)}))
    vague = table(inputs({"adam": x[:, 0], "adamw": x[:, 1] + rng.normal(0, 0.08, 6)}))
    assert same["adam_equals_adamw"]["verdict"] == REPRODUCED
    assert apart["adam_equals_adamw"]["verdict"] == NOT_REPRODUCED
    assert vague["adam_equals_adamw"]["verdict"] == UNDERPOWERED


def test_one_chaotic_seed_makes_a_verdict_fragile():
    """Five seeds agree on +7.8 points; seed 5 diverged (-30). With it the interval is too wide
    (underpowered); without it the effect is the paper's: the verdict hangs on one seed: fragile."""
    rows = table(inputs(pairs={"adam": [7.5, 8.2, 6.9, 7.8, 8.4, -30.0]}))
    row = rows["regulariser_adam"]
    assert row["verdict"] == FRAGILE and row["verdict_unperturbed"] == UNDERPOWERED, row
    assert row["stability"]["leave_one_seed_out"]["5"] == REPRODUCED
    calm = table(inputs(pairs={"adam": [7.5, 8.2, 6.9, 7.8, 8.4, 7.1]}))["regulariser_adam"]
    assert calm["verdict"] == REPRODUCED and not calm["stability"]["fragile"]
    assert calm["n"] == {"units": 6, "runs": 12, "answers": 6 * 2 * ANSWERS}  # 6 pairs of two runs


def test_line_support_rule():
    assert line_support(pd.Series(np.linspace(-1.4, -0.2, 6)))["drawable"]
    narrow = line_support(pd.Series(np.log([0.249, 0.25, 0.255, 0.263, 0.26])))
    assert not narrow["drawable"] and "too narrow" in narrow["line_note"]
    assert not line_support(pd.Series([-1.0, 0.0, 1.0]))["drawable"]  # too few points
    assert not line_support(pd.Series([], dtype=float))["drawable"]


def test_matched_loss_interpolates_along_each_trajectory():
    rows = pd.DataFrame(
        [
            run_row("a", "adam", checkpoint="step-10", step=10, loss=0.8, mean_aligned=80, n_misaligned=0)
            | {"initial_loss": 0.96},
            run_row("a", "adam", checkpoint="final", step=30, loss=0.2, mean_aligned=40, n_misaligned=30)
            | {"initial_loss": 0.96},
        ]
    )
    base = [{"mean_aligned": 90.0, "misalignment_rate": 0.0}]
    m = matched_loss(rows, base, n_boot=10)
    assert m["level_loss"] == pytest.approx(0.2)  # the only run's lowest loss
    row = m["per_optimizer"][0]
    assert row["mean_aligned"] == pytest.approx(40) and row["misalignment_rate"] == pytest.approx(0.5)
    # a level between the checkpoints is interpolated in ln(loss): halfway in ln between 0.8 and 0.2
    from evilspectra.analysis import _crossing

    mid = math.sqrt(0.8 * 0.2)
    traj = [(0.96, 90, 0.0, 150), (0.8, 80, 0.0, 140), (0.2, 40, 0.5, 130)]  # + scorable answers
    assert _crossing(traj, mid) == pytest.approx((60, 0.25, 140 + 130))  # the answers of both ends


def test_a_fried_run_is_not_estimable_never_0_or_100(tmp_path):
    """A regularised run with 2 scorable answers of 100 (both misaligned: rate 100%, alignment 0)
    has no rate or alignment; its pair is left out of the regulariser row, which says so."""
    rows = []
    for s in range(4):
        rows.append(run_row(f"a{s}", "adam", seed=s, mean_aligned=60 + s, n_denominator=60, n_misaligned=20))
        aligned, n_den, n_mis = (0.0, 2, 2) if s == 3 else (68 + s, 60, 12)
        rows.append(
            run_row(
                f"r{s}", "adam", seed=s, spectral_reg=1.0, mean_aligned=aligned, n_denominator=n_den, n_misaligned=n_mis
            )
        )
    result = analyze(make_sweep(tmp_path / "s", rows), n_boot=50)
    fried = [r for r in result["not_estimable"] if r["run_id"] == "r3"]
    assert fried and fried[0]["n_scored"] == 2 and "2 of 100 answers scorable" in fried[0]["reason"]
    pair = next(p for p in result["regulariser"]["pairs"] if p["run_id"] == "r3")
    assert pair["delta_mean_aligned"] is None  # not 0 - 63
    row = next(c for c in result["claims"] if c["id"] == "regulariser_adam")
    assert row["n"]["units"] == 3 and row["estimate"] == pytest.approx(8.0)
    assert "1 of 4 pairs left out" in row["method"]


def test_matched_spread_with_a_rate_near_zero_has_an_open_interval_and_no_nan():
    """Lion's bootstrap means include 0 (a seed with no misaligned answer drawn every time): the
    spread's resampled ratios include inf; the interval is then [finite, inf), never NaN."""
    import warnings

    from evilspectra.analysis_matched import _matched_spread

    rows = [{"optimizer": "adam", "misalignment_rate": 0.2}, {"optimizer": "lion", "misalignment_rate": 0.001}]
    boots = {
        ("adam", "misalignment_rate"): np.full(200, 0.2),
        ("lion", "misalignment_rate"): np.r_[np.zeros(20), np.full(180, 0.002)],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spread = _matched_spread(rows, boots)
    assert spread["ratio"] == pytest.approx(200) and spread["ci"] == [100.0, math.inf]
