"""What of a sweep is already on disk: which runs are finished, which evaluations were made with the
sweep's settings, which run directories hold another configuration. Reads records only (no torch),
so `sweep --dry-run` plans without the training code.
"""

from __future__ import annotations

from pathlib import Path

from evilspectra.artefacts.paths import FINISHED, EvalDir, RunDir, SweepDir, select_adapters
from evilspectra.artefacts.records import Manifest
from evilspectra.config import PLACEMENT_FIELDS, EvalSettings, RunConfig, stable_dump
from evilspectra.errors import DataError
from evilspectra.evaluate.endpoint import redact_settings
from evilspectra.sweep_spec import SweepSpec, expand

MISMATCH = "mismatch"  # the run directory holds another configuration's run


def manifest_mismatch(run: RunDir, cfg: RunConfig) -> str | None:
    """Why `run` holds another configuration than `cfg` (a run trained into the sweep's directory by
    hand, or a hand-edited manifest), or None when it holds `cfg`'s run or nothing yet."""
    try:
        manifest = run.read_manifest()
    except DataError:  # a hand-edited manifest whose config no RunConfig reads
        manifest, recorded = Manifest(), None
    else:
        if manifest is None:
            return None
        recorded = manifest.config.run_id() if manifest.config else None
    if manifest.run_id == recorded == cfg.run_id():
        return None
    return (
        f"{run.manifest_path}: run_id {manifest.run_id!r} (config {recorded or 'unreadable'}) is not the "
        f"sweep's {cfg.run_id()!r}; another configuration was trained there: move it away to let the sweep run it"
    )


def eval_done(out: Path, settings: EvalSettings) -> bool:
    """Finished: a summary made with these settings (placement and retry budget aside; the judge's
    URL compared without credentials) in which every answer was judged: no judge error and no reply
    without a number (`n_judge_retry`; `n_error` in summaries written before it)."""
    try:
        summary = EvalDir(out).read_summary()
    except DataError:  # a summary of another shape is no finished evaluation of these settings
        return False
    if summary is None or not summary.settings or summary.judge_retries():
        return False
    ignored = PLACEMENT_FIELDS | {"judge_max_retries", "judge_backoff"}
    saved = {k: v for k, v in redact_settings(summary.settings).items() if k not in ignored}
    wanted = redact_settings(stable_dump(settings))
    return saved == {k: v for k, v in wanted.items() if k not in ignored}


def plan(spec: SweepSpec, sweep_dir: Path) -> list[tuple[RunConfig, bool]]:
    """(config, already finished) for every run of the sweep."""
    sweep = SweepDir(sweep_dir)
    planned = []
    for cfg in expand(spec):
        run = sweep.run(cfg.run_id())  # a run of another config there is not finished: run_one reports it
        planned.append((cfg, manifest_mismatch(run, cfg) is None and run_complete(run, spec.eval_for(cfg.model))))
    return planned


def run_complete(run: RunDir | Path, settings: EvalSettings) -> bool:
    run = RunDir(run)
    manifest = run.read_manifest()
    if manifest is None or manifest.status not in FINISHED:
        return False
    if manifest.status != "done":
        return True
    return run.spectra.is_file() and all(
        eval_done(run.eval_dir(label).path, settings) for label, _, _ in select_adapters(run.path, settings.checkpoints)
    )
