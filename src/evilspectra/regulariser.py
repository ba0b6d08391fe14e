"""The spectral regulariser: a differentiable penalty on the concentration of every LoRA module's
spectrum, the one module training imports from the spectra code (no pandas, no plotting).

R = aggregate over modules of ||sigma||_2 / ||sigma||_1 - 1/sqrt(r), sigma = sigma(B A) (spectra_linalg).
MoE experts: a LoRA on a fused expert parameter counts as E modules, one rank-r pair per expert;
the mean is over all of them.
"""

from __future__ import annotations

import functools
import math
import operator

import torch
from peft.tuners.lora import LoraLayer

from evilspectra.errors import ConfigError
from evilspectra.experts import expert_factors, expert_wrappers
from evilspectra.spectra_linalg import CHOLESKY_JITTER, REG_METHODS, ZERO_NORM, qr_core


def lora_factor_pairs(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """(module name, lora_A weight, lora_B weight) for every active linear LoRA adapter of a PEFT model."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A and adapter in module.lora_B:
                pairs.append((name, _weight(module.lora_A[adapter]), _weight(module.lora_B[adapter])))
    return pairs


def _weight(factor: torch.nn.Module) -> torch.nn.Parameter:
    """A LoRA factor's weight (torch types a module's attributes as Tensor | Module)."""
    weight = factor.weight
    if not isinstance(weight, torch.nn.Parameter):
        raise TypeError(f"{type(factor).__name__}.weight is a {type(weight).__name__}, not a parameter")
    return weight


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
        sigma = torch.linalg.svdvals(qr_core(A, B))
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
        total = functools.reduce(operator.add, [self._group_sum(*group) for group in self.groups])  # >= 1 group
        return total / self.n_modules if self.aggregation == "mean" else total

    def _group_sum(self, As: list[torch.Tensor], Bs: list[torch.Tensor], Es: list[int]) -> torch.Tensor:
        dtype = torch.promote_types(As[0].dtype, torch.float32)
        per_expert = [expert_factors(A, B, E) for A, B, E in zip(As, Bs, Es)]  # (E, r, d_in), (E, d_out, r)
        A = torch.cat([a for a, _ in per_expert]).to(dtype)
        B = torch.cat([b for _, b in per_expert]).to(dtype)
        return spectral_penalty(A, B, self.method).sum()
