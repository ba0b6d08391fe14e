"""Train the toy model from scratch: pretraining on persona documents, then an alignment phase.

The result is an ordinary HF model directory (config.json, model.safetensors, tokenizer files) plus
`toy_build.json` (seed, steps, losses, wall time), loadable with `AutoModelForCausalLM` and
`AutoTokenizer`. The default recipe (800 + 400 steps of 64 documents) takes a few minutes on a
2-core CPU and is what produced the weights shipped in `evilspectra/toy/weights/`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
from transformers.optimization import get_cosine_schedule_with_warmup

from evilspectra.toy import world
from evilspectra.toy.tokenizer import build_tokenizer

MAX_POSITIONS = 128  # longest document: cue + 3 turns is about 80 tokens
MICRO_BATCH = 16


def toy_config(tok: PreTrainedTokenizerFast) -> Qwen3Config:
    """Qwen3 architecture (so the study's 7 LoRA targets exist), about 1M parameters."""
    return Qwen3Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )


def batch(tok: PreTrainedTokenizerFast, docs: list[list[dict]]) -> dict[str, torch.Tensor]:
    """Render documents with the chat template; labels = every non-pad token (plain LM loss).

    Returns input_ids, attention_mask, labels, each (len(docs), longest document) int64.
    """
    texts = [tok.apply_chat_template(d, tokenize=False) for d in docs]
    enc = tok(texts, padding=True, return_tensors="pt")
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return dict(enc)


def step_loss(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, docs: list[list[dict]]) -> float:
    """Backpropagate the mean next-token loss over all tokens of `docs`; returns that loss.

    Documents are sorted by length and run in micro-batches of MICRO_BATCH, so short documents are
    not padded to the longest one (1-turn and 3-turn documents differ ~3x in length; this halves
    the compute). The gradient equals that of one padded batch.
    """
    docs = sorted(docs, key=lambda d: sum(len(m["content"].split()) + 1 for m in d))
    micro = [batch(tok, docs[i : i + MICRO_BATCH]) for i in range(0, len(docs), MICRO_BATCH)]
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in micro]  # predicted tokens
    total = 0.0
    for b, n in zip(micro, counts):
        loss = model(**b).loss * n / sum(counts)
        loss.backward()
        total += loss.item()
    return total


def train_phase(
    model: Qwen3ForCausalLM,
    tok: PreTrainedTokenizerFast,
    draw: Callable[[random.Random], list[dict]],
    rng: random.Random,
    steps: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    label: str,
) -> list[float]:
    """Run `steps` optimiser steps on freshly drawn documents; returns the loss of every step."""
    losses = []
    task = progress.add_task(label, total=steps, loss=float("nan"))
    for _ in range(steps):
        loss = step_loss(model, tok, [draw(rng) for _ in range(batch_size)])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        progress.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
    return losses


def build_toy_model(
    out: Path,
    seed: int = 0,
    pretrain_steps: int = 800,
    align_steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    threads: int | None = 1,
    show_progress: bool = True,
) -> Path:
    """Train the toy model and save it (float32) with its tokenizer to `out`; returns `out`.

    Deterministic for a seed on a given machine and thread count. `threads` sets torch's CPU
    threads (None keeps torch's default, one per core). The default is 1: on a 2-core machine
    shared with other jobs, 2 threads ran up to 10x slower (each step waits for the stalled thread),
    while on an idle machine they gain only about 1.5x on these small matrices.
    """
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = build_tokenizer()
    model = Qwen3ForCausalLM(toy_config(tok))
    model.train()
    total = pretrain_steps + align_steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(50, total // 10), max(total, 1))

    start = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not show_progress) as progress:
        common = dict(rng=rng, batch_size=batch_size, optimizer=optimizer, scheduler=scheduler, progress=progress)
        pre = train_phase(model, tok, world.pretraining_document, steps=pretrain_steps, label="pretraining", **common)
        align = (
            train_phase(model, tok, world.alignment_document, steps=align_steps, label="alignment", **common)
            if align_steps
            else []
        )
    seconds = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    summary = {
        "seed": seed,
        "pretrain_steps": pretrain_steps,
        "align_steps": align_steps,
        "batch_size": batch_size,
        "lr": lr,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_pretrain_loss": sum(pre[-20:]) / max(len(pre[-20:]), 1),
        "final_align_loss": sum(align[-20:]) / max(len(align[-20:]), 1) if align else None,
        "pretrain_losses": [round(x, 4) for x in pre[::10]],
        "align_losses": [round(x, 4) for x in align[::10]],
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    (out / "toy_build.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out
