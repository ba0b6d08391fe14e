# ruff: noqa: F401  (a re-export module: every import is a public name)
"""Sweeps: a grid of runs, each train -> spectra -> eval in its RunDir under the SweepDir, and a results table.

The names of earlier releases, from the modules that now hold them:

    sweep_spec      the sweep file (SweepSpec), presets, expansion into run configs
    sweep_state     what is on disk: finished runs and evaluations, directories of another config
    sweep_run       running the unfinished runs (local processes, Ray), resuming, the results
    results         the results table (rows of a sweep's runs or of runs evaluated by hand)
    sweep_estimate  the cost estimate of `sweep --dry-run` (no torch, no training code)

Importing this module imports the training code; the dry run imports sweep_spec,
sweep_state and sweep_estimate only.
"""

from __future__ import annotations

from evilspectra.artefacts.paths import RESULTS
from evilspectra.results import collect_results, config_row, results_from_runs, run_rows, write_results
from evilspectra.sweep_estimate import estimate_judge_calls, estimate_per_model
from evilspectra.sweep_run import (
    BUSY,
    RAY_RETRIES,
    DoneFn,
    Job,
    _job,
    eval_base,
    keep_earlier_spec,
    restored_torch_threads,
    run_local,
    run_one,
    run_ray,
    run_sweep,
)
from evilspectra.sweep_spec import (
    PRESETS,
    ModelSettings,
    Resources,
    SweepSpec,
    Variant,
    expand,
    load_sweep,
    preset_path,
    public_spec,
)
from evilspectra.sweep_state import MISMATCH, manifest_mismatch, plan
from evilspectra.sweep_state import eval_done as _eval_done  # names the tests of earlier releases use
from evilspectra.sweep_state import run_complete as _run_complete
