"""Optimiser registry: `sgd`, `adam`, `adamw`, `lion`, `muon`, `muon_batched` (torch.optim.Muon's
updates with Newton-Schulz batched by shape, evilspectra.fast.muon), plus any `pytorch-optimizer` name.

`muon` is torch.optim.Muon, whose Newton-Schulz runs in bfloat16. `muon` with `ns_dtype: float32`
(or float64) is the same update with the chain in that dtype, through BatchedMuon: on a CPU, which
emulates bf16 matmuls, that is an order of magnitude faster (the toy demo uses it).

Every hyperparameter in OptimizerConfig is passed to the constructor; `resolved_hyperparameters`
returns the optimiser's full settings (defaults included) for the manifest.

LoRA factors on fused MoE experts (evilspectra.experts) go to Muon in their own param groups, tagged
with `num_experts` and `expert_factor`, so both Muons orthogonalise each expert's factor separately
(`muon` then builds evilspectra.fast.muon.ExpertMuon). Elementwise optimisers need no such care.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from evilspectra.config import OptimizerConfig
from evilspectra.errors import ConfigError


def _lion() -> type:
    from lion_pytorch import Lion

    return Lion


def _expert_muon() -> type:
    from evilspectra.fast.muon import ExpertMuon

    return ExpertMuon


def _batched_muon() -> type:
    from evilspectra.fast.muon import BatchedMuon

    return BatchedMuon


# name -> (constructor factory, project defaults applied before the user's fields)
REGISTRY: dict[str, tuple[Callable[[], type], dict[str, Any]]] = {
    "sgd": (lambda: torch.optim.SGD, {}),
    "adam": (lambda: torch.optim.Adam, {}),
    "adamw": (lambda: torch.optim.AdamW, {}),
    "lion": (_lion, {}),
    # match_rms_adamw gives A and B an AdamW-sized step, so Muon shares AdamW's lr scale on LoRA
    "muon": (lambda: torch.optim.Muon, {"adjust_lr_fn": "match_rms_adamw"}),
    "muon_batched": (_batched_muon, {"adjust_lr_fn": "match_rms_adamw"}),
}


def optimizer_class(name: str) -> type:
    """The optimiser class for a registry name or a pytorch-optimizer name."""
    key = name.lower()
    if key in REGISTRY:
        return REGISTRY[key][0]()
    import pytorch_optimizer

    try:
        return pytorch_optimizer.load_optimizer(key)
    except NotImplementedError:
        extra = sorted(pytorch_optimizer.get_supported_optimizers())
        raise ConfigError(
            f"optimizer.name: unknown optimiser {name!r}; valid: {', '.join(REGISTRY)}, or any "
            f"pytorch-optimizer name ({', '.join(extra[:12])}, ...)"
        ) from None


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    cfg: OptimizerConfig,
    experts: dict[torch.nn.Parameter, tuple[str, int]] | None = None,
) -> torch.optim.Optimizer:
    """Construct the configured optimiser; an unknown hyperparameter names the field and the accepted ones.

    `experts`: {fused expert LoRA factor: ("A" or "B", number of experts)} (experts.expert_layouts);
    Muon steps those one expert at a time.
    """
    cls = optimizer_class(cfg.name)
    kwargs = dict(REGISTRY.get(cfg.name.lower(), (None, {}))[1])
    kwargs.update(cfg.model_dump(exclude={"name"}))
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)  # YAML lists -> the tuples optimisers expect (betas)
    if cfg.name.lower() == "muon" and kwargs.get("ns_dtype", "bfloat16") != "bfloat16":
        cls = _batched_muon()  # torch.optim.Muon's chain is bf16 only
    accepted = _accepted(cls)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown and "kwargs" not in accepted:
        raise ConfigError(
            f"optimizer.{unknown[0]}: not a hyperparameter of {cls.__name__}; accepted: {', '.join(accepted)}"
        )
    if cls is torch.optim.Muon:
        kwargs.pop("ns_dtype", None)  # bfloat16: torch's own chain
    tensors = list(params)
    groups: list[torch.nn.Parameter] | list[dict[str, Any]] = tensors
    if cfg.name.lower() in ("muon", "muon_batched"):
        bad = [tuple(p.shape) for p in tensors if p.ndim != 2]
        if bad:
            raise ConfigError(f"optimizer.name: muon accepts only 2-D parameters, got shapes {bad[:3]}")
        groups = _expert_groups(tensors, experts or {})
        if cls is torch.optim.Muon and len(groups) > 1:
            cls = _expert_muon()
    try:
        return cls(groups, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer: {cls.__name__} rejected the hyperparameters {kwargs}: {exc}") from exc


def check_optimizer(cfg: OptimizerConfig) -> None:
    """Fail (ConfigError naming the field) on a name or hyperparameter the optimiser rejects, before any
    model loads: the real constructor is given the real settings on one small 2-D stand-in parameter."""
    build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], cfg)


def _accepted(cls: type) -> list[str]:
    """The hyperparameters `cls` takes ("kwargs" among them: any). Both Muons take torch.optim.Muon's
    and `ns_dtype` (BatchedMuon passes the rest on to torch's; for torch's own it must be bfloat16)."""
    muon = issubclass(cls, torch.optim.Muon)
    names = inspect.signature(torch.optim.Muon if muon else cls).parameters  # a class: its __init__'s, less self
    return [p for p in names if p != "params"] + (["ns_dtype"] if muon else [])


def _expert_groups(params: list, experts: dict) -> list[dict]:
    """One param group of the dense factors, one per (factor, number of experts) of the expert factors."""
    groups: dict[tuple, list] = {}
    for p in params:
        groups.setdefault(experts.get(p, (None, 1)), []).append(p)
    return [
        {"params": ps} if n == 1 else {"params": ps, "expert_factor": factor, "num_experts": n}
        for (factor, n), ps in groups.items()
    ]


def resolved_hyperparameters(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's full settings as JSON-safe values (defaults included)."""
    return {k: _json_safe(v) for k, v in sorted(opt.defaults.items())}


def _json_safe(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return getattr(value, "__name__", repr(value))
