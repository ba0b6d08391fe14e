"""Sweeps: a grid of runs, each train -> spectra -> eval in its RunDir under the SweepDir, and a results table.

The sweep file (YAML) names a base RunConfig, grid axes over any config key, per-optimiser
hyperparameter lists, extra variants (e.g. the spectral regulariser on some optimisers), the
evaluation settings and the resources of one run. Every stage is skipped when its output is already
on disk, so running the same command again resumes a killed sweep without redoing finished work.
"""

from __future__ import annotations

import copy
import itertools
import json
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evilspectra.config import (
    PLACEMENT_FIELDS,
    EvalSettings,
    RunConfig,
    read_yaml,
    set_path,
    stable_dump,
    validate_model,
)
from evilspectra.errors import ConfigError, DataError
from evilspectra.evaluate.endpoint import redact_settings
from evilspectra.evaluate.runner import select_adapters
from evilspectra.quiet import quiet_hf
from evilspectra.rundir import (
    FINISHED,
    OPT_PREFIX,
    SPECTRAL_METRICS,
    EvalDir,
    ResultConfig,
    RunDir,
    RunLockedError,
    SweepDir,
    atomic_write_file,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_manifest,
    read_metrics,
    summary_columns,
)
from evilspectra.rundir import RESULTS as RESULTS


class Variant(BaseModel):
    """Extra copies of the runs of some optimisers with config overrides, e.g. the regulariser on."""

    model_config = ConfigDict(extra="forbid")
    optimizers: list[str] | None = Field(None, description="optimiser names it applies to; None = all")
    where: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted key -> values: only points with one of these values (e.g. a lr)"
    )
    set: dict[str, Any]

    def applies(self, point: dict[str, Any]) -> bool:
        named = self.optimizers is None or point.get("optimizer.name") in self.optimizers
        return named and all(point.get(key) in values for key, values in self.where.items())


class Resources(BaseModel):
    """What one run needs; a Ray task holds these for the whole run (train, spectra, eval)."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1, gt=0, description="CPU threads (and Ray CPUs) of one run")
    num_gpus: float = Field(0, ge=0)
    num_processes: int = Field(1, ge=1, description="training processes (one per GPU) through accelerate launch")
    accelerate_config: str | None = Field(
        None, description="accelerate config of a multi-process run, e.g. configs/accelerate/fsdp.yaml; None: DDP"
    )
    hours_per_run: float | None = Field(None, gt=0, description="estimated wall hours of one run, for --dry-run")


class ModelSettings(BaseModel):
    """Settings for the runs of one model: its resources and its sampling (eval field overrides)."""

    model_config = ConfigDict(extra="forbid")
    resources: Resources | None = None
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalSettings fields, e.g. backend, device_map")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "sweep"
    base: dict[str, Any] = Field(default_factory=dict, description="RunConfig fields shared by all runs")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted config key -> values")
    optimizers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="optimiser name -> hyperparameters; list values are grid axes"
    )
    variants: list[Variant] = Field(default_factory=list)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    eval_base_model: bool = Field(True, description="also evaluate the base model once, as a reference")
    resources: Resources = Field(default_factory=Resources)
    models: dict[str, ModelSettings] = Field(default_factory=dict, description="model -> its resources and sampling")
    analysis: dict[str, float] = Field(
        default_factory=dict,
        description="statistics fixed before the data: matched_loss (nats), the training loss the claims compare at",
    )

    @model_validator(mode="after")
    def _no_empty_axis(self) -> SweepSpec:
        """An axis without values makes a sweep of no runs (an empty results table that looks finished)."""
        axes = {f"grid.{key}": values for key, values in self.grid.items()}
        for name, hparams in self.optimizers.items():
            axes |= {f"optimizers.{name}.{k}": v for k, v in hparams.items() if isinstance(v, list) and k != "betas"}
        empty = [axis for axis, values in axes.items() if not values]
        if empty:
            raise ValueError(f"{empty[0]}: an empty list of values makes no runs; give at least one value")
        return self

    def resources_for(self, model: str) -> Resources:
        settings = self.models.get(model)
        return settings.resources if settings and settings.resources else self.resources

    def eval_for(self, model: str) -> EvalSettings:
        """The sweep's eval settings with the model's overrides (models.MODEL.eval)."""
        overrides = self.models[model].eval if model in self.models else {}
        if not overrides:
            return self.eval
        tree = self.eval.model_dump(mode="json") | overrides
        return validate_model(EvalSettings, tree, source=f"sweep models.{model}.eval")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep YAML (or a preset name such as `toy-optimisers`)."""
    path = preset_path(str(path))
    tree = read_yaml(path)
    if not tree:  # an empty file would silently run one default run
        raise ConfigError(f"{path}: empty sweep file; expected a mapping with base, grid and/or optimizers")
    return validate_model(SweepSpec, tree, source=str(path))


# ------------------------------------------------------------------------------------ expansion


def _product(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _optimizer_points(optimizers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    if not optimizers:
        return [{}]
    points = []
    for name, hparams in optimizers.items():
        axes = {f"optimizer.{k}": v if isinstance(v, list) and k != "betas" else [v] for k, v in hparams.items()}
        points += [{"optimizer.name": name, **p} for p in _product(axes)]
    return points


def expand(spec: SweepSpec) -> list[RunConfig]:
    """All run configs of the sweep, in a stable order, without duplicates."""
    points = [{**g, **o} for o in _optimizer_points(spec.optimizers) for g in _product(spec.grid)]
    for variant in spec.variants:
        points += [{**p, **variant.set} for p in points if variant.applies(p)]
    configs, seen = [], set()
    for i, point in enumerate(points):
        tree = copy.deepcopy(spec.base)
        for key, value in point.items():
            set_path(tree, key, value)
        cfg = validate_model(RunConfig, tree, source=f"sweep run {i + 1} ({point})")
        if cfg.run_id() not in seen:
            seen.add(cfg.run_id())
            configs.append(cfg)
    return configs


# ----------------------------------------------------------------------------------- one run


def _public_spec(spec: SweepSpec) -> dict:
    """The spec as the sweep directory records it: every judge URL without credentials."""
    return redact_settings(spec.model_dump(mode="json"))


def _eval_done(out: Path, settings: EvalSettings) -> bool:
    """Finished: a summary made with these settings (placement and retry budget aside; the judge's
    URL compared without credentials) in which every answer was judged: no judge error and no reply
    without a number (`n_judge_retry`; `n_error` in summaries written before it)."""
    summary = read_json(EvalDir(out).summary)
    if not summary or not isinstance(summary.get("settings"), dict):
        return False
    if summary.get("n_judge_retry", summary.get("n_error", 0)):
        return False
    ignored = PLACEMENT_FIELDS | {"judge_max_retries", "judge_backoff"}
    saved = {k: v for k, v in redact_settings(summary["settings"]).items() if k not in ignored}
    wanted = redact_settings(stable_dump(settings))
    return saved == {k: v for k, v in wanted.items() if k not in ignored}


MISMATCH = "mismatch"  # the run directory holds another configuration's run
BUSY = "busy"  # another process holds the run directory's lock


def manifest_mismatch(run: RunDir, cfg: RunConfig) -> str | None:
    """Why `run` holds another configuration than `cfg` (a run trained into the sweep's directory by
    hand, or a hand-edited manifest), or None when it holds `cfg`'s run or nothing yet."""
    manifest = read_manifest(run.path)
    if not manifest:
        return None
    try:
        recorded = RunConfig.model_validate(manifest.get("config") or {}).run_id()
    except ValueError:
        recorded = None
    if manifest.get("run_id") == recorded == cfg.run_id():
        return None
    return (
        f"{run.manifest_path}: run_id {manifest.get('run_id')!r} (config {recorded or 'unreadable'}) is not the "
        f"sweep's {cfg.run_id()!r}; another configuration was trained there: move it away to let the sweep run it"
    )


@contextmanager
def restored_torch_threads() -> Iterator[None]:
    """Give the caller its torch thread count back after runs done in its own process (each run
    sets its own); a pool or Ray worker keeps the count its runs set, as nothing else runs there."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_one(
    cfg_json: dict,
    run_dir: str,
    eval_json: dict,
    threads: int,
    processes: int = 1,
    accelerate_config: str | None = None,
    report_to: str = "none",
) -> dict:
    """Train -> spectra -> eval for one run, skipping every stage already on disk.

    Module-level and fed plain JSON so it runs unchanged in this process, a process pool or Ray.
    `processes` > 1 trains through `accelerate launch` (evilspectra.launch) in the task's GPUs.
    Errors are recorded in the run's error file and returned, never raised: a sweep keeps going.
    `report_to`: the tracker that receives the training metrics and every new evaluation's EM results.
    """
    import torch

    from evilspectra.evaluate.runner import evaluate
    from evilspectra.integrations.trackers import report_eval
    from evilspectra.spectra import run_spectra
    from evilspectra.train import train

    quiet_hf()  # worker processes start with HF's defaults
    torch.set_num_threads(max(1, int(threads)))  # same threads in every executor -> same numbers
    cfg, settings, run = RunConfig.model_validate(cfg_json), EvalSettings.model_validate(eval_json), RunDir(run_dir)
    stage = "train"
    try:
        with run.lock():  # one process per run directory
            mismatch = manifest_mismatch(run, cfg)
            if mismatch:  # a run trained there by hand: neither retrained over nor reported as this config
                return {"run_id": cfg.run_id(), "status": MISMATCH, "error": mismatch}
            manifest = read_manifest(run.path)
            if not manifest or manifest.get("status") not in FINISHED:
                if processes > 1:
                    from evilspectra.launch import launch_train

                    config = Path(accelerate_config) if accelerate_config else None
                    launch_train(cfg, run.path, processes, config, report_to)
                else:
                    train(cfg, run.path, report_to=report_to)
                manifest = read_manifest(run.path)
            run.error.unlink(missing_ok=True)
            if manifest["status"] != "done":
                return {"run_id": cfg.run_id(), "status": manifest["status"]}
            stage = "spectra"
            if not run.spectra.is_file():
                run_spectra(run.path)
            stage = "eval"
            settings = settings.with_trained_template(cfg.chat_template_kwargs)  # prompts as in training
            for label, step, adapter in select_adapters(run.path, settings.checkpoints):
                out = run.eval_dir(label).path
                if not _eval_done(out, settings):
                    evaluate(cfg.model, adapter, settings, out, progress=False)
                    report_eval(report_to, out, run.path, label, step, cfg.model)
            return {"run_id": cfg.run_id(), "status": "done"}
    except RunLockedError as exc:  # another sweep or train owns the run: leave it to that process
        return {"run_id": cfg.run_id(), "status": BUSY, "error": str(exc)}
    except Exception as exc:  # recorded and reported; the sweep moves on
        atomic_write_json(
            run.error,
            {"stage": stage, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
        )
        return {"run_id": cfg.run_id(), "status": "failed", "stage": stage, "error": f"{type(exc).__name__}: {exc}"}


def eval_base(model: str, settings: EvalSettings, out: Path, report_to: str = "none") -> None:
    from evilspectra.evaluate.runner import evaluate
    from evilspectra.integrations.trackers import report_eval

    if not _eval_done(out, settings):
        evaluate(model, None, settings, out, progress=False)
        report_eval(report_to, out, None, "base", 0, model)


# ---------------------------------------------------------------------------------- executors

# on_done(result) is called as each run finishes
DoneFn = Callable[[dict], None]


# a job: run_one's arguments and the resources the run holds
Job = tuple[tuple, Resources]
RAY_RETRIES = 3  # a run whose node dies is rescheduled (and resumes) up to this many times


def run_local(jobs: list[Job], max_parallel: int, on_done: DoneFn) -> None:
    if max_parallel <= 1:
        with restored_torch_threads():
            for args, _ in jobs:
                on_done(run_one(*args))
        return
    pool = ProcessPoolExecutor(max_parallel, mp_context=get_context("spawn"), initializer=_die_on_interrupt)
    try:
        for fut in as_completed([pool.submit(run_one, *args) for args, _ in jobs]):
            on_done(fut.result())
    except BaseException:  # Ctrl-C (or a crash): stop the runs in flight, start none of the queued ones
        workers = list(pool._processes.values())  # the pool has no public way to stop a running call
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        raise
    pool.shutdown()


def _die_on_interrupt() -> None:
    """A pool worker dies at once on Ctrl-C, as if killed (its run stays unfinished and is redone on
    resume), instead of handing the interrupt back to the pool and taking the next queued run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_ray(jobs: list[Job], max_parallel: int, address: str | None, on_done: DoneFn) -> None:
    """Each run one Ray task holding its resources (a multi-GPU run: one task with N GPUs that
    launches the sharded trainer); at most `max_parallel` in flight. With `address` the tasks run on
    that cluster's nodes, which must see the sweep directory at the same path (docs/scale.md)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--executor ray needs Ray: pip install 'evilspectra[ray]'") from exc
    if not ray.is_initialized():
        cpus = max(1, int(max_parallel * max((r.num_cpus for _, r in jobs), default=1)))
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                **({} if address else {"num_cpus": cpus}),
            )
        except Exception as exc:
            if _refused_token(exc):
                raise ConfigError(
                    f"the Ray cluster at {address} refused this machine's token: copy the cluster's token "
                    "(the head's ~/.ray/auth_token, made by `ray get-auth-token --generate`) here and point "
                    "RAY_AUTH_TOKEN_PATH at it, or set RAY_AUTH_TOKEN (docs/scale.md)"
                ) from exc
            raise
    task = ray.remote(max_retries=RAY_RETRIES)(run_one)
    pending, queue = [], list(jobs)
    while queue or pending:
        while queue and len(pending) < max_parallel:
            args, res = queue.pop(0)
            pending.append(task.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(*args))
        done, pending = ray.wait(pending, num_returns=1)
        on_done(ray.get(done[0]))


def _refused_token(exc: BaseException) -> bool:
    """Whether Ray's connection failed on token authentication (Ray 2.60 wraps its
    AuthenticationError in a ConnectionError whose cause's message quotes it)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# ----------------------------------------------------------------------------------- results


def collect_results(sweep_dir: Path, spec: SweepSpec) -> pd.DataFrame:
    """One row per (run, evaluated checkpoint): config, loss at that step, EM outcome, spectra."""
    sweep = SweepDir(sweep_dir)
    rows = []
    for cfg in expand(spec):
        run = sweep.run(cfg.run_id())
        mismatch = manifest_mismatch(run, cfg)
        if mismatch:  # never this config's numbers: no loss, no outcome
            rows.append(config_row(cfg) | {"status": MISMATCH, "error": mismatch})
            continue
        manifest = read_manifest(run.path) or {}
        done = manifest.get("status") == "done"
        targets = select_adapters(run.path, spec.eval_for(cfg.model).checkpoints) if done else []
        rows += run_rows(run, cfg, manifest, targets)
    return pd.DataFrame(rows)


def results_from_runs(run_dirs: list[Path]) -> pd.DataFrame:
    """The results table of run directories trained and evaluated by hand: one row per run and
    evaluation found in RUN/eval/<label>/, built exactly as a sweep builds its rows."""
    rows = []
    for path in run_dirs:
        run = RunDir(path)
        manifest = run.read_manifest()
        if manifest is None:
            raise DataError(f"{path}: no readable manifest; expected a run directory written by `evilspectra train`")
        cfg = validate_model(RunConfig, manifest.config, source=str(run.manifest_path))
        labels = set(run.eval_labels())
        targets = [t for t in run.adapters() if t[0] in labels] if manifest.status == "done" else []
        rows += run_rows(run, cfg, manifest.model_dump(), targets)
    return pd.DataFrame(rows)


def run_rows(run: RunDir, cfg: RunConfig, manifest: dict, targets: list[tuple[str, int | None, Path]]) -> list[dict]:
    """Rows of one run (`manifest`: its manifest as read): its config columns, then per evaluated
    (label, step, adapter) the outcome columns."""
    error = read_json(run.error)
    metrics = read_metrics(run.path)
    base = config_row(cfg) | {
        "status": "failed" if error else manifest.get("status", "missing"),
        "final_loss": manifest.get("final_loss"),
        "initial_loss": metrics[0]["loss"] if metrics else None,  # step 1: the base model's loss (B = 0)
        "error": error.get("error") if error else None,
    }
    if not targets:
        return [base]
    spectra = _spectra_by_label(run)
    return [
        base
        | {"checkpoint": label, "step": step}
        | _loss_at(metrics, step)
        | summary_columns(run.eval_dir(label).read_summary())
        | spectra.get(label, {})
        for label, step, _ in targets
    ]


def config_row(cfg: RunConfig) -> dict:
    """The declared config columns (rundir.ResultConfig) of a run, plus opt_<field> hyperparameters."""
    extra = {
        f"{OPT_PREFIX}{k}": json.dumps(v) if isinstance(v, list) else v
        for k, v in (cfg.optimizer.model_extra or {}).items()
    }
    row = ResultConfig(
        run_id=cfg.run_id(),
        model=cfg.model,
        dataset=cfg.dataset,
        optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        spectral_reg=cfg.spectral_reg.weight,
        lora_r=cfg.lora.r,
    )
    return row.model_dump() | extra


def _loss_at(metrics: list[dict], step: int, window: int = 10) -> dict:
    losses = [m["loss"] for m in metrics if m["step"] <= step]
    if not losses:
        return {}
    last, smooth = losses[-1], float(np.mean(losses[-window:]))
    return {"loss": last, "loss_smoothed": smooth, "log_loss": float(np.log(smooth)) if smooth > 0 else None}


def _spectra_by_label(run: RunDir) -> dict[str, dict]:
    if not run.spectra.is_file():
        return {}
    from evilspectra.spectra import aggregate_spectra, read_spectra_csv

    agg = aggregate_spectra(read_spectra_csv(run.spectra))
    return {str(r["checkpoint"]): {c: r[c] for c in SPECTRAL_METRICS} for _, r in agg.iterrows()}


def write_results(df: pd.DataFrame, sweep_dir: Path) -> Path:
    """The results table, CSV (atomically) and Parquet when pyarrow is installed."""
    sweep = SweepDir(sweep_dir)
    atomic_write_text(sweep.results, df.to_csv(index=False))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return sweep.results
    atomic_write_file(sweep.results_parquet, lambda tmp: df.to_parquet(tmp, index=False))
    return sweep.results


# ---------------------------------------------------------------------------------- the sweep


def plan(spec: SweepSpec, sweep_dir: Path) -> list[tuple[RunConfig, bool]]:
    """(config, already finished) for every run of the sweep."""
    sweep = SweepDir(sweep_dir)
    planned = []
    for cfg in expand(spec):
        run = sweep.run(cfg.run_id())  # a run of another config there is not finished: run_one reports it
        planned.append((cfg, manifest_mismatch(run, cfg) is None and _run_complete(run, spec.eval_for(cfg.model))))
    return planned


def _run_complete(run: RunDir | Path, settings: EvalSettings) -> bool:
    run = RunDir(run)
    manifest = read_manifest(run.path)
    if not manifest or manifest.get("status") not in FINISHED:
        return False
    if manifest["status"] != "done":
        return True
    return run.spectra.is_file() and all(
        _eval_done(run.eval_dir(label).path, settings)
        for label, _, _ in select_adapters(run.path, settings.checkpoints)
    )


def run_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    executor: str = "local",
    max_parallel: int = 1,
    ray_address: str | None = None,
    on_done: DoneFn | None = None,
    report_to: str = "none",
) -> pd.DataFrame:
    """Run every unfinished run, then write and return the results table. `report_to`: a tracker that
    receives every run's training metrics and every new evaluation's EM results (run_one)."""
    sweep = SweepDir(sweep_dir)
    sweep.path.mkdir(parents=True, exist_ok=True)
    earlier = read_json(sweep.spec)
    atomic_write_json(sweep.spec, _public_spec(spec))  # the judge URL without credentials
    keep_earlier_spec(sweep, earlier)
    if spec.eval_base_model:
        for model in sorted({cfg.model for cfg in expand(spec)}):
            eval_base(model, spec.eval_for(model), sweep.base_eval(model).path, report_to)
    absolute = SweepDir(sweep_dir.resolve())  # run paths the same on every node
    jobs = [_job(spec, cfg, absolute, report_to) for cfg, finished in plan(spec, sweep_dir) if not finished]
    done = on_done or (lambda result: None)
    if executor == "ray":
        run_ray(jobs, max_parallel, ray_address, done)
    elif executor == "local":
        run_local(jobs, max_parallel, done)
    else:
        raise ConfigError(f"--executor: expected local or ray, got {executor!r}")
    results = collect_results(sweep_dir, spec)
    write_results(results, sweep_dir)
    return results


def keep_earlier_spec(sweep: SweepDir, earlier: dict | None) -> None:
    """A sweep file changed since this directory's last sweep (another grid: other runs in the table)
    is named in a note, and the spec it replaced is appended to the spec history, never lost."""
    if earlier is None or earlier == read_json(sweep.spec):
        return
    history = sweep.spec_history.read_text(encoding="utf-8") if sweep.spec_history.is_file() else ""
    atomic_write_text(sweep.spec_history, history + json.dumps(earlier) + "\n")
    print(
        f"note: {sweep.spec} changed since this directory's last sweep (the results table follows the new "
        f"one); the earlier spec is kept in {sweep.spec_history}",
        file=sys.stderr,
    )


def _job(spec: SweepSpec, cfg: RunConfig, sweep: SweepDir, report_to: str = "none") -> Job:
    res = spec.resources_for(cfg.model)
    args = (
        cfg.model_dump(mode="json"),
        str(sweep.run(cfg.run_id()).path),  # absolute: the same path on every node
        spec.eval_for(cfg.model).model_dump(mode="json"),
        max(1, int(res.num_cpus)),
        res.num_processes,
        str(Path(res.accelerate_config).resolve()) if res.accelerate_config else None,  # tasks run elsewhere
        report_to,
    )
    return args, res


def estimate_judge_calls(spec: SweepSpec, configs: list[RunConfig]) -> tuple[int, int]:
    """(answers to sample, judge calls) for evaluating `configs` (+ the base model) as the sweep would."""
    per_model = estimate_per_model(spec, configs).values()
    return sum(m["answers"] for m in per_model), sum(m["judge_calls"] for m in per_model)


def estimate_per_model(spec: SweepSpec, configs: list[RunConfig]) -> dict[str, dict]:
    """model -> {runs, gpus (per run), answers, judge_calls, gpu_hours} for running `configs` as the
    sweep would (evaluations of the base model included). gpu_hours = runs x GPUs x the model's
    `resources.hours_per_run` (an estimate in the sweep file), None when that is not given."""
    from evilspectra.data import load_dataset_spec
    from evilspectra.evaluate.judge import estimate_calls
    from evilspectra.evaluate.questions import load_questions
    from evilspectra.evaluate.runner import select_questions
    from evilspectra.evaluate.sampling import samples_for
    from evilspectra.train import checkpoint_steps, total_steps

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
                rows[cfg.dataset] = len(load_dataset_spec(cfg.dataset, seed=cfg.seed).rows)
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


PRESETS = Path(__file__).parent / "presets"


def preset_path(name_or_path: str) -> Path:
    """A sweep YAML path, or the name of a preset shipped with the package (e.g. toy-optimisers)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such sweep file or preset (presets: {names})")
