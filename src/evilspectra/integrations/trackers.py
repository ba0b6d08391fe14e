"""Experiment trackers for `evilspectra train --report-to`, through accelerate's trackers.

Every optimiser step logs loss, lr, tokens (and the regulariser value `reg` when it ran); every
saved checkpoint and the final adapter log the adapter's spectral metrics as `spectra/<metric>`
(means over trained modules, the numbers `evilspectra spectra` prints). The resolved RunConfig is
stored as the run's hyperparameters: it names the environment variable of a judge key, never a key.

Offline by default, files inside the run directory:
    tensorboard  RUN/tensorboard/evilspectra/events.out.tfevents.*
    wandb        RUN/wandb/ in offline mode unless WANDB_MODE is set or WANDB_API_KEY is (then online)
    mlflow       RUN/mlruns/ (a local file store) unless MLFLOW_TRACKING_URI is set
    trackio      RUN/trackio/ (trackio's local database) unless TRACKIO_DIR is set
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from evilspectra.errors import ConfigError

PROJECT = "evilspectra"  # tensorboard's sub-directory, wandb's and trackio's project, mlflow's experiment
TRACKER_DIRS = ("tensorboard", "wandb", "mlruns", "trackio")  # what a tracker may write inside RUN
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
REPORT_TO = (*TRACKERS, "none")


def check_tracker(report_to: str) -> None:
    """Raise a one-line ConfigError for an unknown tracker or one whose package is not installed."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"--report-to: expected one of {', '.join(REPORT_TO)}, got {report_to!r}")
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise ConfigError(
            f"--report-to {report_to}: the {report_to} package is not installed "
            f"(pip install {report_to}, or pip install 'evilspectra[integrations]')"
        )


def accelerator_kwargs(report_to: str, out: Path) -> dict[str, Any]:
    """Arguments for Accelerator(): which tracker, and the directory tensorboard writes under.

    Sets the offline defaults of the module docstring in the environment of this process (only
    where the user has not chosen), before the tracker library starts.
    """
    if report_to == "none":
        return {}
    if report_to == "wandb" and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if report_to == "mlflow" and "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = (out / "mlruns").resolve().as_uri()
    if report_to == "trackio":
        os.environ.setdefault("TRACKIO_DIR", str(out / "trackio"))
    return {"log_with": report_to, "project_dir": out / "tensorboard"}


def init_kwargs(report_to: str, run_id: str, out: Path) -> dict[str, dict]:
    """Per-tracker keyword arguments of accelerator.init_trackers: the run's name (and wandb's directory)."""
    kwargs = {"wandb": {"name": run_id, "dir": str(out)}, "mlflow": {"run_name": run_id}, "trackio": {"name": run_id}}
    return {report_to: kwargs[report_to]} if report_to in kwargs else {}


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
