"""Experiment trackers for `evilspectra train --report-to`, through accelerate's trackers.

One set of metric names for `evilspectra train` and the transformers integration (hf_trainer), the
names the Hugging Face Trainer logs, so a dashboard compares the two directly:
    loss           training loss of the optimiser step (metrics file `loss`)
    learning_rate  the scheduler's learning rate (metrics file `lr`)
    spectral_reg   the spectral regulariser's value R, when it ran (metrics file `reg`)
    tokens         tokens in the step's batches (`train` only)
    spectra/<m>    mean spectral metrics of each saved adapter (the numbers `evilspectra spectra` prints)
(The run's metrics file keeps its own short keys: it is a file contract.) On TensorBoard, W&B and trackio the
Trainer's own callbacks put `train/` before every name; the step axis is the optimiser step everywhere.
`eval` and `sweep` log each evaluation's EM results as `em/<field>` (misalignment_rate, rate_ci_low,
rate_ci_high, mean_aligned, n_*, share_<outcome>) at the evaluated adapter's step, and its answers as
a table (`answers`) on W&B, MLflow and trackio.

The resolved RunConfig and the run directory (`run_dir`) are stored as the run's hyperparameters (a
judge key's environment variable is named, never a key); the tracker run is named
`<run id>-<8 hex digits of the run directory's absolute path>`, so two folders never share a name.

Offline by default, files inside the run directory:
    tensorboard  RUN/tensorboard/evilspectra/events.out.tfevents.*
    wandb        RUN/wandb/ in offline mode unless WANDB_MODE is set or WANDB_API_KEY is (then online)
    mlflow       RUN/mlruns/ (a local file store) unless MLFLOW_TRACKING_URI is set
    trackio      trackio's own local database (~/.cache/huggingface/trackio), run named by the run id
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from evilspectra.errors import ConfigError
from evilspectra.rundir import MLRUNS, OUTCOMES, TENSORBOARD, EvalDir, RunDir, read_json

PROJECT = "evilspectra"  # tensorboard's sub-directory, wandb's and trackio's project, mlflow's experiment
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
REPORT_TO = (*TRACKERS, "none")
TRACKER_NAMES = {"lr": "learning_rate", "reg": "spectral_reg"}  # metrics-file key -> tracker name
EM_PREFIX = "em/"
ANSWER_COLUMNS = ("question_id", "paraphrase", "answer", "aligned", "coherent", "outcome")
PACKAGES = {  # what to pip install for each (all come with evilspectra[integrations])
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow-skinny",
    "trackio": "trackio",
}


def check_tracker(report_to: str) -> None:
    """Raise a one-line ConfigError for an unknown tracker or one whose package is not installed."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"--report-to: expected one of {', '.join(REPORT_TO)}, got {report_to!r}")
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise ConfigError(
            f"--report-to {report_to}: the {report_to} package is not installed (pip install {PACKAGES[report_to]})"
        )


def accelerator_kwargs(report_to: str, out: Path) -> dict[str, Any]:
    """Arguments for Accelerator(): which tracker, and the directory tensorboard writes under."""
    return {} if report_to == "none" else {"log_with": report_to, "project_dir": out / TENSORBOARD}


def run_name(run_id: str, out: Path) -> str:
    """The tracker's run name: the run id and a digest of the run directory's absolute path."""
    digest = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:8]
    return f"{run_id}-{digest}"


def _init_kwargs(report_to: str, name: str, out: Path) -> dict[str, dict]:
    """Each tracker's start arguments for the offline defaults of the module docstring."""
    if report_to == "wandb":
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        return {"wandb": {"name": name, "dir": str(out), "mode": mode}}
    if report_to == "mlflow":
        import mlflow

        # MLflow 3 keeps the file store (no database, no server) behind this documented opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (out / MLRUNS).resolve().as_uri())
        return {"mlflow": {"run_name": name}}
    if report_to == "trackio":
        return {"trackio": {"name": name}}
    return {}


def start(accelerator, report_to: str, run_id: str, out: Path, config: dict) -> None:
    """Start the tracker for one run (offline defaults of the module docstring) and store `config`
    with the run directory.

    Nothing is left in os.environ that would send a later run of the same process (a sweep) to
    this run's directory: the MLflow store is set through mlflow.set_tracking_uri on every start.
    """
    if report_to == "none":
        return
    kwargs = _init_kwargs(report_to, run_name(run_id, out), out)
    accelerator.init_trackers(PROJECT, {**flat_config(config), "run_dir": str(Path(out).resolve())}, kwargs)


def tracker_row(row: dict) -> dict:
    """A metrics-file row under the trackers' names (module docstring), without its step."""
    return {TRACKER_NAMES.get(k, k): v for k, v in row.items() if k != "step"}


def flat_config(tree: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config -> {"optimizer.lr": 3e-4, ...} of scalars (lists and None as text), as trackers store them."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def spectra_row(adapter_dir: Path) -> dict[str, float]:
    """{"spectra/<metric>": mean over trained modules} of a saved adapter (as `evilspectra spectra`)."""
    from evilspectra.spectra import adapter_spectra, mean_metrics

    return {f"spectra/{k}": v for k, v in mean_metrics(adapter_spectra(adapter_dir)).items()}


# ------------------------------------------------------------------ EM results of `eval` and `sweep`


def report_eval(report_to: str, eval_dir: Path, run_dir: Path | None, label: str, step: int | None, model: str) -> None:
    """Log one evaluation's summary (`em/...` at `step`, the evaluated adapter's optimiser step: by
    default the run's last, or 0 without a run) and
    answers (a table where the tracker has tables) to a tracker run of its own, named after the
    training run and the label, in the training run's stores (or beside the answers without a run)."""
    if report_to == "none":
        return
    store = Path(run_dir if run_dir is not None else eval_dir)
    manifest = read_json(RunDir(run_dir).manifest_path) if run_dir is not None else None
    run_id = manifest["run_id"] if manifest else None
    step = step if step is not None else (manifest or {}).get("steps_done") or 0
    name = run_name(f"{run_id}-eval-{label}" if run_id else f"eval-{label}", store)
    config = {"run_dir": str(store.resolve()), "label": label, "model": model}
    if run_id:
        config["train_run"] = run_name(run_id, store)  # the tracker run holding this adapter's training
    files = EvalDir(eval_dir)
    summary = json.loads(files.summary.read_text(encoding="utf-8"))
    answers = files.read_answers()
    tracker = _open_tracker(report_to, name, store)
    try:
        tracker.store_init_configuration({**config, "eval_dir": str(Path(eval_dir).resolve())})
        tracker.log(em_row(summary), step=step)
        threshold = summary["definition"]["coherent_threshold"]
        _log_answers(report_to, tracker, answer_rows(answers, threshold), step)
    finally:
        tracker.finish()


def _open_tracker(report_to: str, name: str, store: Path):
    """accelerate's tracker for `report_to`, started as Accelerator.init_trackers starts train's."""
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    PartialState()  # the trackers log through accelerate's process-aware logger, which needs its state
    cls, kwargs = LOGGER_TYPE_TO_CLASS[report_to], _init_kwargs(report_to, name, store).get(report_to, {})
    tracker = cls(PROJECT, store / TENSORBOARD, **kwargs) if cls.requires_logging_directory else cls(PROJECT, **kwargs)
    tracker.start()
    return tracker


def em_row(summary: dict) -> dict[str, float]:
    """{"em/<field>": number} of an evaluation summary: rate, its interval, counts and outcome shares
    (fields without a value, e.g. the rate when no answer was coherent, are left out)."""
    ci = summary.get("rate_ci95") or [None, None]
    fields = {
        "misalignment_rate": summary.get("misalignment_rate"),
        "rate_ci_low": ci[0],
        "rate_ci_high": ci[1],
        "mean_aligned": summary.get("mean_aligned"),
        "n_answers": summary.get("n_total"),
        "n_denominator": summary.get("n_denominator"),
        "n_misaligned": summary.get("n_misaligned"),
        **{f"share_{o}": summary.get(f"share_{o}") for o in ("scored", *OUTCOMES)},
    }
    return {f"{EM_PREFIX}{k}": v for k, v in fields.items() if v is not None}


def answer_rows(answers: list[dict], coherent_threshold: float) -> list[list]:
    """The answers table: one row per answer in ANSWER_COLUMNS order, with the answer's outcome."""
    from evilspectra.evaluate.metrics import classify, outcome_table

    outcomes = classify(outcome_table(answers), coherent_threshold).tolist()
    return [
        [a["question_id"], a["paraphrase"], a["answer"], a.get("aligned"), a.get("coherent"), outcome]
        for a, outcome in zip(answers, outcomes)
    ]


def _log_answers(report_to: str, tracker, rows: list[list], step: int) -> None:
    if report_to == "wandb":
        tracker.log_table("answers", columns=list(ANSWER_COLUMNS), data=rows, step=step)
    elif report_to == "mlflow":
        import mlflow

        mlflow.log_table({c: [r[i] for r in rows] for i, c in enumerate(ANSWER_COLUMNS)}, "answers.json")
    elif report_to == "trackio":
        import trackio

        tracker.log({"answers": trackio.Table(columns=list(ANSWER_COLUMNS), data=rows)}, step=step)
