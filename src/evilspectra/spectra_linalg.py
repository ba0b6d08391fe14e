"""Singular values of LoRA updates and their metrics: the linear algebra, no file and no model.

A LoRA module adds delta_W = scaling * B @ A with A = `lora_A.weight` (r x d_in) and
B = `lora_B.weight` (d_out x r). Its r non-zero singular values are those of a small r x r matrix:
with B = Q_B R_B and A^T = Q_A R_A (thin QR), B A = Q_B (R_B R_A^T) Q_A^T, and Q_B, Q_A have
orthonormal columns, so sigma(B A) = sigma(R_B R_A^T). The d_out x d_in product is never formed.
The paper's route (Cholesky of B^T B) is offered for reproduction; it squares the condition number
of B and breaks down when B is rank-deficient.

The linear algebra takes stacked batches (k x r x d_in, k x d_out x r): the regulariser stacks the
modules of equal shape into one batched call per shape on every training step. Reading an adapter
from disk (CPU) goes module by module, which keeps each one in cache and is faster there.

Metrics of sigma_1 >= ... >= sigma_r (all scale-invariant): stable rank sum(s^2)/s_1^2, spectral
entropy -sum(p ln p) with p = s/sum(s) (nats), condition number s_1/s_r, Frobenius/nuclear
sqrt(sum s^2)/sum(s) in [1/sqrt(r), 1]. An all-zero spectrum (B = 0, a fresh adapter) has all four
metrics NaN; a rank-deficient one has condition number inf.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from evilspectra.artefacts.records import SPECTRAL_METRICS
from evilspectra.errors import ConfigError

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


def qr_core(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
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
            core = torch.stack([qr_core(a.double(), b.double()) for a, b in zip(A, B)])
            sigma = torch.linalg.svdvals(core)
        elif method == "qr":
            sigma = torch.linalg.svdvals(qr_core(A.double(), B.double()))
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
