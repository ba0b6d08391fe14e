# ruff: noqa: F401  (a re-export module: every import is a public name)
"""Singular-value spectra of LoRA updates, their metrics, and the spectral regulariser (docs/architecture.md).

The public names of earlier releases, from the modules that now hold them:

    spectra_linalg  singular values of scaling * B @ A without forming it; the four metrics
    spectra_io      a PEFT adapter directory -> its checked LoRA factors
    spectra_table   spectra tables of an adapter, a model in memory, a run; their aggregate
    spectra_plot    the normalised-spectrum plot
    regulariser     the differentiable penalty training adds (imported alone by `train`)
"""

from __future__ import annotations

from evilspectra.artefacts.paths import run_adapters
from evilspectra.regulariser import SpectralRegulariser, lora_factor_pairs, spectral_penalty
from evilspectra.spectra_io import CONFIG, WEIGHTS, read_adapter
from evilspectra.spectra_linalg import (
    CHOLESKY_JITTER,
    METHODS,
    METRICS,
    REG_METHODS,
    ZERO_NORM,
    lora_singular_values,
    spectral_metrics,
)
from evilspectra.spectra_plot import mean_normalised_spectrum, plot_normalised_spectra
from evilspectra.spectra_table import (
    SPECTRA_CSV,
    adapter_spectra,
    aggregate_spectra,
    mean_metrics,
    model_spectra,
    read_spectra_csv,
    run_spectra,
    run_spectra_frame,
    write_spectra_csv,
)
