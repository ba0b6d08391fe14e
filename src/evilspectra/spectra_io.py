"""Reading a PEFT adapter directory into its LoRA factors, checked against its config (no base model).

Module names are PEFT's (without `base_model.model.`); a LoRA on a fused MoE expert parameter
(evilspectra.experts) is one entry whose factors hold E rank-r pairs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from evilspectra.artefacts.paths import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterDir
from evilspectra.errors import AdapterError
from evilspectra.experts import parameter_names

WEIGHTS, CONFIG = ADAPTER_WEIGHTS, ADAPTER_CONFIG
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


def _read_config(adapter_dir: Path) -> dict:
    cfg = AdapterDir(adapter_dir).read_config()
    if "r" not in cfg:
        raise AdapterError(f"{adapter_dir / CONFIG}: expected a LoRA config with a rank `r`")
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


def _module_scaling(cfg: dict[str, Any], module: str) -> tuple[int, float]:
    """(r, scaling) of one module as PEFT computes them: rank/alpha patterns, then alpha/r or rsLoRA."""
    rank_pattern: dict[str, int] = cfg.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = cfg.get("alpha_pattern") or {}
    from peft.utils.other import get_pattern_key  # PEFT's own pattern matching (lazy: peft is slow to import)

    r = rank_pattern.get(get_pattern_key(list(rank_pattern), module), cfg["r"])
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), cfg.get("lora_alpha", 8))
    return r, alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _pattern_key(module: str, experts: dict[str, tuple[str, str]]) -> str:
    """The name PEFT matches rank/alpha patterns against: module.parameter for a wrapped parameter."""
    return ".".join(experts[module]) if module in experts else module


def wrapped_name(path: str, param: str, n: int) -> str:
    """The name of a wrapped parameter's LoRA: its module for fused experts (n > 1), else the
    module.parameter (without `.weight`, e.g. the MoE router's `mlp.gate`)."""
    return path if n > 1 else f"{path}.{param}".removesuffix(".weight")


def module_layer(module: str) -> int | None:
    m = _LAYER.search(f".{module}.")
    return int(m.group(1)) if m else None


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(the adapter config, {module: {"A": lora_A, "B": lora_B}}) of a PEFT adapter directory.

    Raises AdapterError naming the file when either is missing or corrupt, or when a module's
    factor shapes do not match the rank the config gives it.
    """
    cfg, factors, _, _ = read_checked(Path(adapter_dir))
    return cfg, factors


def read_checked(adapter_dir: Path) -> tuple[dict, dict, dict[str, tuple[str, str]], dict[str, tuple[int, float]]]:
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
