"""The sweep file: a base RunConfig, grid axes, per-optimiser hyperparameters, variants, the evaluation
settings and resources; its expansion into the runs' configs, in a stable order.

Pure configuration: no run is started and nothing heavier than the config is imported, so the
sweep's plan and cost estimate (sweep --dry-run) load in a fraction of a second.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evilspectra.config import EvalSettings, RunConfig, read_yaml, set_path, validate_model
from evilspectra.errors import ConfigError
from evilspectra.evaluate.endpoint import redact_settings


class Variant(BaseModel):
    """Extra copies of the runs of some optimisers with config overrides, e.g. the regulariser on."""

    model_config = ConfigDict(extra="forbid")
    optimizers: list[str] | None = Field(None, description="optimiser names it applies to; None = all")
    where: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted key -> values: only points with one of these values (e.g. a lr)"
    )
    set: dict[str, Any]

    def applies(self, point: dict[str, Any]) -> bool:
        named = self.optimizers is None or point.get("optimizer.name") in self.optimizers
        return named and all(point.get(key) in values for key, values in self.where.items())


class Resources(BaseModel):
    """What one run needs; a Ray task holds these for the whole run (train, spectra, eval)."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1, gt=0, description="CPU threads (and Ray CPUs) of one run")
    num_gpus: float = Field(0, ge=0)
    num_processes: int = Field(1, ge=1, description="training processes (one per GPU) through accelerate launch")
    accelerate_config: str | None = Field(
        None, description="accelerate config of a multi-process run, e.g. configs/accelerate/fsdp.yaml; None: DDP"
    )
    hours_per_run: float | None = Field(None, gt=0, description="estimated wall hours of one run, for --dry-run")


class ModelSettings(BaseModel):
    """Settings for the runs of one model: its resources and its sampling (eval field overrides)."""

    model_config = ConfigDict(extra="forbid")
    resources: Resources | None = None
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalSettings fields, e.g. backend, device_map")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "sweep"
    base: dict[str, Any] = Field(default_factory=dict, description="RunConfig fields shared by all runs")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted config key -> values")
    optimizers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="optimiser name -> hyperparameters; list values are grid axes"
    )
    variants: list[Variant] = Field(default_factory=list)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    eval_base_model: bool = Field(True, description="also evaluate the base model once, as a reference")
    resources: Resources = Field(default_factory=Resources)
    models: dict[str, ModelSettings] = Field(default_factory=dict, description="model -> its resources and sampling")
    analysis: dict[str, float] = Field(
        default_factory=dict,
        description="statistics fixed before the data: matched_loss (nats), the training loss the claims compare at",
    )

    @model_validator(mode="after")
    def _no_empty_axis(self) -> SweepSpec:
        """An axis without values makes a sweep of no runs (an empty results table that looks finished)."""
        axes = {f"grid.{key}": values for key, values in self.grid.items()}
        for name, hparams in self.optimizers.items():
            axes |= {f"optimizers.{name}.{k}": v for k, v in hparams.items() if isinstance(v, list) and k != "betas"}
        empty = [axis for axis, values in axes.items() if not values]
        if empty:
            raise ValueError(f"{empty[0]}: an empty list of values makes no runs; give at least one value")
        return self

    def resources_for(self, model: str) -> Resources:
        settings = self.models.get(model)
        return settings.resources if settings and settings.resources else self.resources

    def eval_for(self, model: str) -> EvalSettings:
        """The sweep's eval settings with the model's overrides (models.MODEL.eval)."""
        overrides = self.models[model].eval if model in self.models else {}
        if not overrides:
            return self.eval
        tree = self.eval.model_dump(mode="json") | overrides
        return validate_model(EvalSettings, tree, source=f"sweep models.{model}.eval")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep YAML (or a preset name such as `toy-optimisers`)."""
    path = preset_path(str(path))
    tree = read_yaml(path)
    if not tree:  # an empty file would silently run one default run
        raise ConfigError(f"{path}: empty sweep file; expected a mapping with base, grid and/or optimizers")
    return validate_model(SweepSpec, tree, source=str(path))


# ------------------------------------------------------------------------------------ expansion


def _product(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _optimizer_points(optimizers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    if not optimizers:
        return [{}]
    points = []
    for name, hparams in optimizers.items():
        axes = {f"optimizer.{k}": v if isinstance(v, list) and k != "betas" else [v] for k, v in hparams.items()}
        points += [{"optimizer.name": name, **p} for p in _product(axes)]
    return points


def expand(spec: SweepSpec) -> list[RunConfig]:
    """All run configs of the sweep, in a stable order, without duplicates."""
    points = [{**g, **o} for o in _optimizer_points(spec.optimizers) for g in _product(spec.grid)]
    for variant in spec.variants:
        points += [{**p, **variant.set} for p in points if variant.applies(p)]
    configs, seen = [], set()
    for i, point in enumerate(points):
        tree = copy.deepcopy(spec.base)
        for key, value in point.items():
            set_path(tree, key, value)
        cfg = validate_model(RunConfig, tree, source=f"sweep run {i + 1} ({point})")
        if cfg.run_id() not in seen:
            seen.add(cfg.run_id())
            configs.append(cfg)
    return configs


def public_spec(spec: SweepSpec) -> dict:
    """The spec as the sweep directory records it: every judge URL without credentials."""
    return redact_settings(spec.model_dump(mode="json"))


PRESETS = Path(__file__).parent / "presets"


def preset_path(name_or_path: str) -> Path:
    """A sweep YAML path, or the name of a preset shipped with the package (e.g. toy-optimisers)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such sweep file or preset (presets: {names})")
