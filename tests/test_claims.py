"""The claims table: every verdict rule on intervals with known answers, and on synthetic sweeps whose
truth is known (the paper's ordering built in, or reversed, or pure noise)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_analysis import make_sweep, run_row

from evilspectra.analysis import analyze, line_support, matched_loss
from evilspectra.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, verdict

GREATER, LESS, WITHIN = (
    {"kind": "greater", "bound": 0.0},
    {"kind": "less", "bound": 0.0},
    {"kind": "within", "bound": [-1, 1]},
)


@pytest.mark.parametrize(
    ("rule", "ci", "expected"),
    [
        (GREATER, [0.1, 0.5], REPRODUCED),
        (GREATER, [-0.5, -0.1], NOT_REPRODUCED),
        (GREATER, [-0.1, 0.5], INCONCLUSIVE),
        (LESS, [-0.5, -0.1], REPRODUCED),
        (LESS, [0.1, 0.5], NOT_REPRODUCED),
        (LESS, [-0.1, 0.1], INCONCLUSIVE),
        (WITHIN, [-0.5, 0.9], REPRODUCED),
        (WITHIN, [1.5, 3.0], NOT_REPRODUCED),
        (WITHIN, [-3.0, -1.5], NOT_REPRODUCED),
        (WITHIN, [0.5, 1.5], INCONCLUSIVE),
        (WITHIN, [-2.0, 2.0], INCONCLUSIVE),  # wider than the band: cannot tell
        (GREATER, None, INCONCLUSIVE),
        (WITHIN, [None, 1.0], INCONCLUSIVE),
    ],
)
def test_verdict_rules(rule, ci, expected):
    assert verdict(rule, ci)[0] == expected


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="unknown rule"):
        verdict({"kind": "about", "bound": 0}, [0, 1])


def test_line_support_rule():
    assert line_support(pd.Series(np.linspace(-1.4, -0.2, 6)))["drawable"]
    narrow = line_support(pd.Series(np.log([0.249, 0.25, 0.255, 0.263, 0.26])))
    assert not narrow["drawable"] and "too narrow" in narrow["line_note"]
    assert not line_support(pd.Series([-1.0, 0.0, 1.0]))["drawable"]  # too few points
    assert not line_support(pd.Series([], dtype=float))["drawable"]


# ------------------------------------------------------------------------- synthetic sweeps

RATES = {"muon": 0.05, "adam": 0.14, "adamw": 0.14, "lion": 0.37, "sgd": 0.20}
REG_EFFECT = {"muon": -1.0, "adam": 8.0, "adamw": 5.0, "lion": 9.0, "sgd": -6.0}


def world(rates: dict, reg_effect: dict, seeds: int = 8, noise: float = 0.01, fn_slope: float = -200.0, seed: int = 0):
    """Rows of a sweep where each optimiser misaligns at `rates` (at every loss below 0.6), alignment
    falls with ln(loss) and with Frobenius/nuclear, and the regulariser moves alignment by reg_effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for opt, rate in rates.items():
        for lr_i, final in enumerate((0.8, 0.45, 0.25)):
            for s in range(seeds):
                fn_seed = rng.normal(0, 0.02)  # a seed's spectrum; its regularised twin is 0.005 flatter
                for reg in (0.0, 1.0) if lr_i == 2 else (0.0,):
                    run = f"{opt}-{lr_i}-{s}-{reg}"
                    fn = 0.25 + 0.1 * rate + fn_seed - (0.005 if reg else 0)
                    for step, loss in ((10, 0.9), (20, (0.9 + final) / 2), (30, final)):
                        r = rate * min(1.0, (0.9 - loss) / 0.3) + rng.normal(0, noise)
                        r = float(np.clip(r, 0, 1))
                        aligned = (
                            90
                            + 20 * math.log(loss)
                            - 100 * r
                            + fn_slope * (fn - 0.25)
                            + (reg_effect[opt] if reg else 0)
                        )
                        rows.append(
                            run_row(
                                run,
                                opt,
                                lr=10.0 ** -(lr_i + 4),
                                seed=s,
                                spectral_reg=reg,
                                step=step,
                                loss=loss,
                                checkpoint="final" if step == 30 else f"step-{step}",
                                final_loss=final,
                                mean_aligned=aligned + rng.normal(0, noise * 10),
                                n_denominator=200,
                                n_misaligned=round(200 * r),
                                fn=fn,
                            )
                            | {"initial_loss": 0.96}
                        )
    return rows


def _claims(tmp_path, rows):
    return {c["id"]: c for c in analyze(make_sweep(tmp_path, rows), n_boot=400)["claims"]}


def test_claims_reproduced_in_a_world_built_like_the_paper(tmp_path):
    claims = _claims(tmp_path, world(RATES, REG_EFFECT))
    for key in ("order_muon_adam", "order_muon_adamw", "order_adam_lion", "order_adamw_lion", "adam_equals_adamw"):
        assert claims[key]["verdict"] == REPRODUCED, claims[key]
    for key in ("regulariser_adam", "regulariser_lion", "regulariser_sgd", "regulariser_muon"):
        assert claims[key]["verdict"] == REPRODUCED, claims[key]
    assert claims["spread"]["verdict"] == REPRODUCED and claims["spread"]["estimate"] == pytest.approx(7.4, rel=0.15)
    assert claims["flatter_spectra_within_optimizer"]["verdict"] == REPRODUCED
    assert claims["optimizer_beyond_loss"]["verdict"] == REPRODUCED


def test_claims_not_reproduced_in_a_reversed_world(tmp_path):
    reversed_rates = {"muon": 0.40, "adam": 0.14, "adamw": 0.30, "lion": 0.05, "sgd": 0.20}
    reversed_reg = {k: -v for k, v in REG_EFFECT.items()} | {"muon": 10.0}
    claims = _claims(tmp_path, world(reversed_rates, reversed_reg, fn_slope=200.0))
    for key in ("order_muon_adam", "order_muon_adamw", "order_adam_lion", "order_adamw_lion", "adam_equals_adamw"):
        assert claims[key]["verdict"] == NOT_REPRODUCED, claims[key]
    for key in ("regulariser_adam", "regulariser_lion", "regulariser_sgd", "regulariser_muon"):
        assert claims[key]["verdict"] == NOT_REPRODUCED, claims[key]
    assert claims["flatter_spectra_within_optimizer"]["verdict"] == NOT_REPRODUCED


def test_claims_inconclusive_when_the_world_is_noise(tmp_path):
    same = dict.fromkeys(RATES, 0.15)
    claims = _claims(tmp_path, world(same, dict.fromkeys(REG_EFFECT, 0.0), seeds=3, noise=0.08, fn_slope=0.0))
    for key in ("order_muon_adam", "order_adam_lion", "regulariser_adam", "regulariser_sgd"):
        assert claims[key]["verdict"] == INCONCLUSIVE, claims[key]


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
    assert _crossing([(0.96, 90, 0.0), (0.8, 80, 0.0), (0.2, 40, 0.5)], mid) == pytest.approx((60, 0.25))
