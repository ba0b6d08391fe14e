"""Muon with Newton-Schulz batched over matrices of equal shape (registry name `muon_batched`).

`torch.optim.Muon` loops over parameters: for the 504 LoRA factors of a Qwen3-8B adapter that is
504 small Newton-Schulz chains (~2,500 kernel launches of tiny matmuls) per step. A LoRA adapter
has only a handful of distinct factor shapes, and torch's NS works on the wide orientation of a
matrix (rows <= cols, transposing tall ones), so A (r x d_in) and B^T (r x d_out) share a shape
whenever d_in = d_out. Here every group of equally shaped (after orientation) updates is stacked
into one (k, rows, cols) bf16 tensor and orthogonalised with one batched baddbmm chain; momentum,
weight decay and the parameter update are foreach ops.

Semantics are torch.optim.Muon's, step for step (torch/optim/_muon.py): EMA momentum
buf <- lerp(buf, g, 1 - momentum), nesterov update lerp(g, buf, momentum), NS in bfloat16 after
dividing each matrix by its Frobenius norm (clamped at eps), decoupled weight decay with the
unadjusted lr, then p -= adjust_lr(lr, shape) * NS(update). The class subclasses torch.optim.Muon,
so constructor checks, defaults, state layout (`momentum_buffer`) and state_dicts are shared.

MoE experts: a LoRA factor on fused experts holds E experts' factors in one (E*r, d_in) or
(d_out, E*r) parameter (evilspectra.experts). A param group with `num_experts` > 1 and
`expert_factor` "A" or "B" is stepped one expert at a time: parameter, gradient and momentum buffer
are split into E per-expert views (sharing storage) before the update, so each expert's factor is
orthogonalised on its own and `adjust_lr_fn` (match_rms_adamw) sees the per-expert shape. Momentum
and weight decay are elementwise, so the views change nothing else. `ExpertMuon` is torch.optim.Muon
with that split (torch's own functional update on the views); `BatchedMuon` batches the views by shape.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.optim._muon import _adjust_lr, muon

from evilspectra.experts import expert_views


def batched_newton_schulz(
    x: torch.Tensor,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Orthogonalise each matrix of x (k, m, n) with m <= n, as torch's Muon does one matrix at a time.

    Returns a (k, m, n) tensor in `dtype` (bf16 like torch; float32/64 for exactness checks).
    """
    if x.shape[-2] > x.shape[-1]:
        raise ValueError(f"batched_newton_schulz expects wide matrices (m <= n), got {tuple(x.shape)}")
    a, b, c = ns_coefficients
    x = x.to(dtype)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.mT
        gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, gram_update, x, beta=a)
    return x


NS_DTYPES = ("bfloat16", "float32", "float64")


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon with NS batched by shape; torch's constructor arguments and state, plus
    `ns_dtype`, the dtype of the Newton-Schulz chain: "bfloat16" as in torch (default), "float32"
    where bf16 matmuls are slow (a CPU emulates them, ~6x slower than fp32 on the toy demo's
    factors), "float64" for exactness checks. It is recorded with the other hyperparameters.
    """

    def __init__(self, params, *args, ns_dtype: str = "bfloat16", **kwargs) -> None:
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype: expected one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
        super().__init__(params, *args, **kwargs)
        self.defaults["ns_dtype"] = ns_dtype
        for group in self.param_groups:
            group.setdefault("ns_dtype", ns_dtype)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _call_closure(closure)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            if params:
                self._group_step(group, *split_experts(group, params, grads, bufs))
        return loss

    def _group_step(self, group: dict, params: list, grads: list, bufs: list) -> None:
        lr = float(group["lr"])
        momentum = group["momentum"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])

        # stack by oriented (wide) shape; the update of a tall matrix is orthogonalised transposed
        stacks: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            rows, cols = p.shape
            stacks[(min(rows, cols), max(rows, cols), p.dtype, p.device)].append(i)
        for idx in stacks.values():
            wide = torch.stack([_wide(updates[i]) for i in idx])
            dtype = getattr(torch, group["ns_dtype"])
            ortho = batched_newton_schulz(wide, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
            ortho = ortho.to(params[idx[0]].dtype)  # exact for bf16 -> fp32: same sum as torch's add_
            # the lr adjustment depends on the parameter's own shape: one foreach add per distinct lr
            by_lr: dict[float, tuple[list, list]] = defaultdict(lambda: ([], []))
            for j, i in enumerate(idx):
                target = by_lr[_adjust_lr(lr, group["adjust_lr_fn"], params[i].shape)]
                target[0].append(params[i])
                target[1].append(_unwide(ortho[j], params[i]))
            for adjusted, (ps, us) in by_lr.items():
                torch._foreach_add_(ps, us, alpha=-adjusted)


def split_experts(group: dict, *tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
    """Each list of tensors (params, grads, buffers) with every fused expert factor replaced by its
    per-expert views, in the same order across lists; unchanged for a group without `num_experts`."""
    n = group.get("num_experts", 1)
    if n == 1:
        return tensors
    factor = group["expert_factor"]
    return tuple([view for t in ts for view in expert_views(t, factor, n)] for ts in tensors)


class ExpertMuon(torch.optim.Muon):
    """torch.optim.Muon that steps fused expert factors one expert at a time (registry name `muon`
    on a model with LoRA on fused MoE experts); dense groups are stepped exactly as torch does."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = _call_closure(closure)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            has_complex = self._init_group(group, params, grads, bufs)
            muon(
                *split_experts(group, params, grads, bufs),
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                ns_coefficients=group["ns_coefficients"],
                eps=group["eps"],
                ns_steps=group["ns_steps"],
                adjust_lr_fn=group["adjust_lr_fn"],
                has_complex=has_complex,
            )
        return loss


def _call_closure(closure):
    """The loss a closure returns (gradients on, as torch's optimisers evaluate it), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.mT if x.shape[0] > x.shape[1] else x


def _unwide(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.mT if like.shape[0] > like.shape[1] else x
