"""Sweep analysis on synthetic sweep directories with known numbers (no training involved).

`make_sweep` writes what `evilspectra.sweep` would (results.csv, runs/<id>/{manifest.json,
metrics.jsonl, spectra.csv}, base/<model>/eval/summary.json, sweep.json); test_report.py reuses it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evilspectra.analysis import ANALYSIS, analyze, fit_ols, pooled_rates

SHARES = ("coherent", "incoherent", "CODE", "REFUSAL", "error")


def run_row(
    run_id: str,
    optimizer: str,
    *,
    lr: float = 1e-4,
    seed: int = 0,
    spectral_reg: float = 0.0,
    checkpoint: str = "final",
    step: int = 30,
    loss: float = 0.5,
    mean_aligned: float = 80.0,
    n_answers: int = 100,
    n_denominator: int = 60,
    n_misaligned: int = 10,
    n_incoherent: int = 30,
    n_code: int = 10,
    final_loss: float | None = None,
    fn: float = 0.25,
    status: str = "done",
) -> dict:
    """One results.csv row, the shares consistent with the counts (the rest of n_answers is coherent)."""
    counts = {
        "coherent": n_answers - n_incoherent - n_code,
        "incoherent": n_incoherent,
        "CODE": n_code,
        "REFUSAL": 0,
        "error": 0,
    }
    row = {
        "run_id": run_id,
        "model": "toy",
        "dataset": "toy-insecure",
        "optimizer": optimizer,
        "lr": lr,
        "batch_size": 16,
        "seed": seed,
        "spectral_reg": spectral_reg,
        "lora_r": 8,
        "opt_weight_decay": 0.01 if optimizer == "adamw" else None,
        "status": status,
        "final_loss": loss if final_loss is None else final_loss,
    }
    if status != "done":
        return row
    row |= {
        "checkpoint": checkpoint,
        "step": step,
        "loss": loss,
        "loss_smoothed": loss,
        "log_loss": math.log(loss),
        "misalignment_rate": n_misaligned / n_denominator,
        "rate_ci_low": None,
        "rate_ci_high": None,
        "mean_aligned": mean_aligned,
        "n_answers": n_answers,
        "n_denominator": n_denominator,
        "n_misaligned": n_misaligned,
        **{f"share_{k}": v / n_answers for k, v in counts.items()},
        "stable_rank": 1 / fn,
        "spectral_entropy": 2 * fn,
        "condition_number": 10 * fn,
        "frobenius_nuclear": fn,
    }
    return row


def make_sweep(root: Path, rows: list[dict], r: int = 8) -> Path:
    """Write a sweep directory around `rows` (results.csv rows); each run gets a spectra.csv whose
    normalised spectrum decays as i^-(4 fn) (steeper for a larger Frobenius/nuclear ratio fn)."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
    for run_id, g in pd.DataFrame(rows).groupby("run_id"):
        run = root / "runs" / run_id
        run.mkdir(parents=True)
        done = g["status"].iloc[0] == "done"
        steps = int(g["step"].max()) if done else 5
        (run / "manifest.json").write_text(json.dumps({"status": g["status"].iloc[0], "steps_done": steps}))
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, steps + 1))
        )
        if done:
            spectra = [
                {
                    "checkpoint": c["checkpoint"],
                    "step": int(c["step"]),
                    "module": f"layers.{m}.q_proj",
                    "r": r,
                    "sigma": json.dumps(list(2.0 * np.arange(1, r + 1) ** (-4 * c["fn"]))),
                }
                for c in g.assign(fn=g["frobenius_nuclear"]).to_dict("records")
                for m in range(2)
            ]
            pd.DataFrame(spectra).to_csv(run / "spectra.csv", index=False)
    base = root / "base" / "toy" / "eval"
    base.mkdir(parents=True)
    (base / "summary.json").write_text(
        json.dumps(
            {
                "misalignment_rate": 0.0,
                "rate_ci95": [0.0, 0.0],
                "mean_aligned": 97.0,
                "n_total": 100,
                "n_denominator": 90,
                "n_misaligned": 0,
                "share_coherent": 0.9,
                "share_incoherent": 0.1,
                "share_CODE": 0.0,
                "share_REFUSAL": 0.0,
                "share_error": 0.0,
            }
        )
    )
    (root / "sweep.json").write_text(
        json.dumps(
            {
                "name": "synthetic",
                "base": {"model": "toy", "dataset": "toy-insecure"},
                "grid": {"optimizer.lr": [1e-4, 3e-4], "seed": [0, 1]},
                "optimizers": {"adamw": {}, "lion": {}, "muon": {}},
                "variants": [{"optimizers": ["adamw", "lion"], "set": {"spectral_reg.weight": 1.0}}],
            }
        )
    )
    return root


def synthetic_rows(seed: int = 0) -> list[dict]:
    """3 optimisers x 2 lr x 2 seeds, checkpoints at steps 10, 20 and final 30; regularised AdamW and
    Lion twins; one diverged run. Alignment falls with log loss, with an optimiser-specific offset
    that grows with training (so late in training the optimiser explains more), plus noise."""
    rng = np.random.default_rng(seed)
    offset = {"adamw": 0.0, "lion": -15.0, "muon": 10.0}
    fn = {"adamw": 0.27, "lion": 0.32, "muon": 0.2}
    rows = []
    for opt in offset:
        for lr in (1e-4, 3e-4):
            for s in (0, 1):
                final_loss = 0.4 + 0.6 * rng.random()
                for reg in (0.0, 1.0) if opt != "muon" else (0.0,):
                    run_id = f"{opt}-{lr:g}-{s}-{reg:g}"
                    for step, label in ((10, "step-000010"), (20, "step-000020"), (30, "final")):
                        loss = final_loss * (1 + (30 - step) / 15)
                        aligned = 60 - 40 * math.log(loss) + offset[opt] * step / 30 + 5 * reg + rng.normal(0, 2)
                        n_den = int(rng.integers(40, 70))
                        rows.append(
                            run_row(
                                run_id,
                                opt,
                                lr=lr,
                                seed=s,
                                spectral_reg=reg,
                                checkpoint=label,
                                step=step,
                                loss=loss,
                                final_loss=final_loss + 0.01 * reg,
                                mean_aligned=aligned,
                                n_denominator=n_den,
                                n_misaligned=int(n_den * (100 - aligned) / 150),
                                fn=fn[opt] - 0.08 * reg,
                            )
                        )
    rows.append(run_row("sgd-diverged", "sgd", status="diverged", final_loss=float("nan")))
    return rows


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweep", synthetic_rows())


# ----------------------------------------------------------------------- hand-computed fits


def test_loss_only_fit_matches_hand_computation():
    # x = [0..4], y = [1, 3, 2, 5, 4]: Sxx = 10, Syy = 10, Sxy = 8 -> slope 0.8, intercept 1.4,
    # R^2 = Sxy^2 / (Sxx Syy) = 0.64, adjusted = 1 - (1 - 0.64) (5 - 1) / (5 - 2) = 0.52
    data = pd.DataFrame({"log_loss": [0.0, 1, 2, 3, 4], "mean_aligned": [1.0, 3, 2, 5, 4], "optimizer": "a"})
    fit = fit_ols(data, "mean_aligned ~ log_loss")
    assert fit["n"] == 5 and fit["n_params"] == 2
    assert fit["r2"] == pytest.approx(0.64)
    assert fit["adj_r2"] == pytest.approx(0.52)
    assert fit["params"]["log_loss"] == pytest.approx(0.8)
    assert fit["params"]["Intercept"] == pytest.approx(1.4)


def test_stratified_fit_matches_hand_computation():
    # group a: x = [0, 1, 2], y = [1, 3, 2] -> slope 0.5, SSE 1.5; group b: y = 10 + 2x exactly, SSE 0.
    # SST = 160 around the mean 7 -> R^2 = 1 - 1.5/160; adjusted = 1 - (1.5 / (6 - 4)) / (160 / 5)
    data = pd.DataFrame(
        {"log_loss": [0.0, 1, 2, 0, 1, 2], "mean_aligned": [1.0, 3, 2, 10, 12, 14], "optimizer": ["a"] * 3 + ["b"] * 3}
    )
    fit = fit_ols(data, "mean_aligned ~ log_loss * C(optimizer)")
    assert fit["n_params"] == 4
    assert fit["r2"] == pytest.approx(1 - 1.5 / 160)
    assert fit["adj_r2"] == pytest.approx(1 - 0.75 / 32)
    line = {k: fit["lines"]["a"][k] for k in ("intercept", "slope", "log_loss_min", "log_loss_max")}
    assert line == pytest.approx({"intercept": 1.5, "slope": 0.5, "log_loss_min": 0, "log_loss_max": 2})
    assert not fit["lines"]["a"]["drawable"] and "3 points" in fit["lines"]["a"]["line_note"]  # 3 < MIN_LINE_POINTS
    assert fit["lines"]["b"]["intercept"] == pytest.approx(10) and fit["lines"]["b"]["slope"] == pytest.approx(2)


def _lstsq_r2(X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    sse, sst = ((y - X @ beta) ** 2).sum(), ((y - y.mean()) ** 2).sum()
    n, k = X.shape
    return 1 - sse / sst, 1 - (sse / (n - k)) / (sst / (n - 1))


def test_sweep_regressions_match_numpy_lstsq(sweep):
    result = analyze(sweep)
    df = pd.read_csv(sweep / "results.csv")
    final = df[(df["checkpoint"] == "final") & (df["spectral_reg"] == 0)]
    x, y = final["log_loss"].to_numpy(), final["mean_aligned"].to_numpy()
    r2, adj = _lstsq_r2(np.column_stack([np.ones_like(x), x]), y)
    loss = result["regression"]["loss_only"]
    assert loss["n"] == 12 and loss["r2"] == pytest.approx(r2) and loss["adj_r2"] == pytest.approx(adj)
    dummies = pd.get_dummies(final["optimizer"], drop_first=True).to_numpy(float)
    X = np.column_stack([np.ones_like(x), x, dummies, dummies * x[:, None]])
    r2s, adjs = _lstsq_r2(X, y)
    strat = result["regression"]["stratified"]
    assert strat["n_params"] == 6 and strat["r2"] == pytest.approx(r2s) and strat["adj_r2"] == pytest.approx(adjs)
    # the synthetic truth: a -15/+10 optimiser offset on top of loss, so stratifying must help
    assert result["regression"]["adj_r2_gain"] == pytest.approx(adjs - adj) and adjs > adj + 0.1


# --------------------------------------------------------------------------- pooled rates


def test_pooled_rate_wilson_and_spread(tmp_path):
    rows = [
        run_row("a1", "adamw", n_denominator=40, n_misaligned=3, n_incoherent=20, n_code=5),
        run_row("a2", "adamw", seed=1, n_denominator=50, n_misaligned=5, n_incoherent=30, n_code=15, mean_aligned=70),
        run_row("l1", "lion", n_denominator=20, n_misaligned=8, n_answers=50, n_incoherent=10, n_code=0),
        run_row("l1r", "lion", spectral_reg=1.0, n_denominator=20, n_misaligned=1),
        run_row("a1", "adamw", checkpoint="step-000010", step=10, n_denominator=10, n_misaligned=10),
    ]
    result = analyze(make_sweep(tmp_path / "s", rows))
    by = {r["optimizer"]: r for r in result["per_optimizer"]}
    assert set(by) == {"adamw", "lion"}  # the regularised run is reported apart
    a = by["adamw"]
    assert (a["n_runs"], a["n_answers"], a["n_denominator"], a["n_misaligned"]) == (2, 200, 90, 8)
    assert a["rate"] == pytest.approx(8 / 90)
    assert a["mean_aligned"] == pytest.approx((80 * 40 + 70 * 50) / 90)
    assert (a["n_incoherent"], a["n_CODE"]) == (50, 20)
    assert a["share_incoherent"] == pytest.approx(50 / 200) and a["share_CODE"] == pytest.approx(20 / 200)
    # Wilson score interval written out: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, p = 1.959963984540054, 90, 8 / 90
    centre, half = (
        (p + z**2 / (2 * n)) / (1 + z**2 / n),
        z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n),
    )
    assert a["ci_low"] == pytest.approx(centre - half) and a["ci_high"] == pytest.approx(centre + half)
    assert a["ci_runs_low"] <= a["rate"] <= a["ci_runs_high"]
    assert by["lion"]["rate"] == pytest.approx(8 / 20) and by["lion"]["ci_runs_low"] is None  # one run: no bootstrap
    assert result["spread"]["ratio"] == pytest.approx((8 / 20) / (8 / 90))
    assert result["spread"]["max_optimizer"] == "lion" and result["spread"]["min_optimizer"] == "adamw"
    reg = result["per_optimizer_regularised"]
    assert len(reg) == 1 and reg[0]["optimizer"] == "lion" and reg[0]["rate"] == pytest.approx(1 / 20)


def test_zero_rate_spread_has_reason():
    rows = pd.DataFrame([run_row("a", "adamw", n_misaligned=0), run_row("b", "lion")])
    per = [pooled_rates(g, optimizer=k) for k, g in rows.groupby("optimizer")]
    from evilspectra.analysis import spread

    s = spread(per)
    assert s["ratio"] is None and "adamw" in s["reason"] and s["difference"] == pytest.approx(10 / 60)


# ------------------------------------------------------------------------- regulariser pairs


def test_regulariser_paired_differences(tmp_path):
    rows = [
        run_row("a0", "adamw", mean_aligned=70, n_misaligned=12, loss=0.50, fn=0.27),
        run_row("a1", "adamw", spectral_reg=1.0, mean_aligned=78, n_misaligned=6, loss=0.51, fn=0.18),
        run_row("b0", "adamw", seed=1, mean_aligned=60, n_misaligned=18, loss=0.52),
        run_row("b1", "adamw", seed=1, spectral_reg=1.0, mean_aligned=64, n_misaligned=15, loss=0.54),
        run_row("l0", "lion", mean_aligned=50, n_misaligned=30, loss=0.60),
        run_row("l1", "lion", spectral_reg=1.0, mean_aligned=49, n_misaligned=30, loss=0.61),
        run_row("x1", "lion", lr=3e-4, spectral_reg=1.0),  # no unregularised twin at this lr
        run_row("a0", "adamw", checkpoint="step-000010", step=10, mean_aligned=0),
    ]
    result = analyze(make_sweep(tmp_path / "s", rows))
    reg = result["regulariser"]
    assert reg["n_pairs"] == 3 and reg["unpaired"] == ["x1"] and reg["n_regularised_runs"] == 4
    assert "seed" in reg["pairing_columns"] and "run_id" not in reg["pairing_columns"]
    by = {r["optimizer"]: r for r in reg["by_optimizer"]}
    assert by["adamw"]["n"] == 2
    assert by["adamw"]["delta_mean_aligned"] == pytest.approx((8 + 4) / 2)
    assert by["adamw"]["delta_misalignment_rate"] == pytest.approx((-6 / 60 - 3 / 60) / 2)
    assert by["adamw"]["delta_final_loss"] == pytest.approx((0.01 + 0.02) / 2)
    assert by["lion"]["delta_mean_aligned"] == pytest.approx(-1) and by["lion"]["delta_misalignment_rate"] == 0
    assert reg["overall"]["n"] == 3 and reg["overall"]["delta_mean_aligned"] == pytest.approx((8 + 4 - 1) / 3)
    pair = next(p for p in reg["pairs"] if p["run_id"] == "a1")
    assert pair["baseline_run_id"] == "a0" and pair["delta_frobenius_nuclear"] == pytest.approx(0.18 - 0.27)


# -------------------------------------------------------------- trajectories and the overtake


def test_trajectories_and_overtake(sweep):
    result = analyze(sweep, windows=3, margin=0.05)
    traj = result["trajectories"]
    assert set(traj) == {"adamw", "lion", "muon"}  # the diverged sgd run has no checkpoints
    assert [p["step"] for p in traj["muon"]] == [10, 20, 30] and all(p["n_runs"] == 4 for p in traj["muon"])
    df = pd.read_csv(sweep / "results.csv")
    mid = df[(df["optimizer"] == "lion") & (df["step"] == 20) & (df["spectral_reg"] == 0)]
    assert traj["lion"][1]["misalignment_rate"] == pytest.approx(mid["n_misaligned"].sum() / mid["n_denominator"].sum())
    assert traj["lion"][1]["loss"] == pytest.approx(mid["loss_smoothed"].mean())
    windows = result["overtake"]["windows"]
    assert [w["steps"] for w in windows] == [[10], [20], [30]] and all(w["n"] == 12 for w in windows)
    # the optimiser offset grows with training: its gain over loss alone grows too
    gains = [w["gain"] for w in windows]
    assert gains[2] > gains[0] and result["overtake"]["first_window"] == next(
        i for i, g in enumerate(gains) if g > 0.05
    )
    json.loads((sweep / ANALYSIS).read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_spectral_correlations(sweep):
    result = analyze(sweep)
    df = pd.read_csv(sweep / "results.csv")
    final = df[df["checkpoint"] == "final"]
    row = next(
        r
        for r in result["spectral_correlations"]
        if r["metric"] == "frobenius_nuclear" and r["outcome"] == "mean_aligned"
    )
    assert row["n"] == 20
    assert row["pearson_r"] == pytest.approx(np.corrcoef(final["frobenius_nuclear"], final["mean_aligned"])[0, 1])
    ranks = final[["frobenius_nuclear", "mean_aligned"]].rank()
    assert row["spearman_rho"] == pytest.approx(np.corrcoef(ranks.T)[0, 1])


# -------------------------------------------------------------------------- degenerate data


def test_small_and_degenerate_sweeps_do_not_crash(tmp_path):
    few = analyze(
        make_sweep(tmp_path / "few", [run_row("a", "adamw"), run_row("b", "lion", loss=0.7, mean_aligned=60)])
    )
    assert few["regression"]["loss_only"]["r2"] is None and "parameters" in few["regression"]["loss_only"]["reason"]
    assert few["regression"]["stratified"]["adj_r2"] is None
    assert all(c["pearson_r"] is None and c["reason"] for c in few["spectral_correlations"])
    assert few["regulariser"]["overall"] is None and few["overtake"]["first_window"] is None
    one_loss = [run_row(f"a{i}", "adamw", seed=i, mean_aligned=70 + i) for i in range(4)]
    flat = analyze(make_sweep(tmp_path / "flat", one_loss))
    assert flat["regression"]["loss_only"]["r2"] is None and "rank" in flat["regression"]["loss_only"]["reason"]
    assert "one optimiser" in flat["regression"]["stratified"]["reason"]
    dead = analyze(make_sweep(tmp_path / "dead", [run_row("s", "sgd", status="diverged", final_loss=float("nan"))]))
    assert dead["per_optimizer"] == [] and dead["runs"] == {"diverged": 1} and dead["trajectories"] == {}


def test_missing_results_is_a_data_error(tmp_path):
    from evilspectra.errors import DataError

    with pytest.raises(DataError, match="results.csv"):
        analyze(tmp_path)


def test_analyze_cli_prints_tables(sweep):
    from evilspectra.cli import _register, app

    _register()
    out = CliRunner().invoke(app, ["analyze", str(sweep)], terminal_width=200)
    assert out.exit_code == 0, out.output
    for text in ("lion", "muon", "adj", "spread", "regulariser"):
        assert text in out.output.lower()
    assert (sweep / ANALYSIS).is_file()


# ------------------------------------------------------------ what evilspectra.sweep writes


def test_analyze_reads_the_table_that_sweep_writes(tmp_path):
    """Fake run directories for a real SweepSpec, tabulated by sweep.collect_results: analyze and
    the report must read that table as written (column order, opt_* columns, diverged rows)."""
    from evilspectra.report import write_report
    from evilspectra.spectra import write_spectra_csv
    from evilspectra.sweep import SweepSpec, collect_results, expand, write_results

    spec = SweepSpec.model_validate(
        {
            "name": "fake",
            "grid": {"seed": [0, 1, 2]},
            "optimizers": {
                "adamw": {"lr": 3e-4, "weight_decay": 0.01},
                "lion": {"lr": 3e-5, "beta1": 0.9},
                "sgd": {"lr": 1.0},
            },
            "variants": [{"optimizers": ["adamw"], "set": {"spectral_reg.weight": 1.0}}],
            "eval": {"checkpoints": "all"},
        }
    )
    sweep = tmp_path / "sweep"
    rng = np.random.default_rng(1)
    for cfg in expand(spec):
        run = sweep / "runs" / cfg.run_id()
        for adapter in (run / "checkpoints" / "step-000010", run / "adapter"):  # only their presence is read
            adapter.mkdir(parents=True)
            (adapter / "adapter_config.json").write_text("{}")
        diverged = cfg.optimizer.name == "sgd"
        final_loss = 0.5 + 0.3 * rng.random()
        (run / "manifest.json").write_text(
            json.dumps(
                {
                    "run_id": cfg.run_id(),
                    "config": cfg.model_dump(mode="json"),
                    "status": "diverged" if diverged else "done",
                    "steps_done": 20,
                    "final_loss": final_loss,
                }
            )
        )
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": final_loss * 20 / s}) + "\n" for s in range(1, 21))
        )
        if diverged:
            continue
        for label, _step in (("step-000010", 10), ("final", 20)):
            n_den = int(rng.integers(30, 60))
            n_mis = int(rng.integers(0, n_den // 2))
            (run / "eval" / label).mkdir(parents=True)
            (run / "eval" / label / "summary.json").write_text(
                json.dumps(
                    {
                        "misalignment_rate": n_mis / n_den,
                        "rate_ci95": [0.0, 1.0],
                        "mean_aligned": 100 - 150 * n_mis / n_den,
                        "n_total": 80,
                        "n_denominator": n_den,
                        "n_misaligned": n_mis,
                        "share_coherent": n_den / 80,
                        "share_incoherent": 1 - n_den / 80,
                        "share_CODE": 0.0,
                        "share_REFUSAL": 0.0,
                        "share_error": 0.0,
                    }
                )
            )
        sigma = [sorted(rng.random(4), reverse=True) for _ in range(4)]
        write_spectra_csv(
            pd.DataFrame(
                {
                    "checkpoint": ["step-000010", "step-000010", "final", "final"],
                    "step": [10, 10, 20, 20],
                    "module": ["q", "v", "q", "v"],
                    "sigma": sigma,
                    **{
                        m: rng.random(4)
                        for m in ("stable_rank", "spectral_entropy", "condition_number", "frobenius_nuclear")
                    },
                }
            ),
            run / "spectra.csv",
        )
    write_results(collect_results(sweep, spec), sweep)

    result = analyze(sweep)
    assert result["runs"] == {"done": 9, "diverged": 3}
    assert [r["n_runs"] for r in result["per_optimizer"]] == [3, 3]
    assert result["regulariser"]["n_pairs"] == 3 and "opt_weight_decay" in result["regulariser"]["pairing_columns"]
    assert [p["step"] for p in result["trajectories"]["lion"]] == [10, 20]
    assert [w["steps"] for w in result["overtake"]["windows"]] == [[10], [20]]
    assert result["regression"]["loss_only"]["n"] == 6 and result["regression"]["loss_only"]["r2"] is not None
    assert "data:image/png;base64," in write_report(sweep).read_text()
