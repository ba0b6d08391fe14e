"""Singular-value spectra of LoRA updates, their metrics, and the spectral regulariser (docs/architecture.md).

A LoRA module adds delta_W = scaling * B @ A with A = `lora_A.weight` (r x d_in) and
B = `lora_B.weight` (d_out x r). Its r non-zero singular values are those of a small r x r matrix:
with B = Q_B R_B and A^T = Q_A R_A (thin QR), B A = Q_B (R_B R_A^T) Q_A^T, and Q_B, Q_A have
orthonormal columns, so sigma(B A) = sigma(R_B R_A^T). The d_out x d_in product is never formed.
The paper's route (Cholesky of B^T B) is offered for reproduction; it squares the condition number
of B and breaks down when B is rank-deficient.

The linear algebra takes stacked batches (k x r x d_in, k x d_out x r): the regulariser stacks the
modules of equal shape (36 q_proj of Qwen3-8B, ...) into one batched call per shape on every
training step. Reading an adapter from disk (CPU) goes module by module, which keeps each one in
cache and is faster there than one large batch.

Metrics of sigma_1 >= ... >= sigma_r (all scale-invariant): stable rank sum(s^2)/s_1^2, spectral
entropy -sum(p ln p) with p = s/sum(s) (nats), condition number s_1/s_r, Frobenius/nuclear
sqrt(sum s^2)/sum(s) in [1/sqrt(r), 1]. An all-zero spectrum (B = 0, a fresh adapter) has all four
metrics NaN; a rank-deficient one has condition number inf.

MoE experts (evilspectra.experts): a LoRA on a fused expert parameter is E rank-r LoRAs, one per
expert. Spectra give one row per expert and projection (module `...mlp.experts.<e>.gate_up_proj`,
column `expert`), with the flat reference of rank r; the aggregate over modules counts each expert row
as one module (column `n_expert_rows` says how many of them are expert rows); the regulariser's
mean is over all rows, so on an MoE adapter it is the mean over experts of the per-expert penalty.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from evilspectra.errors import AdapterError, ConfigError
from evilspectra.experts import WRAPPED, expert_factors, expert_wrappers, parameter_names
from evilspectra.rundir import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    SPECTRA,
    SPECTRAL_METRICS,
    RunDir,
    atomic_write_file,
    atomic_write_text,
    run_adapters,
)

METHODS = ("qr", "cholesky")
# the regulariser also offers "gram": all linear algebra on r x r Gram matrices (cheapest, see
# spectral_penalty); it squares the condition number, so spectra reported to users use METHODS
REG_METHODS = METHODS + ("gram",)
METRICS = SPECTRAL_METRICS
ZERO_NORM = 1e-12  # ||B|| below this: an untrained module (PEFT initialises B = 0)
CHOLESKY_JITTER = 1e-8  # the paper's G + 1e-8 I

# --------------------------------------------------------------------------------------------
# Singular values of B @ A


def _triangular_factor(x: torch.Tensor) -> torch.Tensor:
    """R of a thin QR of x (..., m, r): x = Q R with Q^T Q = I, so sigma(x Y) = sigma(R Y).

    When m <= r the matrix is already small and serves as its own factor (Q = I).
    """
    if x.shape[-2] <= x.shape[-1]:
        return x
    # mode="r" skips forming Q but has no backward; the regulariser needs one
    return torch.linalg.qr(x, mode="reduced" if x.requires_grad else "r").R


def _qr_core(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The small matrix R_B R_A^T (..., <=r, <=r) whose singular values are those of B A."""
    return _triangular_factor(B) @ _triangular_factor(A.mT).mT


def _cholesky_svdvals(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The paper's route in float32: L = chol(B^T B + 1e-8 I), sigma = svdvals(L^T A).

    B^T B = L L^T means B = Q L^T with Q orthonormal, so sigma(B A) = sigma(L^T A). Modules where
    the factorisation breaks down (B^T B numerically indefinite: rank-deficient or badly
    conditioned B) get NaN singular values rather than an exception.
    """
    A, B = A.float(), B.float()
    eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
    L, info = torch.linalg.cholesky_ex(B.mT @ B + CHOLESKY_JITTER * eye)
    sigma = torch.linalg.svdvals(L.mT @ A)
    return torch.where((info > 0).unsqueeze(-1), torch.nan, sigma)


def lora_singular_values(A: torch.Tensor, B: torch.Tensor, scaling: float = 1.0, method: str = "qr") -> torch.Tensor:
    """The r singular values of `scaling * B @ A`, descending, without forming B @ A.

    A: (r, d_in) or (k, r, d_in); B: (d_out, r) or (k, d_out, r), PEFT's lora_A / lora_B weights.
    Returns (r,) or (k, r). `qr` (exact) works in float64; `cholesky` (the paper's) in float32 and
    returns NaN for a module where the Cholesky factorisation fails. Modules with ||B|| < 1e-12
    give zeros. Fewer than r singular values (d_in or d_out < r) are padded with zeros.
    """
    if method not in METHODS:
        raise ConfigError(f"spectra method: expected one of {METHODS}, got {method!r}")
    if A.shape[-2] != B.shape[-1] or A.shape[:-2] != B.shape[:-2]:
        raise ValueError(f"LoRA factor shapes do not match: A {tuple(A.shape)}, B {tuple(B.shape)}")
    r = A.shape[-2]
    with torch.no_grad():
        if method == "qr" and A.device.type == "cpu" and A.ndim == 3:
            # On a CPU, converting and factorising one module at a time keeps it in cache: about
            # twice as fast as one batched LAPACK call on Qwen3-8B shapes (bench/bench_spectra.py).
            core = torch.stack([_qr_core(a.double(), b.double()) for a, b in zip(A, B)])
            sigma = torch.linalg.svdvals(core)
        elif method == "qr":
            sigma = torch.linalg.svdvals(_qr_core(A.double(), B.double()))
        else:
            sigma = _cholesky_svdvals(A, B)
        sigma = torch.nn.functional.pad(sigma, (0, r - sigma.shape[-1]))
        dead = torch.linalg.matrix_norm(B.to(sigma.dtype)) < ZERO_NORM
        return torch.where(dead.unsqueeze(-1), 0.0, sigma * abs(scaling))


# --------------------------------------------------------------------------------------------
# Metrics


def _batched_metrics(sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four metrics of each row of sigma (k, r), descending; NaN for an all-zero row."""
    sigma = sigma.double()
    total = sigma.sum(-1)
    zero = total <= 0
    safe = torch.where(zero.unsqueeze(-1), 1.0, sigma)  # keeps 0/0 out of the arithmetic
    safe = safe / safe.amax(-1, keepdim=True)  # the metrics are scale-invariant: s_1 = 1 keeps s^2 finite
    s1, sr = safe[..., 0], safe[..., -1]
    sq = (safe**2).sum(-1)
    p = safe / safe.sum(-1, keepdim=True)
    entropy = -torch.special.xlogy(p, p).sum(-1)  # xlogy: 0 ln 0 = 0
    out = {
        "stable_rank": sq / s1**2,
        "spectral_entropy": entropy,
        "condition_number": s1 / sr,  # inf when sigma_r = 0 (rank-deficient)
        "frobenius_nuclear": sq.sqrt() / safe.sum(-1),
    }
    return {k: torch.where(zero, torch.nan, v) for k, v in out.items()}


def spectral_metrics(sigma: Sequence[float] | np.ndarray | torch.Tensor) -> dict[str, float]:
    """stable_rank, spectral_entropy (nats), condition_number, frobenius_nuclear of one spectrum.

    sigma: the r singular values (any order; sorted here). All four are NaN for an all-zero
    spectrum (an untrained module); condition_number is inf when the smallest value is 0.
    """
    s = torch.as_tensor(np.asarray(sigma, dtype=np.float64)).flatten().sort(descending=True).values
    return {k: float(v[0]) for k, v in _batched_metrics(s.unsqueeze(0)).items()}


# --------------------------------------------------------------------------------------------
# Reading a PEFT adapter directory (no base model needed)

WEIGHTS, CONFIG = ADAPTER_WEIGHTS, ADAPTER_CONFIG
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


def _read_config(adapter_dir: Path) -> dict:
    path = adapter_dir / CONFIG
    if not path.is_file():
        raise AdapterError(f"{adapter_dir}: not a PEFT adapter directory (no {CONFIG})")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or "r" not in cfg:
        raise AdapterError(f"{path}: expected a LoRA config with a rank `r`")
    return cfg


def _read_factors(adapter_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"A": lora_A weight, "B": lora_B weight}} from the adapter's safetensors."""
    path = adapter_dir / WEIGHTS
    if not path.is_file():
        raise AdapterError(f"{path}: missing (only safetensors adapters are read)")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"{path}: corrupt or truncated safetensors file: {exc}") from exc
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m:  # other tensors (DoRA magnitudes, modules_to_save) are not part of B @ A
            factors.setdefault(m["module"], {})[m["ab"]] = tensor
    if not factors:
        raise AdapterError(f"{path}: no lora_A / lora_B weights in the file")
    for module, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: module {module} has lora_{''.join(ab)} but not both factors")
    return factors


def _module_scaling(cfg: dict, module: str) -> tuple[int, float]:
    """(r, scaling) of one module as PEFT computes them: rank/alpha patterns, then alpha/r or rsLoRA."""
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    from peft.utils.other import get_pattern_key  # PEFT's own pattern matching (lazy: peft is slow to import)

    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), cfg["r"])
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), cfg.get("lora_alpha", 8))
    return r, alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _pattern_key(module: str, experts: dict[str, tuple[str, str]]) -> str:
    """The name PEFT matches rank/alpha patterns against: module.parameter for a wrapped parameter."""
    return ".".join(experts[module]) if module in experts else module


def _wrapped_name(path: str, param: str, n: int) -> str:
    """The name of a wrapped parameter's LoRA: its module for fused experts (n > 1), else the
    module.parameter (without `.weight`, e.g. the MoE router's `mlp.gate`)."""
    return path if n > 1 else f"{path}.{param}".removesuffix(".weight")


def _module_layer(module: str) -> int | None:
    m = _LAYER.search(f".{module}.")
    return int(m.group(1)) if m else None


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(the adapter config, {module: {"A": lora_A, "B": lora_B}}) of a PEFT adapter directory.

    Raises AdapterError naming the file when either is missing or corrupt, or when a module's
    factor shapes do not match the rank the config gives it.
    """
    cfg, factors, _, _ = _read_checked(Path(adapter_dir))
    return cfg, factors


def _read_checked(adapter_dir: Path) -> tuple[dict, dict, dict[str, tuple[str, str]], dict[str, tuple[int, float]]]:
    """read_adapter's (config, factors), with what the check found on the way: the wrapped
    parameters (experts.parameter_names) and {module: (r, scaling)}."""
    cfg = _read_config(adapter_dir)
    factors = _read_factors(adapter_dir)
    experts = parameter_names(cfg, list(factors))
    scalings = {}
    for module, ab in factors.items():
        r, scaling = scalings[module] = _module_scaling(cfg, _pattern_key(module, experts))
        A, B = ab["A"], ab["B"]
        rows = A.shape[0] if module in experts and A.shape[0] % r == 0 else r  # E * r on fused experts
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != rows or B.shape[1] != rows:
            what = f"rank {r}" + (" per expert" if module in experts else "")
            raise AdapterError(
                f"{adapter_dir / WEIGHTS}: module {module} has lora_A {tuple(A.shape)} and lora_B "
                f"{tuple(B.shape)}, but {adapter_dir / CONFIG} gives {what}"
            )
    return cfg, factors, experts, scalings


def adapter_spectra(adapter_dir: str | Path, method: str = "qr") -> pd.DataFrame:
    """One row per LoRA module of a PEFT adapter directory (per expert and projection on fused MoE
    experts): the spectrum of scaling * B @ A (of scaling * B_e @ A_e for expert e).

    Columns: module, layer (int or None), kind (last name part, e.g. q_proj or gate_up_proj),
    expert (int, or NA for a dense module), r, scaling, sigma (list of r floats, descending),
    stable_rank, spectral_entropy, condition_number, frobenius_nuclear. Raises AdapterError naming
    the file when it is missing, corrupt, or does not match its adapter config.
    """
    _, factors, experts, scalings = _read_checked(Path(adapter_dir))
    modules = []
    for module, ab in factors.items():
        r, scaling = scalings[module]
        n = ab["A"].shape[0] // r if module in experts else 1
        if module in experts:  # a wrapped parameter: fused experts, or a 2-D one (the MoE router)
            path, param = experts[module]
            modules.append((_wrapped_name(path, param, n), ab["A"], ab["B"], r, scaling, n, param))
        else:
            modules.append((module, ab["A"], ab["B"], r, scaling, 1, None))
    return _spectra_frame(modules, method)


def model_spectra(model: torch.nn.Module, method: str = "qr") -> pd.DataFrame:
    """adapter_spectra of the active LoRA adapter of a PEFT model in memory (no file written).

    Same columns and module names as adapter_spectra of the adapter the model would save, so the
    numbers equal `evilspectra spectra` on that folder. Raises ConfigError for a model without LoRA.
    """
    from peft.tuners.lora import LoraLayer

    modules = []
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                    module = name.removeprefix("base_model.model.")
                    n, param = getattr(layer, "num_experts", 1), getattr(layer, "parameter_name", None)
                    if param is not None:  # PEFT ParamWrapper: named as adapter_spectra names it
                        module = _wrapped_name(module.replace(WRAPPED, ""), param, n)
                    entry = (module, A.detach().cpu(), B.detach().cpu(), layer.r[adapter], layer.scaling[adapter])
                    modules.append((*entry, n, param))
    if not modules:
        raise ConfigError(
            f"{type(model).__name__} has no LoRA modules: wrap it with peft.get_peft_model(model, LoraConfig(...))"
        )
    return _spectra_frame(modules, method)


def _spectra_frame(modules: list[tuple], method: str) -> pd.DataFrame:
    """Rows of (module, A, B, r, scaling, number of experts, fused parameter name or None) -> the
    adapter_spectra frame, one row per module or per expert of a fused module, in layer order."""
    rows = []
    for module, A, B, r, scaling, n, param in modules:
        if n > 1:  # fused experts: E rank-r pairs
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
        "layer": _module_layer(module),
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


# --------------------------------------------------------------------------------------------
# Plot


def mean_normalised_spectrum(df: pd.DataFrame) -> np.ndarray:
    """Mean over modules of sigma_i / sigma_1 (i = 1..max r) of the last checkpoint in `df`;
    all-zero modules are skipped, shorter spectra (rank_pattern) count only where they exist."""
    if "checkpoint" in df.columns:  # run frames list checkpoints in step order, `final` last
        df = df[df["checkpoint"] == df["checkpoint"].iloc[-1]]
    width = max(len(s) for s in df["sigma"])
    rows = np.full((len(df), width), np.nan)
    for i, s in enumerate(df["sigma"]):
        s = np.asarray(s, dtype=np.float64)
        if s.size and s[0] > 0:
            rows[i, : s.size] = s / s[0]
    return np.nanmean(rows, axis=0) if np.isfinite(rows).any() else np.full(width, np.nan)


def plot_normalised_spectra(frames: dict[str, pd.DataFrame], out_png: str | Path) -> Path:
    """One line per run: mean over modules of sigma_i / sigma_1 against i (final checkpoint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, df in frames.items():
        curve = mean_normalised_spectrum(df)
        ax.plot(np.arange(1, curve.size + 1), curve, marker=".", label=label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("index i")
    ax.set_ylabel("mean over modules of sigma_i / sigma_1")
    ax.set_ylim(0, 1.05)
    ax.set_title("Normalised LoRA spectra (flat = 1)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    out_png = Path(out_png)
    try:  # a temp file renamed into place: a full disk leaves no empty plot behind
        atomic_write_file(out_png, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return out_png


# --------------------------------------------------------------------------------------------
# The regulariser


def lora_factor_pairs(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """(module name, lora_A weight, lora_B weight) for every active linear LoRA adapter of a PEFT model."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A and adapter in module.lora_B:
                pairs.append((name, module.lora_A[adapter].weight, module.lora_B[adapter].weight))
    return pairs


def spectral_penalty(A: torch.Tensor, B: torch.Tensor, method: str = "qr") -> torch.Tensor:
    """Per-module ||sigma||_2 / ||sigma||_1 - 1/sqrt(r) of B @ A, differentiable; (k,) for stacked
    A (k, r, d_in), B (k, d_out, r). 0 (with zero gradient) where A or B is zero.

    Dead modules are swapped for a well-conditioned stand-in (B A = flat) before the linear algebra
    and masked out afterwards: QR and SVD backward at a zero matrix give NaN, and a where() after
    the fact would not stop NaN * 0 = NaN from reaching the factors. No host sync is needed.
    """
    r = A.shape[-2]
    dead = (torch.linalg.matrix_norm(B) < ZERO_NORM) | (torch.linalg.matrix_norm(A) < ZERO_NORM)
    dead3 = dead.unsqueeze(-1).unsqueeze(-1)
    A = torch.where(dead3, torch.eye(r, A.shape[-1], dtype=A.dtype, device=A.device), A)
    B = torch.where(dead3, torch.eye(B.shape[-2], r, dtype=B.dtype, device=B.device), B)
    if method == "qr":
        sigma = torch.linalg.svdvals(_qr_core(A, B))
    elif method == "gram":
        # sigma(B A)^2 = eig(L^T (B^T B) L) with L L^T = A A^T: only r x r factorisations, and the
        # eigenvalue-only gradient has no 1/(lambda_i - lambda_j) terms, so flat spectra are safe
        gram_a = A @ A.mT
        jitter = 1e-7 * gram_a.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).unsqueeze(-1)
        L = torch.linalg.cholesky(gram_a + jitter * torch.eye(r, dtype=A.dtype, device=A.device))
        sigma = torch.linalg.eigvalsh(L.mT @ (B.mT @ B) @ L).clamp_min(1e-30).sqrt()
    else:  # the paper's route; raises if B^T B is numerically indefinite
        eye = torch.eye(r, dtype=B.dtype, device=B.device)
        sigma = torch.linalg.svdvals(torch.linalg.cholesky(B.mT @ B + CHOLESKY_JITTER * eye).mT @ A)
    ratio = sigma.norm(dim=-1) / sigma.sum(-1) - 1 / math.sqrt(r)
    return torch.where(dead, 0.0, ratio)


class SpectralRegulariser:
    """R = aggregate over LoRA modules of ||sigma||_2 / ||sigma||_1 - 1/sqrt(r), sigma = sigma(B A).

    R >= 0 and is 0 for a flat spectrum; it is scale-invariant, so the LoRA scaling is irrelevant.
    Calling the object returns a scalar tensor differentiable w.r.t. the LoRA factors.

    The factor pairs are grouped by shape once; each call stacks a group and does one batched
    computation (float32, or float64 for float64 factors), so the number of kernels does not grow
    with the number of modules. `method`: "gram" (default; r x r Gram matrices, 2.4x cheaper than
    QR on the toy model's CPU step, same value to ~1e-7), "qr" (exact), "cholesky" (the paper's). A module with B = 0 (PEFT's initialisation) contributes 0 and no
    gradient (see spectral_penalty), so step 0 is finite. `aggregation` is `mean` (over all
    modules, untrained ones counted as 0) or `sum`. Build it after the model is on its device: it keeps references to the factor parameters.

    A LoRA on fused MoE experts counts as E modules, one rank-r pair (B_e, A_e) per expert
    (evilspectra.experts), stacked with the dense modules of the same shape; `n_modules` counts them.
    """

    def __init__(self, model: torch.nn.Module, method: str = "gram", aggregation: str = "mean"):
        if method not in REG_METHODS:
            raise ConfigError(f"spectral_reg.method: expected one of {REG_METHODS}, got {method!r}")
        if aggregation not in ("mean", "sum"):
            raise ConfigError(f"spectral_reg.aggregation: expected mean or sum, got {aggregation!r}")
        pairs = lora_factor_pairs(model)
        if not pairs:
            raise ConfigError("spectral_reg: the model has no LoRA modules to regularise")
        n_experts = {name: wrapper.num_experts for name, wrapper in expert_wrappers(model).items()}
        self.method, self.aggregation = method, aggregation
        groups: dict[tuple, tuple[list, list, list]] = {}
        for name, A, B in pairs:
            E = n_experts.get(name, 1)
            key = (A.shape[0] // E, A.shape[1], B.shape[0], A.dtype, A.device)  # per-expert shapes
            groups.setdefault(key, ([], [], []))
            for part, value in zip(groups[key], (A, B, E)):
                part.append(value)
        self.groups = list(groups.values())
        self.n_modules = sum(sum(Es) for _, _, Es in self.groups)

    def __call__(self) -> torch.Tensor:
        total = sum(self._group_sum(*group) for group in self.groups)
        return total / self.n_modules if self.aggregation == "mean" else total

    def _group_sum(self, As: list[torch.Tensor], Bs: list[torch.Tensor], Es: list[int]) -> torch.Tensor:
        dtype = torch.promote_types(As[0].dtype, torch.float32)
        per_expert = [expert_factors(A, B, E) for A, B, E in zip(As, Bs, Es)]  # (E, r, d_in), (E, d_out, r)
        A = torch.cat([a for a, _ in per_expert]).to(dtype)
        B = torch.cat([b for _, b in per_expert]).to(dtype)
        return spectral_penalty(A, B, self.method).sum()
