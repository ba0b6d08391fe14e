"""The sweep's cost estimate (`sweep --dry-run`): answers to sample, judge calls and GPU hours per
model, computed from the spec alone. It imports no training or model code (no torch, no accelerate),
so a dry run answers at once.
"""

from __future__ import annotations

from evilspectra.config import RunConfig
from evilspectra.evaluate.judge import estimate_calls
from evilspectra.evaluate.questions import load_questions
from evilspectra.evaluate.selection import samples_for, select_questions
from evilspectra.schedule import checkpoint_steps, total_steps
from evilspectra.sweep_spec import SweepSpec


def estimate_judge_calls(spec: SweepSpec, configs: list[RunConfig]) -> tuple[int, int]:
    """(answers to sample, judge calls) for evaluating `configs` (+ the base model) as the sweep would."""
    per_model = estimate_per_model(spec, configs).values()
    return sum(m["answers"] for m in per_model), sum(m["judge_calls"] for m in per_model)


def estimate_per_model(spec: SweepSpec, configs: list[RunConfig]) -> dict[str, dict]:
    """model -> {runs, gpus (per run), answers, judge_calls, gpu_hours} for running `configs` as the
    sweep would (evaluations of the base model included). gpu_hours = runs x GPUs x the model's
    `resources.hours_per_run` (an estimate in the sweep file), None when that is not given."""
    rows: dict[str, int] = {}  # dataset -> row count, read once
    estimates = {}
    for model in dict.fromkeys(c.model for c in configs):  # sweep order
        settings, res = spec.eval_for(model), spec.resources_for(model)
        questions = select_questions(load_questions(settings.questions))
        per_eval = sum(len(q.paraphrases) * samples_for(q, settings) for q in questions)
        runs = [c for c in configs if c.model == model]
        n_evals = 1 if spec.eval_base_model else 0
        for cfg in runs:
            which = settings.checkpoints
            if which != "final" and not cfg.train.max_steps and cfg.dataset not in rows:
                rows[cfg.dataset] = _dataset_rows(cfg)
            steps = total_steps(cfg, rows.get(cfg.dataset, 0))
            ckpts = checkpoint_steps(cfg.train.checkpoints, steps) if which != "final" else []
            n_evals += 1 + (len(ckpts) if which == "all" else len(set(which or []) & set(ckpts)))
        answers = per_eval * n_evals
        hours = len(runs) * res.num_gpus * res.hours_per_run if res.hours_per_run else None
        estimates[model] = {
            "runs": len(runs),
            "gpus": res.num_gpus,
            "answers": answers,
            "judge_calls": estimate_calls(answers),
            "gpu_hours": hours,
        }
    return estimates


def _dataset_rows(cfg: RunConfig) -> int:
    """Rows of a run's dataset, read only when its step count depends on them (no max_steps)."""
    # imported here for start-up speed: evilspectra.data pulls torch and transformers, which a dry
    # run of a sweep with max_steps (every preset) never needs
    from evilspectra.data import load_dataset_spec

    return len(load_dataset_spec(cfg.dataset, seed=cfg.seed).rows)
