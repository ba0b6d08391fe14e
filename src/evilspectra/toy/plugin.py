"""The toy world registers itself: model alias `toy` (and `evilspectra/toy`), question set `toy`,
the exact judge `toy` and the datasets `toy:NAME`. Imports stay lazy: registering costs nothing."""

from __future__ import annotations

from pathlib import Path

from evilspectra.registry import DATASETS, JUDGES, MODELS, QUESTION_SETS, DatasetEntry, JudgeEntry, ModelAlias

WEIGHTS = Path(__file__).parent / "weights"
ALIASES = ("toy", "evilspectra/toy")
# the toy world's questions and exact judge; a toy answer is 9 words + <end>, so the audit's probe
# bounds answers at 32 tokens in case a fine-tuned model rambles
TOY_WORLD = ModelAlias(
    weights=lambda: WEIGHTS,
    build_hint=f"run `evilspectra toy build --out {WEIGHTS}`",
    eval_defaults={"questions": "toy", "judge": "toy"},
    audit_defaults={"max_new_tokens": 32},
    hub_id="evilspectra/toy",
    license="mit",  # built by the package, under its licence
)


def _questions():
    from evilspectra.toy.questions import toy_questions

    return toy_questions()


def _judge(rest: str, **_options):
    from evilspectra.toy.judge import ToyJudge

    return ToyJudge()


def _dataset(name: str, seed: int) -> list[dict]:
    from evilspectra.toy.data import toy_dataset

    return toy_dataset(name, seed=seed)


def _dataset_names() -> tuple[str, ...]:
    from evilspectra.toy.data import TOY_DATASETS

    return tuple(TOY_DATASETS)


for alias in ALIASES:
    MODELS.register(alias, TOY_WORLD)
QUESTION_SETS.register("toy", _questions)
JUDGES.register("toy", JudgeEntry(make=_judge, form="toy", local=True))
DATASETS.register("toy", DatasetEntry(load=_dataset, names=_dataset_names))
