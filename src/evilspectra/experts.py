"""LoRA on fused MoE expert parameters, one expert at a time.

transformers 5 stores an MoE layer's experts as 3-D parameters (Qwen3-MoE: `mlp.experts.gate_up_proj`
(E, 2 * moe_inter, hidden) and `mlp.experts.down_proj` (E, hidden, moe_inter)). PEFT's
`target_parameters` wraps each in a `ParamWrapper` holding ONE pair of nn.Linear factors for all E
experts (peft 0.21, lora.ParamWrapper.get_delta_factors):

    lora_A.weight (E * r, d_in)   expert e's A_e (r, d_in) = rows e*r .. (e+1)*r - 1
    lora_B.weight (d_out, E * r)  expert e's B_e (d_out, r) = columns e, E + e, 2E + e, ... (strided)

and expert e's update is scaling * B_e @ A_e with scaling = alpha / sqrt(r) (rsLoRA), r per expert.
So every expert is its own rank-r LoRA: spectra, metrics and the regulariser take one matrix pair per
expert (never B @ A, which mixes experts), and Muon orthogonalises each expert's factor on its own.

Several parameters of one module are nested wrappers: `...experts` wraps `...experts.base_layer`,
the innermost wrapping the parameter registered first (gate_up_proj, then down_proj).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft.tuners.lora.layer import ParamWrapper

# registration order of fused expert parameters in transformers' MoE experts modules (innermost first)
FUSED_ORDER = ("gate_up_proj", "gate_proj", "up_proj", "down_proj")
WRAPPED = ".base_layer"


def expert_factors(A: torch.Tensor, B: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert views of PEFT's fused factors: A (E*r, d_in) -> (E, r, d_in), B (d_out, E*r) -> (E, d_out, r)."""
    A_e = A.reshape(num_experts, -1, A.shape[-1])
    B_e = B.reshape(B.shape[0], -1, num_experts).permute(2, 0, 1)
    return A_e, B_e


def expert_views(t: torch.Tensor, factor: str, num_experts: int) -> list[torch.Tensor]:
    """The E per-expert views (sharing storage) of a fused factor `t` (a parameter, its grad or a
    same-shaped buffer): factor "A" gives (r, d_in) row blocks, "B" gives (d_out, r) strided columns."""
    if factor == "A":
        return list(t.view(num_experts, -1, t.shape[-1]).unbind(0))
    return list(t.view(t.shape[0], -1, num_experts).unbind(-1))


def expert_wrappers(model: torch.nn.Module) -> dict[str, ParamWrapper]:
    """{module name: PEFT ParamWrapper} of every LoRA on a fused expert parameter (num_experts > 1)."""
    from peft.tuners.lora.layer import ParamWrapper

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, ParamWrapper) and module.num_experts > 1
    }


def expert_layouts(model: torch.nn.Module) -> dict[torch.nn.Parameter, tuple[str, int]]:
    """{LoRA factor parameter: ("A" or "B", number of experts)} of every fused-expert LoRA of `model`."""
    layouts: dict[torch.nn.Parameter, tuple[str, int]] = {}
    for wrapper in expert_wrappers(model).values():
        for adapter in wrapper.lora_A:
            layouts[wrapper.lora_A[adapter].get_parameter("weight")] = ("A", wrapper.num_experts)
            layouts[wrapper.lora_B[adapter].get_parameter("weight")] = ("B", wrapper.num_experts)
    return layouts


def parameter_names(adapter_config: dict, module_keys: list[str]) -> dict[str, tuple[str, str]]:
    """{adapter module key: (module path, parameter name)} for the keys that wrap a targeted parameter.

    Reads a saved adapter without its base model: a module path with n nested wrappers holds the
    n `target_parameters` that match it, the deepest wrapper (most `.base_layer`s) the one registered
    first in the model (FUSED_ORDER; others in the config's order).
    """
    targets = adapter_config.get("target_parameters") or []
    by_path: dict[str, list[str]] = {}
    for key in module_keys:
        by_path.setdefault(key.replace(WRAPPED, ""), []).append(key)
    names = {}
    for path, keys in by_path.items():
        params = [t.rsplit(".", 1)[-1] for t in targets if f"{path}.{t.rsplit('.', 1)[-1]}".endswith(f".{t}")]
        params.sort(key=lambda p: FUSED_ORDER.index(p) if p in FUSED_ORDER else len(FUSED_ORDER))
        if not params or len(params) != len(keys):
            continue
        deepest_first = sorted(keys, key=lambda k: -k.count(WRAPPED))
        names.update({key: (path, param) for key, param in zip(deepest_first, params)})
    return names
