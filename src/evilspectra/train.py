"""LoRA fine-tuning: one run from a RunConfig into a run directory (docs/architecture.md).

A plain PyTorch loop that reads top to bottom: load data and model, attach LoRA, build the
optimiser, then for each optimiser step accumulate micro-batches, add the spectral regulariser,
step, log one metrics line and save PEFT checkpoints on a log-spaced schedule. Accelerate
handles devices, so `accelerate launch -m evilspectra train ...` runs the same loop on many processes
(docs/scale.md):

- every rank takes its slice `rows[rank::world]` of each micro-batch and divides its summed loss by
  the step's loss tokens of all ranks, so averaged gradients equal the one-process gradient;
- DDP averages the LoRA gradients; under FSDP the frozen base weights are sharded while the LoRA
  factors stay whole and replicated (FSDP ignores them) and their gradients are averaged here, so
  the regulariser, Muon's Newton-Schulz (whole matrices, never shards) and every other optimiser
  see exactly the tensors of a one-process run;
- rank 0 writes the run directory (metrics summed over ranks, adapters from a gathered full LoRA
  state dict); a failing rank records `failed` in the manifest before the others stop.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM, get_scheduler

from evilspectra.artefacts.io import DiskFullError, disk_full_guard, write_dir
from evilspectra.artefacts.machine import library_versions, machine_info
from evilspectra.artefacts.paths import RunDir
from evilspectra.artefacts.records import DatasetRecord, MachineRecord, Manifest
from evilspectra.chat_template import resolve_kwargs
from evilspectra.config import RunConfig
from evilspectra.data import IGNORE, ChatDataset, collate, encode_dataset_cached, load_dataset_spec
from evilspectra.errors import ConfigError, DataError
from evilspectra.experts import expert_layouts, expert_wrappers
from evilspectra.integrations import trackers
from evilspectra.models import attach_lora, load_base_model, load_tokenizer, lora_targets, pick_dtype, resolve_model
from evilspectra.optim import build_optimizer, check_optimizer, resolved_hyperparameters
from evilspectra.regulariser import SpectralRegulariser
from evilspectra.schedule import checkpoint_steps as checkpoint_steps  # public names kept (moved)
from evilspectra.schedule import total_steps as total_steps

# progress(step, total_steps, loss) is called after every optimiser step
ProgressFn = Callable[[int, int, float], None]
LORA_MODULES = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}


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
        ignore_index=IGNORE,
        reduction="sum",
    )


def _manifest(cfg: RunConfig, data: ChatDataset, status: str, **extra: Any) -> Manifest:
    return Manifest(
        run_id=cfg.run_id(),
        status=status,
        config=cfg,
        dataset=DatasetRecord(source=data.source, sha256=data.sha256, rows=len(data.rows)),
        system_prompt=cfg.system_prompt,
        seed=cfg.seed,
        versions=library_versions(),
        machine=MachineRecord.model_validate(machine_info()),
        **extra,
    )


def train(cfg: RunConfig, out: Path, progress: ProgressFn | None = None, report_to: str = "none") -> Path:
    """Fine-tune `cfg.model` with LoRA on `cfg.dataset`; write manifest, metrics, checkpoints, adapter.

    Returns the run directory. Status ends `done`, `diverged` (non-finite loss; files so far are
    kept) or `failed` (an exception, re-raised after the manifest records it). `report_to`: an
    experiment tracker that also receives every metrics row and the spectra of each saved adapter
    (evilspectra.integrations.trackers), or "none".
    """
    out = Path(out)
    # Everything that can reject the config is checked before any file of `out` is touched, so a
    # rejected command never resets a finished run: first what needs no model (cheap), then the model.
    data = check_config(cfg, report_to)
    accelerator = Accelerator(**trackers.accelerator_kwargs(report_to, out))
    setup = _setup(cfg, data, accelerator)
    # a second train/eval of this run refuses while this one lives; rank 0 holds the lock for all ranks
    # (evilspectra.launch holds it for the ranks it starts)
    owner = os.environ.get("RANK", "0") == "0" and not os.environ.get("EVILSPECTRA_LAUNCHER_HOLDS_LOCK")
    with RunDir(out).lock() if owner else nullcontext():
        return _train(cfg, setup, out, accelerator, progress, report_to)


def check_config(cfg: RunConfig, report_to: str = "none") -> ChatDataset:
    """Reject `cfg` on what needs no model: the tracker, the optimiser's name and hyperparameters, the
    dataset (ConfigError / DataError naming the field or file). Writes nothing; returns the dataset."""
    trackers.check_tracker(report_to)
    check_optimizer(cfg.optimizer)
    return load_dataset_spec(cfg.dataset, seed=cfg.seed)


def check_run(cfg: RunConfig, report_to: str = "none") -> None:
    """Everything `train` would reject `cfg` for, without loading the model's weights: check_config, then
    the model (its tokenizer and config load), the data fit (every row keeps an assistant token within
    max_length) and the LoRA targets, found on the model built on the meta device (no memory, no
    weights read). Writes nothing. The launcher of several processes calls it before it creates or
    locks the run directory (evilspectra.launch); `train` itself checks the same on the real model."""
    data = check_config(cfg, report_to)
    tok = load_tokenizer(cfg.model)
    template_kwargs = resolve_kwargs(tok, cfg.chat_template_kwargs)
    encode_dataset_cached(tok, data, cfg.system_prompt, cfg.train.max_length, template_kwargs)
    path = resolve_model(cfg.model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: cannot load the config of {cfg.model!r}: {exc}") from exc
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    attach_lora(base, cfg.lora, lora_targets(base, cfg.lora))


@dataclass
class _Setup:
    """A run ready for its first step: the data encoded, the model with LoRA, the optimiser."""

    data: ChatDataset
    tok: Any
    template_kwargs: dict
    encoded: list[dict]
    targets: dict
    params: list[torch.nn.Parameter]
    raw_optimizer: torch.optim.Optimizer
    steps: int
    scheduler: Any
    model: Any  # wrapped for the launch (DDP / FSDP)
    optimizer: Any
    regulariser: Callable[[], torch.Tensor] | None
    dtype: torch.dtype


def _setup(cfg: RunConfig, data: ChatDataset, accelerator: Accelerator) -> _Setup:
    """Load and check everything training needs (data fit, model, LoRA targets, optimiser); writes nothing."""
    torch.manual_seed(cfg.seed)  # LoRA A init, dropout
    tok = load_tokenizer(cfg.model)
    dtype = pick_dtype(cfg.train.dtype, accelerator.device)
    template_kwargs = resolve_kwargs(tok, cfg.chat_template_kwargs)
    encoded = encode_dataset_cached(tok, data, cfg.system_prompt, cfg.train.max_length, template_kwargs)
    base = load_base_model(cfg.model, dtype, accelerator.device)
    targets = lora_targets(base, cfg.lora)
    model = attach_lora(base, cfg.lora, targets)
    for peft_config in model.peft_config.values():  # the adapter names its base model loadably from anywhere
        peft_config.base_model_name_or_path = resolve_model(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    raw_optimizer = build_optimizer(params, cfg.optimizer, experts=expert_layouts(model))
    steps = total_steps(cfg, len(encoded))
    scheduler = get_scheduler(
        cfg.train.schedule, raw_optimizer, num_warmup_steps=cfg.train.warmup_steps, num_training_steps=steps
    )
    wrapped, optimizer = _prepare(accelerator, model, raw_optimizer)
    regulariser = _regulariser(cfg, accelerator.unwrap_model(wrapped))
    return _Setup(
        data,
        tok,
        template_kwargs,
        encoded,
        targets,
        params,
        raw_optimizer,
        steps,
        scheduler,
        wrapped,
        optimizer,
        regulariser,
        dtype,
    )


def _train(
    cfg: RunConfig, setup: _Setup, out: Path, accelerator: Accelerator, progress: ProgressFn | None, report_to: str
) -> Path:
    run, data = RunDir(out), setup.data
    started = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = _manifest(
        cfg,
        data,
        "running",
        timings={"started": started},
        processes=accelerator.num_processes,
        distributed="FSDP" if _is_fsdp(accelerator) else accelerator.distributed_type.value,
    )
    if accelerator.is_main_process:
        run.fresh()  # tracker output of an unfinished run goes too
        run.write_manifest(manifest)
    trackers.start(accelerator, report_to, cfg.run_id(), out, cfg.model_dump(mode="json"))
    try:
        accelerator.wait_for_everyone()  # no rank writes into the run directory before it is fresh
        result = _train_loop(cfg, setup, out, accelerator, progress)
    except BaseException as exc:
        _record_failure(out, manifest, exc, accelerator)
        raise
    finally:
        # flush and close the tracker (nothing without one); not end_training(), which would also
        # destroy the process group that other ranks and the next run of this process still use
        for tracker in accelerator.trackers:
            tracker.finish()
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    timings = {**manifest.timings.model_dump(exclude_unset=True), "finished": finished, **result.pop("timings")}
    manifest = manifest.updated(**result, timings=timings)
    if accelerator.is_main_process:
        run.write_manifest(manifest)
    return out


def _record_failure(out: Path, manifest: Manifest, exc: BaseException, accelerator: Accelerator) -> None:
    """Any rank that fails marks the run `failed`; the first failure is kept, so the rank that broke
    is named, not the ranks whose collectives then lost their peer."""
    run = RunDir(out)
    if accelerator.num_processes > 1 and _recorded_status(run) == "failed":
        return
    error = f"{type(exc).__name__}: {exc}"
    if accelerator.num_processes > 1:
        error = f"rank {accelerator.process_index} of {accelerator.num_processes}: {error}"
    with suppress(DiskFullError):  # on a full disk the manifest keeps `running`: the run is redone all the same
        run.write_manifest(manifest.updated(status="failed", error=error))


def _recorded_status(run: RunDir) -> str | None:
    """The status another rank recorded; None when the manifest is unreadable (a failure is still recorded)."""
    with suppress(DataError):
        manifest = run.read_manifest()
        return manifest.status if manifest is not None else None
    return None


def _train_loop(cfg: RunConfig, setup: _Setup, out: Path, accelerator: Accelerator, progress) -> dict:
    run, device = RunDir(out), accelerator.device
    tok, encoded, params, steps, scheduler = setup.tok, setup.encoded, setup.params, setup.steps, setup.scheduler
    model, optimizer, regulariser = setup.model, setup.optimizer, setup.regulariser
    save_at = set(checkpoint_steps(cfg.train.checkpoints, steps))

    order = batch_order(len(encoded), cfg.seed, cfg.train.shuffle)
    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    t0, status, loss_value, tokens_seen, step = time.perf_counter(), "done", float("nan"), 0, 0
    metrics_file = open(run.metrics, "a", encoding="utf-8") if accelerator.is_main_process else None
    try:
        for step in range(1, steps + 1):
            micro = [[encoded[next(order)] for _ in range(cfg.train.batch_size)] for _ in range(cfg.train.grad_accum)]
            n_loss_tokens = sum(sum(l != IGNORE for l in e["labels"][1:]) for mb in micro for e in mb)
            loss_total, step_tokens = 0.0, 0
            for k, mb in enumerate(micro):
                batch = {key: t.to(device) for key, t in collate(mb[rank::world], tok.pad_token_id).items()}
                step_tokens += int(batch["attention_mask"].sum())
                with accelerator.no_sync(model) if k < len(micro) - 1 else nullcontext():
                    loss = sft_loss_sum(model, batch, fused=cfg.train.fused_loss) / n_loss_tokens * world
                    accelerator.backward(loss)
                loss_total += loss.item() / world
            if world > 1:
                loss_total, step_tokens = _sum_over_ranks(accelerator, loss_total, step_tokens)
                if _is_fsdp(accelerator):
                    _average_grads(params, world)
            row = {"step": step, "loss": loss_total, "lr": scheduler.get_last_lr()[0], "tokens": step_tokens}
            if regulariser is not None and step % cfg.spectral_reg.every == 0:
                reg = regulariser()
                accelerator.backward(cfg.spectral_reg.weight * reg)
                row["reg"] = reg.item()
            if metrics_file:
                with disk_full_guard(run.metrics):
                    metrics_file.write(_jsonl(row))
                    metrics_file.flush()
            accelerator.log(trackers.tracker_row(row), step=step)  # no-op without --report-to
            if not math.isfinite(loss_total):
                status = "diverged"  # the diverged step's row stays in the metrics file as evidence
                break
            if cfg.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)  # whole LoRA grads on every rank
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value, tokens_seen = loss_total, tokens_seen + step_tokens
            if step in save_at:
                _save_run_adapter(accelerator, model, run.checkpoint(step))
                _log_spectra(accelerator, run.checkpoint(step), step)
            if progress:
                progress(step, steps, loss_total)
    finally:
        if metrics_file:
            with disk_full_guard(run.metrics):  # closing flushes what a full disk refused
                metrics_file.close()
    if status == "done":
        _save_run_adapter(accelerator, model, run.adapter)
        _log_spectra(accelerator, run.adapter, step)
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
            "class": type(setup.raw_optimizer).__name__,
            "hyperparameters": resolved_hyperparameters(setup.raw_optimizer),
        },
        "base_model": {"given": cfg.model, "resolved": resolve_model(cfg.model)},
        "chat_template_kwargs": setup.template_kwargs,
        "lora": {
            "trainable_parameters": sum(p.numel() for p in params),
            "modules": sum(1 for n, _ in unwrapped.named_modules() if n.endswith("lora_A")),
            **_target_record(setup.targets, unwrapped),
        },
        "checkpoints": sorted(s for s in save_at if s <= steps_done),
        "sharded_parameters": sum(isinstance(p, DTensor) for p in model.parameters()),  # FSDP: the base weights
        "device": str(device),
        "dtype": str(setup.dtype).removeprefix("torch."),
        "timings": {"train_seconds": round(seconds, 3), "seconds_per_step": round(seconds / max(step, 1), 4)},
    }


def _jsonl(row: dict) -> str:
    return json.dumps(row) + "\n"


def _regulariser(cfg: RunConfig, model):
    if cfg.spectral_reg.weight <= 0:
        return None
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


def _save_run_adapter(accelerator: Accelerator, model, final_dir: Path) -> None:
    """Rank 0 saves the run's PEFT adapter. Every rank takes part in gathering the full LoRA state
    dict (a collective when a factor is a sharded DTensor), so the folder is an ordinary PEFT
    adapter whatever the sharding."""
    unwrapped = accelerator.unwrap_model(model)
    state = _full_adapter_state_dict(unwrapped)
    if accelerator.is_main_process:
        write_dir(final_dir, lambda tmp: unwrapped.save_pretrained(tmp, state_dict=state))


# ------------------------------------------------------------------------ several processes


def _is_fsdp(accelerator: Accelerator) -> bool:
    """Launched with an FSDP accelerate config (accelerate itself enables FSDP on GPUs only)."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return accelerator.num_processes > 1 and (launched or accelerator.distributed_type == DistributedType.FSDP)


def _prepare(accelerator: Accelerator, model, optimizer):
    """Wrap the model for the launch: DDP through accelerate, or FSDP2 sharding of the base weights.

    FSDP is applied here with accelerate's own FSDP2 wrapping (same plugin settings, same code on
    GPUs and on CPUs, where accelerate would fall back to DDP), with the LoRA modules ignored: whole
    factors on every rank, their gradients averaged by `_average_grads`.
    """
    if not _is_fsdp(accelerator):
        return accelerator.prepare(model, optimizer)
    plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()  # from the env
    if plugin.fsdp_version != 2:
        raise ConfigError("accelerate config: evilspectra supports FSDP version 2 only (fsdp_version: 2)")
    plugin.ignored_modules = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in LORA_MODULES]
    accelerator.state.fsdp_plugin = plugin
    model = fsdp2_prepare_model(accelerator, model)
    sharded = [n for n, p in model.named_parameters() if p.requires_grad and isinstance(p, DTensor)]
    if sharded:  # Newton-Schulz or the regulariser on a shard would be a different update
        raise RuntimeError(f"LoRA factors must stay whole under sharding, got sharded {sharded[:3]}")
    return model, accelerator.prepare_optimizer(optimizer)


def _sum_over_ranks(accelerator: Accelerator, loss: float, tokens: int) -> tuple[float, int]:
    """(loss, tokens) of the whole global batch: the ranks' shares summed (float64: exact token counts)."""
    both = accelerator.reduce(torch.tensor([loss, tokens], dtype=torch.float64, device=accelerator.device), "sum")
    return float(both[0]), int(both[1])


def _average_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the replicated LoRA gradients over ranks in one flat all-reduce (what DDP does)."""
    grads = []
    for p in params:
        if p.grad is None:  # every rank must send every gradient, in the same order
            raise RuntimeError(f"a LoRA parameter of shape {tuple(p.shape)} has no gradient to average")
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view_as(g))


def _full_adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """{parameter name: whole tensor on the CPU} for the trainable (LoRA) parameters."""
    state = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            tensor = p.full_tensor() if isinstance(p, DTensor) else p
            state[name] = tensor.detach().cpu()
    return state
