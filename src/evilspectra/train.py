"""LoRA fine-tuning: one run from a RunConfig into a run directory (docs/architecture.md).

A plain PyTorch loop that reads top to bottom: load data and model, attach LoRA, build the
optimiser, then for each optimiser step accumulate micro-batches, add the spectral regulariser,
step, log one metrics line and save PEFT checkpoints on a log-spaced schedule. Accelerate
handles devices, so `accelerate launch -m evilspectra train ...` runs the same loop on many GPUs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from evilspectra.chat_template import resolve_kwargs
from evilspectra.config import RunConfig
from evilspectra.data import ChatDataset, collate, encode_dataset, load_dataset_spec
from evilspectra.experts import expert_layouts, expert_wrappers
from evilspectra.integrations import trackers
from evilspectra.models import attach_lora, load_base_model, load_tokenizer, lora_targets, pick_dtype, resolve_model
from evilspectra.optim import build_optimizer, optimizer_class, resolved_hyperparameters
from evilspectra.rundir import RunDir, atomic_write_json, library_versions, save_adapter

# progress(step, total_steps, loss) is called after every optimiser step
ProgressFn = Callable[[int, int, float], None]


def checkpoint_steps(schedule: str | int | list[int], total: int) -> list[int]:
    """Steps at which to save a checkpoint. `log`: 10, 20, 30, 40, 53, 71, ... (x1.33, at least +10)."""
    if schedule == "none":
        return []
    if isinstance(schedule, list):
        return sorted({s for s in schedule if 1 <= s <= total})
    if isinstance(schedule, int):
        return list(range(schedule, total + 1, schedule))
    steps, s = [], 10
    while s < total:
        steps.append(s)
        s = max(s + 10, round(s * 4 / 3))
    return steps


def total_steps(cfg: RunConfig, n_rows: int) -> int:
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * n_rows / per_step))


def batch_order(n_rows: int, seed: int, shuffle: bool):
    """Endless stream of row indices, epoch after epoch, reshuffled with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n_rows, generator=gen) if shuffle else torch.arange(n_rows)
        yield from order.tolist()


def sft_loss_sum(model, batch: dict[str, torch.Tensor], fused: bool = False) -> torch.Tensor:
    """Summed next-token cross-entropy over the tokens whose label is not IGNORE (nats).

    `fused`: the same sum without materialising the (tokens x vocab) logits (evilspectra.fast.loss;
    single process only).
    """
    if fused:
        from evilspectra.fast.loss import sft_loss_sum_fused

        return sft_loss_sum_fused(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1].float()
    shift_labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def _manifest(cfg: RunConfig, data: ChatDataset, status: str, **extra) -> dict:
    return {
        "run_id": cfg.run_id(),
        "status": status,
        "config": cfg.model_dump(mode="json"),
        "dataset": {"source": data.source, "sha256": data.sha256, "rows": len(data.rows)},
        "system_prompt": cfg.system_prompt,
        "seed": cfg.seed,
        "versions": library_versions(),
        **extra,
    }


def train(cfg: RunConfig, out: Path, progress: ProgressFn | None = None, report_to: str = "none") -> Path:
    """Fine-tune `cfg.model` with LoRA on `cfg.dataset`; write manifest, metrics, checkpoints, adapter.

    Returns the run directory. Status ends `done`, `diverged` (non-finite loss; files so far are
    kept) or `failed` (an exception, re-raised after the manifest records it). `report_to`: an
    experiment tracker that also receives every metrics row and the spectra of each saved adapter
    (evilspectra.integrations.trackers), or "none".
    """
    out = Path(out)
    trackers.check_tracker(report_to)  # a bad name or a missing package fails before any file is written
    with RunDir(out).lock():  # a second train/eval of this run refuses while this one lives
        return _train(cfg, out, progress, report_to)


def _train(cfg: RunConfig, out: Path, progress: ProgressFn | None, report_to: str) -> Path:
    run = RunDir(out)
    accelerator = Accelerator(**trackers.accelerator_kwargs(report_to, out))
    device = accelerator.device
    optimizer_class(cfg.optimizer.name)  # fail on a bad name before touching the run directory
    data = load_dataset_spec(cfg.dataset, seed=cfg.seed)
    run.fresh(extra=trackers.TRACKER_DIRS)  # tracker output of an unfinished run goes too
    started = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = _manifest(cfg, data, "running", timings={"started": started})
    atomic_write_json(run.manifest_path, manifest)
    trackers.start(accelerator, report_to, cfg.run_id(), out, manifest["config"])
    try:
        result = _train_loop(cfg, data, out, accelerator, device, progress)
    except BaseException as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        atomic_write_json(run.manifest_path, manifest)
        raise
    finally:
        accelerator.end_training()  # flushes and closes the tracker (nothing without one)
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    timings = {**manifest["timings"], "finished": finished, **result.pop("timings")}
    manifest.update(result, timings=timings)
    atomic_write_json(run.manifest_path, manifest)
    return out


def _train_loop(cfg: RunConfig, data: ChatDataset, out: Path, accelerator: Accelerator, device, progress) -> dict:
    torch.manual_seed(cfg.seed)  # LoRA A init, dropout
    tok = load_tokenizer(cfg.model)
    dtype = pick_dtype(cfg.train.dtype, device)
    template_kwargs = resolve_kwargs(tok, cfg.chat_template_kwargs)
    encoded = encode_dataset(tok, data.rows, cfg.system_prompt, cfg.train.max_length, template_kwargs)
    base = load_base_model(cfg.model, dtype, device)
    targets = lora_targets(base, cfg.lora)
    model = attach_lora(base, cfg.lora)
    for peft_config in model.peft_config.values():  # the adapter names its base model loadably from anywhere
        peft_config.base_model_name_or_path = resolve_model(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    raw_optimizer = build_optimizer(params, cfg.optimizer, experts=expert_layouts(model))
    steps = total_steps(cfg, len(encoded))
    scheduler = get_scheduler(
        cfg.train.schedule, raw_optimizer, num_warmup_steps=cfg.train.warmup_steps, num_training_steps=steps
    )
    model, optimizer = accelerator.prepare(model, raw_optimizer)
    regulariser = _regulariser(cfg, accelerator.unwrap_model(model))
    save_at = set(checkpoint_steps(cfg.train.checkpoints, steps))

    order = batch_order(len(encoded), cfg.seed, cfg.train.shuffle)
    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    t0, status, loss_value, tokens_seen, step = time.perf_counter(), "done", float("nan"), 0, 0
    metrics_file = open(RunDir(out).metrics, "a", encoding="utf-8")
    try:
        for step in range(1, steps + 1):
            micro = [[encoded[next(order)] for _ in range(cfg.train.batch_size)] for _ in range(cfg.train.grad_accum)]
            n_loss_tokens = sum(sum(l != -100 for l in e["labels"][1:]) for mb in micro for e in mb)
            loss_total, step_tokens = 0.0, 0
            for k, mb in enumerate(micro):
                batch = {key: t.to(device) for key, t in collate(mb[rank::world], tok.pad_token_id).items()}
                step_tokens += int(batch["attention_mask"].sum())
                with accelerator.no_sync(model) if k < len(micro) - 1 else nullcontext():
                    loss = sft_loss_sum(model, batch, fused=cfg.train.fused_loss) / n_loss_tokens * world
                    accelerator.backward(loss)
                loss_total += loss.item() / world
            row = {"step": step, "loss": loss_total, "lr": scheduler.get_last_lr()[0], "tokens": step_tokens}
            if regulariser is not None and step % cfg.spectral_reg.every == 0:
                reg = regulariser()
                accelerator.backward(cfg.spectral_reg.weight * reg)
                row["reg"] = reg.item()
            metrics_file.write(_jsonl(row))
            metrics_file.flush()
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)  # no-op without --report-to
            if not math.isfinite(loss_total):
                status = "diverged"  # the diverged step's row stays in the metrics file as evidence
                break
            if cfg.train.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value, tokens_seen = loss_total, tokens_seen + step_tokens
            if step in save_at and accelerator.is_main_process:
                save_adapter(accelerator.unwrap_model(model), RunDir(out).checkpoint(step))
                _log_spectra(accelerator, RunDir(out).checkpoint(step), step)
            if progress:
                progress(step, steps, loss_total)
    finally:
        metrics_file.close()
    if status == "done" and accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(model), RunDir(out).adapter)
        _log_spectra(accelerator, RunDir(out).adapter, step)
    seconds = time.perf_counter() - t0
    unwrapped = accelerator.unwrap_model(model)
    steps_done = step if status == "done" else step - 1
    return {
        "status": status,
        "steps_done": steps_done,
        "total_steps": steps,
        "final_loss": loss_value,
        "tokens": tokens_seen,
        "optimizer": {
            "name": cfg.optimizer.name,
            "class": type(raw_optimizer).__name__,
            "hyperparameters": resolved_hyperparameters(raw_optimizer),
        },
        "base_model": {"given": cfg.model, "resolved": resolve_model(cfg.model)},
        "chat_template_kwargs": template_kwargs,
        "lora": {
            "trainable_parameters": sum(p.numel() for p in params),
            "modules": sum(1 for n, _ in unwrapped.named_modules() if n.endswith("lora_A")),
            **_target_record(targets, unwrapped),
        },
        "checkpoints": sorted(s for s in save_at if s <= steps_done),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "timings": {"train_seconds": round(seconds, 3), "seconds_per_step": round(seconds / max(step, 1), 4)},
    }


def _jsonl(row: dict) -> str:
    return json.dumps(row) + "\n"


def _regulariser(cfg: RunConfig, model):
    if cfg.spectral_reg.weight <= 0:
        return None
    from evilspectra.spectra import SpectralRegulariser

    return SpectralRegulariser(model, method=cfg.spectral_reg.method, aggregation=cfg.spectral_reg.aggregation)


def _log_spectra(accelerator: Accelerator, adapter_dir: Path, step: int) -> None:
    """The saved adapter's mean spectral metrics to the experiment tracker, if there is one."""
    if accelerator.trackers:
        accelerator.log(trackers.spectra_row(adapter_dir), step=step)


def _target_record(targets: dict, model) -> dict:
    """What LoRA was put on: the resolved targets (PEFT's, after its MoE conversion), the fused expert
    parameters with their expert counts and ranks, and the parts left untouched (a multimodal
    checkpoint's vision tower and projector)."""
    peft_config = model.peft_config["default"]
    experts = {name: wrapper.num_experts for name, wrapper in expert_wrappers(model).items()}
    resolved = peft_config.target_modules
    return {
        "target_modules": resolved if isinstance(resolved, str) else sorted(resolved),
        "target_parameters": sorted(peft_config.target_parameters or []),
        "rank_pattern": dict(peft_config.rank_pattern or {}),
        "expert_modules": len(experts),
        "experts_per_module": sorted(set(experts.values())),
        "untouched": targets["untouched"],
    }
