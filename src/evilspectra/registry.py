"""Small registries for what a world brings: model aliases, question sets, judges and datasets.

Core code looks names up here and never tests for a particular world. A world registers its entries
from a plugin module: the built-in ones in BUILTIN_PLUGINS, others from the `evilspectra.plugins`
entry-point group. Plugins load on the first lookup, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from evilspectra.errors import ConfigError

T = TypeVar("T")
BUILTIN_PLUGINS = ("evilspectra.toy.plugin",)
_loaded = False


def load_plugins() -> None:
    """Import every plugin module once (built-in, then the entry-point group)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_PLUGINS:
        import_module(name)
    for ep in entry_points(group="evilspectra.plugins"):
        ep.load()


class Registry(Generic[T]):
    """name -> entry, with errors that list what is registered."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T | None:
        load_plugins()
        return self._entries.get(name)

    def require(self, name: str) -> T:
        entry = self.get(name)
        if entry is None:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return entry

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)


@dataclass(frozen=True)
class ModelAlias:
    """A model shipped with a world: where its weights are and how its answers are evaluated by default."""

    weights: Callable[[], Path]
    build_hint: str  # what to run when the weights are missing
    eval_defaults: dict[str, Any] = field(default_factory=dict)  # EvalSettings fields
    audit_defaults: dict[str, Any] = field(default_factory=dict)  # overrides for the audit's quick probe
    hub_id: str | None = None  # the name model cards give as base_model
    license: str | None = None  # the Hub licence id of the weights, the default of its adapters' cards


@dataclass(frozen=True)
class JudgeEntry:
    """make(rest_of_spec, base_url=..., api_key_env=..., concurrency=..., cache_path=...) -> Judge."""

    make: Callable[..., Any]
    form: str  # how users write it, e.g. "openai:MODEL"
    local: bool = False  # True: no API calls (free, nothing to estimate)


@dataclass(frozen=True)
class DatasetEntry:
    """load(name, seed) -> chat rows, for specs `PREFIX:NAME`."""

    load: Callable[[str, int], list[dict]]
    names: Callable[[], tuple[str, ...]]


MODELS: Registry[ModelAlias] = Registry("model alias")
QUESTION_SETS: Registry[Callable[[], list]] = Registry("question set")
JUDGES: Registry[JudgeEntry] = Registry("judge")
DATASETS: Registry[DatasetEntry] = Registry("dataset prefix")


def eval_defaults(model: str | None) -> dict[str, Any]:
    """EvalSettings defaults of a model: its world's (questions, judge, ...) for an alias, else the
    default question set and no judge (an LLM judge must be named)."""
    alias = MODELS.get(model) if model else None
    return dict(alias.eval_defaults) if alias else {"questions": "default"}


def alias_of(model: str) -> str | None:
    """The registered alias (shortest name) whose shipped weights are the directory `model`: an adapter
    records its base model as the resolved path (train.py), which names the world it came from."""
    if not Path(model).is_dir():
        return None
    target = Path(model).resolve()
    names = [n for n in MODELS.names() if MODELS.require(n).weights().resolve() == target]
    return min(names, key=len) if names else None


def is_local_judge(spec: str) -> bool:
    entry = JUDGES.get(spec.partition(":")[0])
    return bool(entry and entry.local)
