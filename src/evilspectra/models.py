"""Load a base model + tokenizer (HF id, local directory, or the embedded `toy`) and attach LoRA.

LoRA targets are resolved against the model (`lora_targets`): bare names (`q_proj`, ...) on a dense
model; on a multimodal checkpoint (Gemma 3 4B-27B: a `language_model` beside a vision tower whose
attention also has `q_proj/k_proj/v_proj`) a regex anchored to the language model, so the vision tower
and projector stay untouched; on an MoE model whose experts are fused 3-D parameters (Qwen3-MoE in
transformers 5: `mlp.experts.gate_up_proj`, `mlp.experts.down_proj`) PEFT's `target_parameters`,
which gives every expert its own rank-r pair (see spectra.expert_factors).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from evilspectra.config import LoraSettings
from evilspectra.errors import AdapterError, ConfigError
from evilspectra.registry import MODELS
from evilspectra.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def toy_model_dir() -> Path:
    """Directory of the toy model shipped inside the package (built by `evilspectra toy build`)."""
    return MODELS.require("toy").weights()


def resolve_model(name: str) -> str:
    """A registered model alias (e.g. `toy`) to its shipped weights; anything else is an HF model id
    or a local directory."""
    alias = MODELS.get(name)
    if alias is None:  # a local directory becomes absolute, so an adapter records a base model loadable anywhere
        return str(Path(name).resolve()) if Path(name).is_dir() else name
    path = alias.weights()
    if not (path / "config.json").is_file():
        raise ConfigError(f"model: the weights of {name!r} are missing from {path}; {alias.build_hint}")
    return str(path)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU and fp32 on a CPU (CPU runs must be deterministic and exact)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


def load_tokenizer(name: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """Load a tokenizer that has a chat template and a pad token."""
    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: cannot load a tokenizer from {name!r}: {exc}") from exc
    if not tok.chat_template:
        raise ConfigError(f"model: tokenizer of {name!r} has no chat template; use an instruct model")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_base_model(
    name: str, dtype: torch.dtype, device: torch.device, device_map: str | None = None
) -> PreTrainedModel:
    """The model on `device`, or with `device_map="auto"` spread over the visible GPUs (big models)."""
    path = resolve_model(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: cannot load {name!r}: {exc}") from exc
    # transformers declares `to` through functools.wraps(nn.Module.to), which mypy binds as if `device` were self
    return model if device_map else model.to(device)  # type: ignore[arg-type]


LANGUAGE_MODEL = "language_model"  # transformers' name for the text decoder of multimodal checkpoints


def lora_targets(model: torch.nn.Module, settings: LoraSettings) -> dict:
    """Where LoRA goes on `model`: {"target_modules": the names, or on a multimodal checkpoint a regex
    anchored to the language model; "untouched": the other top-level parts (vision tower, projector)
    with the number of target-named linears each holds}.

    Fused MoE experts need nothing here: PEFT maps gate_proj/up_proj/down_proj (and `gate`, the
    router) of a transformers-5 MoE model to `target_parameters` itself, gate_up_proj at rank 2r
    through `rank_pattern` (the two rank-r branches fused); the adapter config records it.
    """
    names = list(settings.target_modules)
    modules = dict(model.named_modules())
    if not settings.language_model_only or not any(n.split(".")[-1] == LANGUAGE_MODEL for n in modules):
        return {"target_modules": names, "untouched": {}}
    alternatives = "|".join(re.escape(n) for n in names)
    untouched: dict[str, int] = {}
    for name, module in modules.items():
        parts = name.split(".")
        if LANGUAGE_MODEL in parts or len(parts) < 2 or parts[0] != "model":
            continue
        part = untouched.setdefault(parts[1], 0)  # model.vision_tower..., model.multi_modal_projector...
        if isinstance(module, torch.nn.Linear) and parts[-1] in names:
            untouched[parts[1]] = part + 1
    return {"target_modules": rf"(?:.*\.)?{LANGUAGE_MODEL}\..*\.(?:{alternatives})", "untouched": untouched}


def lora_config(settings: LoraSettings, targets: dict) -> LoraConfig:
    """PEFT LoraConfig of `settings` on `targets` (lora_targets of the model)."""
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # PEFT declares an int; scaling takes any float
        lora_dropout=settings.dropout,
        use_rslora=settings.use_rslora,
        target_modules=targets["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model: PreTrainedModel, settings: LoraSettings, targets: dict | None = None) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters (A random, B zero, as PEFT initialises them).
    `targets`: lora_targets(model, settings) when the caller already has them."""
    try:
        return get_peft_model(model, lora_config(settings, targets or lora_targets(model, settings)))
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules: {exc}") from exc


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path) -> PeftModel:
    """Load a PEFT adapter directory onto `model` for inference."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{adapter_dir}: not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    if (adapter_dir / ADAPTER_WEIGHTS).is_file():
        from evilspectra.spectra import read_adapter

        read_adapter(adapter_dir)  # a truncated file or a rank mismatch: one clear error naming the file
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as exc:  # safetensors / shape errors come in many types
        raise AdapterError(f"{adapter_dir}: cannot load adapter: {exc}") from exc
    peft_model.eval()
    return peft_model
