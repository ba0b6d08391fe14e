"""The results table: one row per (run, evaluated checkpoint), built the same way for a sweep's runs
and for runs trained and evaluated by hand (`analyze RUN...`).

A row is the run's configuration columns (artefacts.records.ResultConfig, plus `opt_<field>`
hyperparameters) and its outcome columns (ResultOutcome): status, losses, the evaluation summary's
rate, counts, shares and definition, and the mean spectral metrics of that checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from evilspectra.artefacts.io import atomic_write_file, atomic_write_text
from evilspectra.artefacts.paths import RunDir, SweepDir, read_metrics, select_adapters
from evilspectra.artefacts.records import (
    OPT_PREFIX,
    SPECTRAL_METRICS,
    Manifest,
    ResultConfig,
    ResultOutcome,
    results_row,
    summary_columns,
)
from evilspectra.config import RunConfig, SpectralRegSettings
from evilspectra.errors import ConfigError, DataError
from evilspectra.spectra_table import aggregate_spectra, read_spectra_csv
from evilspectra.sweep_spec import SweepSpec, expand
from evilspectra.sweep_state import MISMATCH, manifest_mismatch


def collect_results(sweep_dir: Path, spec: SweepSpec) -> pd.DataFrame:
    """One row per (run, evaluated checkpoint): config, loss at that step, EM outcome, spectra."""
    sweep = SweepDir(sweep_dir)
    rows = []
    for cfg in expand(spec):
        run = sweep.run(cfg.run_id())
        mismatch = manifest_mismatch(run, cfg)
        if mismatch:  # never this config's numbers: no loss, no outcome
            rows.append(results_row(*_config(cfg), ResultOutcome(status=MISMATCH, error=mismatch)))
            continue
        manifest = run.read_manifest() or Manifest()
        done = manifest.status == "done"
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
        if manifest.config is None:  # read_manifest validated the config it holds
            raise ConfigError(f"{run.manifest_path}: no config recorded (`evilspectra train` writes one)")
        cfg = manifest.config
        labels = set(run.eval_labels())
        targets = [t for t in run.adapters() if t[0] in labels] if manifest.status == "done" else []
        rows += run_rows(run, cfg, manifest, targets)
    return pd.DataFrame(rows)


def run_rows(
    run: RunDir, cfg: RunConfig, manifest: Manifest, targets: list[tuple[str, int | None, Path]]
) -> list[dict]:
    """Rows of one run (`manifest`: its manifest as read): its config columns, then per evaluated
    (label, step, adapter) the outcome columns."""
    error = run.read_error()
    metrics = read_metrics(run.path)
    base = {
        "status": "failed" if error else (manifest.status or "missing"),
        "final_loss": manifest.final_loss,
        "initial_loss": metrics[0]["loss"] if metrics else None,  # step 1: the base model's loss (B = 0)
        "error": error.error if error else None,
    }
    config = _config(cfg)  # two config hashes: once per run, not per row
    if not targets:
        return [results_row(*config, ResultOutcome.model_validate(base))]
    spectra = _spectra_by_label(run)
    return [
        results_row(
            *config,
            ResultOutcome.model_validate(
                base
                | {"checkpoint": label, "step": step}
                | _loss_at(metrics, step)
                | summary_columns(run.eval_dir(label).read_summary())
                | spectra.get(label, {})
            ),
        )
        for label, step, _ in targets
    ]


def config_row(cfg: RunConfig) -> dict:
    """The declared config columns (artefacts.records.ResultConfig) of a run, plus opt_<field> hyperparameters."""
    config, opt_columns = _config(cfg)
    return config.model_dump() | opt_columns


def _config(cfg: RunConfig) -> tuple[ResultConfig, dict]:
    """(the ResultConfig of a run, its opt_<field> columns: list values as JSON text)."""
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
        twin_id=_twin(cfg).run_id(),
    )
    return row, extra


def _twin(cfg: RunConfig) -> RunConfig:
    """The training a regularised run is compared with: the regulariser off, and no checkpoint
    schedule (what is saved along the way does not change the weights; the demo's regularised
    runs save no checkpoints)."""
    train = cfg.train.model_copy(update={"checkpoints": "none"})
    return cfg.model_copy(update={"spectral_reg": SpectralRegSettings(), "train": train})


def _loss_at(metrics: list[dict], step: int | None, window: int = 10) -> dict:
    """The loss at `step` and smoothed over the `window` steps up to it (none without a step)."""
    if step is None:  # a final adapter whose manifest records no step and no checkpoint
        return {}
    losses = [m["loss"] for m in metrics if m["step"] <= step]
    if not losses:
        return {}
    last, smooth = losses[-1], float(np.mean(losses[-window:]))
    return {"loss": last, "loss_smoothed": smooth, "log_loss": float(np.log(smooth)) if smooth > 0 else None}


def _spectra_by_label(run: RunDir) -> dict[str, dict]:
    if not run.spectra.is_file():
        return {}
    agg = aggregate_spectra(read_spectra_csv(run.spectra))
    return {str(r["checkpoint"]): {c: float(r[c]) for c in SPECTRAL_METRICS} for _, r in agg.iterrows()}


def write_results(df: pd.DataFrame, sweep_dir: Path) -> Path:
    """The results table, CSV (atomically) and Parquet when pyarrow is installed."""
    sweep = SweepDir(sweep_dir)
    atomic_write_text(sweep.results, df.to_csv(index=False))
    try:
        import pyarrow  # noqa: F401  (an optional extra: Parquet only when it is installed)
    except ImportError:
        return sweep.results
    atomic_write_file(sweep.results_parquet, lambda tmp: df.to_parquet(tmp, index=False))
    return sweep.results
