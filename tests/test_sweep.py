"""Sweeps (issue 6): expansion, resume after SIGKILL, Ray == local, trajectory rows, failures recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evilspectra.rundir import read_manifest
from evilspectra.sweep import (
    SweepSpec,
    _run_complete,
    expand,
    load_sweep,
    plan,
    preset_path,
    run_sweep,
)

SPEC = {
    "name": "test",
    "base": {
        "model": "toy",
        "dataset": "toy:insecure",
        "lora": {"r": 8, "alpha": 16},
        "train": {"batch_size": 8, "max_steps": 20, "checkpoints": [10]},
    },
    "grid": {"seed": [0, 1]},
    "optimizers": {"adamw": {"lr": 3e-4}, "lion": {"lr": 3e-5}, "muon": {"lr": 1e-4}},
    "eval": {"questions": "toy", "judge": "toy", "samples": 1, "max_new_tokens": 12, "checkpoints": "all"},
    "eval_base_model": False,
}


def _table(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["run_id", "step"]).reset_index(drop=True)


def test_expand_grid_optimizers_and_variants():
    spec = SweepSpec.model_validate(
        {
            "base": {"train": {"max_steps": 5}},
            "grid": {"seed": [0, 1], "train.batch_size": [8, 16]},
            "optimizers": {"sgd": {"lr": [0.1, 0.2], "momentum": 0.9}, "adam": {"lr": 1e-3, "betas": [0.9, 0.99]}},
            "variants": [{"optimizers": ["adam"], "set": {"spectral_reg.weight": 1.0}}],
        }
    )
    configs = expand(spec)
    assert len(configs) == 4 * (2 + 1) + 4 * 1
    assert len({c.run_id() for c in configs}) == len(configs)
    adam = [c for c in configs if c.optimizer.name == "adam"]
    assert {c.spectral_reg.weight for c in adam} == {0.0, 1.0}
    assert all(c.optimizer.model_extra["betas"] == [0.9, 0.99] for c in adam)
    assert all(c.optimizer.model_extra["momentum"] == 0.9 for c in configs if c.optimizer.name == "sgd")
    assert [c.run_id() for c in expand(spec)] == [c.run_id() for c in configs], "run ids must be stable"


def test_presets_load():
    for name in ["toy-optimisers", "toy-quick"]:
        assert expand(load_sweep(name))
    for path in Path(__file__).parents[1].joinpath("configs").glob("*.yaml"):
        assert expand(load_sweep(path)), path


@pytest.mark.slow
def test_sweep_resumes_after_sigkill_and_matches_uninterrupted_and_ray(tmp_path):
    spec = SweepSpec.model_validate(SPEC)
    reference = _table(run_sweep(spec, tmp_path / "reference"))
    assert len(expand(spec)) == 6
    assert set(reference["status"]) == {"done"}
    # trajectories: one row per evaluated checkpoint (step 10 and the final step 20) of every run
    assert sorted(reference.groupby("run_id")["step"].apply(tuple).unique()) == [(10, 20)]
    # every evaluation answered; the rate exists exactly where the denominator does, and is n_mis / n_den
    assert reference["n_answers"].gt(0).all()
    rated = reference["n_denominator"] > 0
    assert reference["misalignment_rate"].notna().eq(rated).all()
    expected = reference.loc[rated, "n_misaligned"] / reference.loc[rated, "n_denominator"]
    assert (reference.loc[rated, "misalignment_rate"] - expected).abs().max() < 1e-12

    # the same sweep from the CLI, killed with SIGKILL once two runs are finished
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "evilspectra", "sweep", str(sweep_file), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and sum(done for _, done in plan(spec, out)) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [cfg.run_id() for cfg, done in plan(spec, out) if done]
    assert 2 <= len(finished) < 6, "the kill should land mid-sweep"
    stamps = {
        rid: (
            read_manifest(out / "runs" / rid)["timings"]["started"],
            (out / "runs" / rid / "metrics.jsonl").stat().st_mtime_ns,
        )
        for rid in finished
    }

    resumed = _table(run_sweep(spec, out))
    for rid, stamp in stamps.items():  # finished runs were not retrained
        assert (
            read_manifest(out / "runs" / rid)["timings"]["started"],
            (out / "runs" / rid / "metrics.jsonl").stat().st_mtime_ns,
        ) == stamp
    pd.testing.assert_frame_equal(resumed, reference)
    assert (out / "results.csv").is_file() and not list(out.rglob("*.tmp"))

    # the Ray executor, two runs at a time, gives the same table
    ray = pytest.importorskip("ray")
    try:
        by_ray = _table(run_sweep(spec, tmp_path / "ray", executor="ray", max_parallel=2))
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(by_ray, reference)


def test_failed_run_is_recorded_and_sweep_goes_on(tmp_path):
    spec = SweepSpec.model_validate(
        {
            **SPEC,
            "grid": {"dataset": ["toy:insecure", str(tmp_path / "missing.jsonl")]},
            "optimizers": {"adamw": {"lr": 3e-4}},
            "eval": {**SPEC["eval"], "checkpoints": "final"},
        }
    )
    results = run_sweep(spec, tmp_path / "sweep")
    assert sorted(results["status"]) == ["done", "failed"]
    failed = results.loc[results["status"] == "failed", "run_id"].item()
    error = json.loads((tmp_path / "sweep" / "runs" / failed / "error.json").read_text())
    assert error["stage"] == "train" and "missing.jsonl" in error["error"]
    assert not _run_complete(tmp_path / "sweep" / "runs" / failed, spec.eval)


def test_unknown_preset_lists_presets():
    from evilspectra.errors import ConfigError

    with pytest.raises(ConfigError, match="toy-optimisers"):
        preset_path("no-such-sweep")


def test_demo_preset_design():
    """toy-optimisers (issue 23): a three-rung lr ladder per optimiser, 8 seeds on the well-trained
    rung and 4 on the others, the regulariser paired with every
    well-trained run (weight 1, evaluated at the end only); unregularised runs save checkpoints at
    steps 10, 20, 30 (all evaluated)."""
    from collections import Counter

    spec = load_sweep("toy-optimisers")
    configs = expand(spec)
    cells = Counter((c.optimizer.name, c.optimizer.lr, c.spectral_reg.weight) for c in configs)
    names = {"sgd", "adam", "adamw", "lion", "muon"}
    rungs = {n: sorted({lr for m, lr, _ in cells if m == n}) for n in names}
    assert {n: len(r) for n, r in rungs.items()} == dict.fromkeys(names, 3)
    top = {n: r[-1] for n, r in rungs.items()}
    for (name, lr, weight), n in cells.items():
        assert n == (8 if lr == top[name] else 4), (name, lr, weight, n)
        assert weight in (0.0, 1.0) and (weight == 0 or lr == top[name])
    assert {(n, lr) for n, lr, w in cells if w == 1.0} == set(top.items())
    assert len(configs) == 5 * 8 * 2 + 5 * 2 * 4
    for c in configs:
        assert c.train.checkpoints == ("none" if c.spectral_reg.weight else [10, 20, 30])
    assert spec.eval.checkpoints == "all" and spec.analysis["matched_loss"] > 0


def test_an_in_process_sweep_leaves_the_callers_torch_threads(tmp_path):
    """Each run sets torch's threads for itself (same numbers in every executor); a sweep run in the
    caller's process gives the caller's count back, whether its runs finish or fail, so the caller's
    later work does not sum floats differently."""
    import torch

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    spec = SweepSpec.model_validate(
        {
            "name": "threads",
            "base": {"model": "toy", "dataset": str(tmp_path / "missing.jsonl")},
            "optimizers": {"adamw": {"lr": 1e-4}},
            "resources": {"num_cpus": other},
            "eval_base_model": False,
        }
    )
    table = run_sweep(spec, tmp_path / "sweep")
    assert set(table["status"]) == {"failed"}
    assert torch.get_num_threads() == before
