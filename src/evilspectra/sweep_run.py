"""Running a sweep: every unfinished run (train -> spectra -> eval in its RunDir) on local processes
or Ray, then the results table. Every stage is skipped when its output is already on disk, so running
the same command again resumes a killed sweep without redoing finished work.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

from evilspectra.artefacts.io import RunLockedError, atomic_write_json, atomic_write_text, read_json
from evilspectra.artefacts.paths import FINISHED, RunDir, SweepDir, select_adapters
from evilspectra.artefacts.records import ErrorRecord
from evilspectra.config import EvalSettings, RunConfig
from evilspectra.errors import ConfigError
from evilspectra.evaluate.runner import evaluate
from evilspectra.integrations.trackers import report_eval
from evilspectra.launch import launch_train
from evilspectra.quiet import quiet_hf
from evilspectra.results import collect_results, write_results
from evilspectra.spectra_table import run_spectra
from evilspectra.sweep_spec import Resources, SweepSpec, expand, public_spec
from evilspectra.sweep_state import MISMATCH, eval_done, manifest_mismatch, plan
from evilspectra.train import train

BUSY = "busy"  # another process holds the run directory's lock


@contextmanager
def restored_torch_threads() -> Iterator[None]:
    """Give the caller its torch thread count back after runs done in its own process (each run
    sets its own); a pool or Ray worker keeps the count its runs set, as nothing else runs there."""
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
    quiet_hf()  # worker processes start with HF's defaults
    torch.set_num_threads(max(1, int(threads)))  # same threads in every executor -> same numbers
    cfg, settings, run = RunConfig.model_validate(cfg_json), EvalSettings.model_validate(eval_json), RunDir(run_dir)
    stage = "train"
    try:
        with run.lock():  # one process per run directory
            mismatch = manifest_mismatch(run, cfg)
            if mismatch:  # a run trained there by hand: neither retrained over nor reported as this config
                return {"run_id": cfg.run_id(), "status": MISMATCH, "error": mismatch}
            manifest = run.read_manifest()
            if manifest is None or manifest.status not in FINISHED:
                if processes > 1:
                    config = Path(accelerate_config) if accelerate_config else None
                    launch_train(cfg, run.path, processes, config, report_to)
                else:
                    train(cfg, run.path, report_to=report_to)
                manifest = run.read_manifest()
            run.error.unlink(missing_ok=True)
            status = manifest.status if manifest is not None else "missing"
            if status != "done":
                return {"run_id": cfg.run_id(), "status": status}
            stage = "spectra"
            if not run.spectra.is_file():
                run_spectra(run.path)
            stage = "eval"
            settings = settings.with_trained_template(cfg.chat_template_kwargs)  # prompts as in training
            for label, step, adapter in select_adapters(run.path, settings.checkpoints):
                out = run.eval_dir(label).path
                if not eval_done(out, settings):
                    evaluate(cfg.model, adapter, settings, out, progress=False)
                    report_eval(report_to, out, run.path, label, step, cfg.model)
            return {"run_id": cfg.run_id(), "status": "done"}
    except RunLockedError as exc:  # another sweep or train owns the run: leave it to that process
        return {"run_id": cfg.run_id(), "status": BUSY, "error": str(exc)}
    except Exception as exc:  # recorded and reported; the sweep moves on
        run.write_error(
            ErrorRecord(stage=stage, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        )
        return {"run_id": cfg.run_id(), "status": "failed", "stage": stage, "error": f"{type(exc).__name__}: {exc}"}


def eval_base(model: str, settings: EvalSettings, out: Path, report_to: str = "none") -> None:
    if not eval_done(out, settings):
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
        import ray  # an optional extra (evilspectra[ray]): imported only when asked for
    except ImportError as exc:
        raise ConfigError("--executor ray needs Ray: pip install 'evilspectra[ray]'") from exc
    if not ray.is_initialized():
        cpus = max(1, int(max_parallel * max((r.num_cpus for _, r in jobs), default=1)))
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                num_cpus=None if address else cpus,  # None: a cluster's own (Ray's default)
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
    pending: list[ray.ObjectRef | ray.ObjectRefGenerator] = []
    queue = list(jobs)
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


# ---------------------------------------------------------------------------------- the sweep


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
    atomic_write_json(sweep.spec, public_spec(spec))  # the judge URL without credentials
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
