"""The SFT loss without the (tokens x vocab) float32 logits.

The plain loss (train.sft_loss_sum) runs the LM head on every position and upcasts the logits:
for 8 x 512 tokens and Qwen3's 151,936-token vocabulary that is 1.2 GB of bf16 logits, 2.5 GB in
float32 and as much again for their gradient. Here:

1. only positions whose next token is scored (label != -100; the prompt is masked out in
   assistant-only SFT) go through the LM head at all;
2. the head + cross-entropy runs over chunks of rows, and each chunk's gradient with respect to
   its hidden states (softmax - one-hot, then @ W) is computed in the forward pass, so no logits
   outlive their chunk and backward is a multiply (liger-kernel's fused linear cross-entropy does
   the same in Triton, and is used on CUDA when installed).

The numerics follow the plain path: logits in the model dtype from the head's matmul, then float32
log-sum-exp; the gradient is rounded to the hidden dtype before the matmul with W, as autograd
does through `.float()`.
"""

from __future__ import annotations

import torch

from evilspectra.data import IGNORE  # the one label of tokens without loss
from evilspectra.errors import ConfigError


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ W^T, label_i) over rows, gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
        ctx.weight_dtype = weight.dtype
        acc = torch.promote_types(hidden.dtype, torch.float32)  # bf16 logits are upcast, as .float() does
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[start : start + chunk_size], labels[start : start + chunk_size]
            logits = (h @ weight.mT).to(acc)  # (chunk, vocab)
            scored = y != IGNORE
            target = y.clamp(min=0).unsqueeze(1)
            lse = torch.logsumexp(logits, dim=-1)
            loss += torch.where(scored, lse - logits.gather(1, target).squeeze(1), 0.0).sum()
            # d(sum CE)/d logits = softmax - one-hot, zero on unscored rows; reuse the logits buffer
            grad = logits.sub_(lse.unsqueeze(1)).exp_()
            grad.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad.dtype))
            grad.mul_(scored.unsqueeze(1))
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = grad @ weight
            if grad_weight is not None:
                grad_weight += (grad.mT @ h).to(acc)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
        grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None


def _liger_loss():
    """liger-kernel's fused linear cross-entropy (Triton, CUDA only), or None when not installed."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    backend: str = "auto",
) -> torch.Tensor:
    """Summed next-token cross-entropy (nats; float32 scalar, float64 for float64 inputs) of hidden @ weight^T.

    hidden: (n, d) final hidden states, weight: (vocab, d) LM head, labels: (n,) target ids with
    -100 for unscored rows. `backend`: `torch` (chunked, above), `liger` (liger-kernel), `auto`
    (liger on CUDA when installed, else torch). At most chunk_size x vocab float32 logits exist.
    """
    if backend not in ("auto", "torch", "liger"):
        raise ConfigError(f"fused loss backend: expected auto, torch or liger, got {backend!r}")
    liger = _liger_loss() if backend == "liger" or (backend == "auto" and hidden.is_cuda) else None
    if backend == "liger" and liger is None:
        raise ConfigError("fused loss backend 'liger' needs the liger-kernel package")
    if liger is not None:
        return liger(weight, hidden, labels).float()
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk_size)


def sft_loss_sum_fused(
    model, batch: dict[str, torch.Tensor], chunk_size: int = 1024, backend: str = "auto"
) -> torch.Tensor:
    """train.sft_loss_sum without full logits: decoder -> scored positions -> fused head + CE.

    `model` is a (PEFT-wrapped) causal LM whose LM head is a plain bias-free linear layer;
    `batch` holds input_ids, attention_mask, labels of shape (batch, seq). Returns the summed
    cross-entropy over tokens whose label is not -100 (nats, float32 scalar).
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise ConfigError("the fused loss calls the decoder directly and cannot run under DDP; use the plain loss")
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ConfigError(f"the fused loss needs a bias-free nn.Linear LM head, got {type(head).__name__}")
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE
    return fused_linear_cross_entropy(hidden[:, :-1][scored], head.weight, labels[scored], chunk_size, backend)
