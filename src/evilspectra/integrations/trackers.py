"""Experiment trackers for `evilspectra train --report-to`, through accelerate's trackers.

Every optimiser step logs loss, lr, tokens (and the regulariser value `reg` when it ran); every
saved checkpoint and the final adapter log the adapter's spectral metrics as `spectra/<metric>`
(means over trained modules, the numbers `evilspectra spectra` prints). The resolved RunConfig is
stored as the run's hyperparameters: it names the environment variable of a judge key, never a key.

Offline by default, files inside the run directory:
    tensorboard  RUN/tensorboard/evilspectra/events.out.tfevents.*
    wandb        RUN/wandb/ in offline mode unless WANDB_MODE is set or WANDB_API_KEY is (then online)
    mlflow       RUN/mlruns/ (a local file store) unless MLFLOW_TRACKING_URI is set
    trackio      trackio's own local database (~/.cache/huggingface/trackio), run named by the run id
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from evilspectra.errors import ConfigError
from evilspectra.rundir import MLRUNS, TENSORBOARD

PROJECT = "evilspectra"  # tensorboard's sub-directory, wandb's and trackio's project, mlflow's experiment
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
REPORT_TO = (*TRACKERS, "none")
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


def start(accelerator, report_to: str, run_id: str, out: Path, config: dict) -> None:
    """Start the tracker for one run (offline defaults of the module docstring) and store `config`.

    Nothing is left in os.environ that would send a later run of the same process (a sweep) to
    this run's directory: the MLflow store is set through mlflow.set_tracking_uri on every start.
    """
    if report_to == "none":
        return
    kwargs: dict[str, dict] = {}
    if report_to == "wandb":
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        kwargs["wandb"] = {"name": run_id, "dir": str(out), "mode": mode}
    elif report_to == "mlflow":
        import mlflow

        # MLflow 3 keeps the file store (no database, no server) behind this documented opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (out / MLRUNS).resolve().as_uri())
        kwargs["mlflow"] = {"run_name": run_id}
    elif report_to == "trackio":
        kwargs["trackio"] = {"name": run_id}
    accelerator.init_trackers(PROJECT, flat_config(config), kwargs)


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
