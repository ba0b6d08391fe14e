"""Spectra tables: one row per LoRA module (or expert) of an adapter, a run's table of every
checkpoint (RunDir.spectra), and their aggregate over modules.

MoE experts (evilspectra.experts): a LoRA on a fused expert parameter is E rank-r LoRAs, one per
expert. Spectra give one row per expert and projection (module `...mlp.experts.<e>.gate_up_proj`,
column `expert`), with the flat reference of rank r; the aggregate over modules counts each expert row
as one module (column `n_expert_rows` says how many of them are expert rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from evilspectra.artefacts.io import atomic_write_text
from evilspectra.artefacts.paths import SPECTRA, RunDir, run_adapters
from evilspectra.errors import AdapterError, ConfigError
from evilspectra.experts import WRAPPED, expert_factors
from evilspectra.spectra_io import module_layer, read_checked, wrapped_name
from evilspectra.spectra_linalg import METRICS, lora_singular_values, spectral_metrics

# (module, A, B, r, scaling, number of experts, fused parameter name or None): one LoRA module's factors
_Module = tuple[str, torch.Tensor, torch.Tensor, int, float, int, str | None]


def adapter_spectra(adapter_dir: str | Path, method: str = "qr") -> pd.DataFrame:
    """One row per LoRA module of a PEFT adapter directory (per expert and projection on fused MoE
    experts): the spectrum of scaling * B @ A (of scaling * B_e @ A_e for expert e).

    Columns: module, layer (int or None), kind (last name part, e.g. q_proj or gate_up_proj),
    expert (int, or NA for a dense module), r, scaling, sigma (list of r floats, descending),
    stable_rank, spectral_entropy, condition_number, frobenius_nuclear. Raises AdapterError naming
    the file when it is missing, corrupt, or does not match its adapter config.
    """
    _, factors, experts, scalings = read_checked(Path(adapter_dir))
    modules: list[_Module] = []
    for module, ab in factors.items():
        r, scaling = scalings[module]
        n = ab["A"].shape[0] // r if module in experts else 1
        if module in experts:  # a wrapped parameter: fused experts, or a 2-D one (the MoE router)
            path, param = experts[module]
            modules.append((wrapped_name(path, param, n), ab["A"], ab["B"], r, scaling, n, param))
        else:
            modules.append((module, ab["A"], ab["B"], r, scaling, 1, None))
    return _spectra_frame(modules, method)


def model_spectra(model: torch.nn.Module, method: str = "qr") -> pd.DataFrame:
    """adapter_spectra of the active LoRA adapter of a PEFT model in memory (no file written).

    Same columns and module names as adapter_spectra of the adapter the model would save, so the
    numbers equal `evilspectra spectra` on that folder. Raises ConfigError for a model without LoRA.
    """
    from peft.tuners.lora import LoraLayer  # imported when used: peft takes seconds (`spectra` reads files only)

    modules: list[_Module] = []
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    A, B = _weight(layer.lora_A[adapter]), _weight(layer.lora_B[adapter])
                    module = name.removeprefix("base_model.model.")
                    n, param = getattr(layer, "num_experts", 1), getattr(layer, "parameter_name", None)
                    if param is not None:  # PEFT ParamWrapper: named as adapter_spectra names it
                        module = wrapped_name(module.replace(WRAPPED, ""), param, n)
                    entry = (module, A.detach().cpu(), B.detach().cpu(), layer.r[adapter], layer.scaling[adapter])
                    modules.append((*entry, n, param))
    if not modules:
        raise ConfigError(
            f"{type(model).__name__} has no LoRA modules: wrap it with peft.get_peft_model(model, LoraConfig(...))"
        )
    return _spectra_frame(modules, method)


def _weight(factor: torch.nn.Module) -> torch.Tensor:
    """A LoRA factor's weight (torch types a module's attributes as Tensor | Module)."""
    weight = factor.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(factor).__name__}.weight is a {type(weight).__name__}, not a tensor")
    return weight


def _spectra_frame(modules: list[_Module], method: str) -> pd.DataFrame:
    """Rows of (module, A, B, r, scaling, number of experts, fused parameter name or None) -> the
    adapter_spectra frame, one row per module or per expert of a fused module, in layer order."""
    rows = []
    for module, A, B, r, scaling, n, param in modules:
        if n > 1:  # fused experts: E rank-r pairs
            if param is None:  # PEFT's ParamWrapper names the fused parameter it wraps
                raise AdapterError(f"{module}: {n} experts but no fused parameter name")
            A_e, B_e = expert_factors(A, B, n)
            for e, sigma in enumerate(lora_singular_values(A_e, B_e, scaling, method)):
                rows.append(_spectrum_row(f"{module}.{e}.{param}", param, e, r, scaling, sigma))
        else:
            sigma = lora_singular_values(A, B, scaling, method)
            rows.append(_spectrum_row(module, module.rsplit(".", 1)[-1], None, r, scaling, sigma))
    rows.sort(key=_row_order)
    df = pd.DataFrame(rows)
    df["expert"] = df["expert"].astype("Int64")
    return df


def _row_order(row: dict) -> tuple:
    """By layer, then module name (an expert row by its fused module's name), then expert."""
    name = row["module"]
    if row["expert"] is not None:
        path, _, param = name.rsplit(".", 2)
        name = f"{path}.{param}"
    return (-1 if row["layer"] is None else row["layer"], name, -1 if row["expert"] is None else row["expert"])


def _spectrum_row(module: str, kind: str, expert: int | None, r: int, scaling: float, sigma: torch.Tensor) -> dict:
    return {
        "module": module,
        "layer": module_layer(module),
        "kind": kind,
        "expert": expert,
        "r": r,
        "scaling": scaling,
        "sigma": sigma.tolist(),
        **spectral_metrics(sigma),
    }


# --------------------------------------------------------------------------------------------
# Runs: every checkpoint plus the final adapter into the run's spectra table (RunDir.spectra)

SPECTRA_CSV = SPECTRA


def run_spectra_frame(run_dir: str | Path, method: str = "qr") -> pd.DataFrame:
    """adapter_spectra of every checkpoint of a run, with leading columns checkpoint and step."""
    adapters = run_adapters(run_dir)
    if not adapters:
        raise AdapterError(f"{run_dir}: no adapter/ and no checkpoints/step-NNNNNN/ found")
    frames = []
    for label, step, path in adapters:
        df = adapter_spectra(path, method)
        df.insert(0, "step", step)
        df.insert(0, "checkpoint", label)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["step"] = out["step"].astype("Int64")
    return out


def write_spectra_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a spectra frame atomically, the sigma lists as JSON strings."""
    path = Path(path)
    df = df.assign(sigma=df["sigma"].map(json.dumps))
    atomic_write_text(path, df.to_csv(index=False))
    return path


def read_spectra_csv(path: str | Path) -> pd.DataFrame:
    """Read a spectra table back, sigma parsed into lists of floats."""
    df = pd.read_csv(path)
    df["sigma"] = df["sigma"].map(json.loads)
    return df


def run_spectra(run_dir: str | Path, method: str = "qr") -> Path:
    """Compute the spectra of every checkpoint and the final adapter; write the run's spectra table."""
    return write_spectra_csv(run_spectra_frame(run_dir, method), RunDir(run_dir).spectra)


def aggregate_spectra(df: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint (and run, when a `run` column exists): the mean of each metric over
    modules (untrained modules, whose metrics are NaN, are left out of the mean), and n_modules.

    On an MoE adapter every expert row counts as one module (the mean is over dense modules and
    expert rows alike); `n_expert_rows` (present when the frame has an `expert` column) says how
    many of the n_modules rows are experts."""
    keys = [c for c in ("run", "checkpoint", "step") if c in df.columns]
    grouped = df.groupby(keys, sort=False, dropna=False)
    out = grouped[list(METRICS)].mean()
    out.insert(0, "n_modules", grouped.size())
    if "expert" in df.columns:
        out.insert(1, "n_expert_rows", grouped["expert"].count())
    return out.reset_index()


def mean_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """{metric: mean over modules} of one adapter's spectra frame; untrained (NaN) modules left out,
    as in aggregate_spectra."""
    means = frame[list(METRICS)].mean()
    return {metric: float(means[metric]) for metric in METRICS}
