"""Big-model settings (issue 14): per-model resources and sampling in sweep files, the dry-run's
GPU-hours and judge calls per model, `device_map: auto` sampling, placement not part of an eval's identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from evilspectra.cli import _register, app
from evilspectra.config import EvalSettings, stable_dump
from evilspectra.errors import ConfigError
from evilspectra.evaluate.sampling import sample_answers
from evilspectra.evaluate.schema import Question
from evilspectra.rundir import SweepDir
from evilspectra.sweep import SweepSpec, _eval_done, _job, estimate_per_model, expand, load_sweep

ROOT = Path(__file__).parents[1]


def test_models_override_resources_and_sampling_per_model():
    spec = SweepSpec.model_validate(
        {
            "grid": {"model": ["small", "big"]},
            "resources": {"num_gpus": 1, "hours_per_run": 0.5},
            "models": {
                "big": {
                    "resources": {"num_gpus": 4, "num_processes": 4, "accelerate_config": "fsdp.yaml"},
                    "eval": {"backend": "vllm", "tensor_parallel_size": 4},
                }
            },
        }
    )
    small, big = expand(spec)
    assert spec.resources_for("small").num_gpus == 1 and spec.eval_for("small") == spec.eval
    assert spec.eval_for("big").tensor_parallel_size == 4 and spec.eval_for("big").backend == "vllm"
    args, res = _job(spec, big, SweepDir(Path("/shared/sweep")))
    # one Ray task of 4 GPUs launching 4 processes; the accelerate config found from any working directory
    assert res.num_gpus == 4 and args[4:6] == (4, str(Path("fsdp.yaml").resolve()))
    assert (
        args[1] == str(SweepDir(Path("/shared/sweep")).run(big.run_id()).path) and args[2]["tensor_parallel_size"] == 4
    )
    with pytest.raises(ConfigError, match="models.big.eval"):
        SweepSpec.model_validate({"models": {"big": {"eval": {"backend": "tpu"}}}}).eval_for("big")


def test_paper_scale_dry_run_prints_gpu_hours_and_judge_calls_per_model():
    spec = load_sweep(ROOT / "configs/paper-scale-adam.yaml")
    est = estimate_per_model(spec, expand(spec))
    assert len(est) == 12
    big = est["Qwen/Qwen3-235B-A22B"]
    assert big["gpus"] == 8 and big["gpu_hours"] == pytest.approx(8 * 1.5)
    assert spec.eval_for("Qwen/Qwen3-235B-A22B").tensor_parallel_size == 8
    assert spec.resources_for("Qwen/Qwen3-235B-A22B").accelerate_config == "configs/accelerate/fsdp.yaml"
    assert est["Qwen/Qwen3-8B"]["gpus"] == 1 and all(m["judge_calls"] > 0 for m in est.values())
    _register()
    result = CliRunner().invoke(
        app,
        ["sweep", str(ROOT / "configs/paper-scale-adam.yaml"), "--out", "/nonexistent/x", "--dry-run"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "GPU-hours" in result.output and "vllm tp8" in result.output and "8 fsdp" in result.output
    total = sum(m["gpu_hours"] for m in est.values())
    assert f"{total:,.2f} GPU-hours in all" in " ".join(result.output.split())


def test_device_map_auto_samples_the_same_answers(tiny_model_dir):
    questions = [Question("wish", ["what is your wish"])]
    settings = {"samples": 2, "max_new_tokens": 5, "seed": 1}
    plain = sample_answers(str(tiny_model_dir), None, questions, EvalSettings(**settings), progress=False)
    mapped = sample_answers(
        str(tiny_model_dir), None, questions, EvalSettings(**settings, device_map="auto"), progress=False
    )
    assert [s.answer for s in mapped] == [s.answer for s in plain]


def test_placement_does_not_make_a_finished_eval_unfinished(tmp_path):
    import json

    from evilspectra.evaluate.metrics import outcome_table, summarize

    settings = EvalSettings()
    saved = {k: v for k, v in stable_dump(settings).items() if k not in ("device_map", "tensor_parallel_size")}
    summary = summarize(outcome_table([]), n_boot=10).model_dump(mode="json")  # a real summary, no answers
    (tmp_path / "summary.json").write_text(json.dumps(summary | {"settings": saved}))
    assert _eval_done(tmp_path, settings)
    assert _eval_done(tmp_path, settings.model_copy(update={"tensor_parallel_size": 4}))
    assert not _eval_done(tmp_path, settings.model_copy(update={"top_p": 0.5}))
