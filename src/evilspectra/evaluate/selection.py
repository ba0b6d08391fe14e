"""Which questions an evaluation asks, and how many answers it samples at which temperature: the
plan of an evaluation, without a model (the sweep's cost estimate reads it without importing torch)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from evilspectra.config import DEFAULT_SAMPLES, EvalSettings
from evilspectra.errors import ConfigError
from evilspectra.evaluate.schema import Question

QuestionsFilter = Callable[[Question], bool] | Collection[str] | None


def select_questions(questions: list[Question], questions_filter: QuestionsFilter = None) -> list[Question]:
    """Keep the questions the filter accepts: a predicate, or a collection of question ids.
    Without a filter, questions flagged meta["code"] (the toy world's code domain) are skipped:
    EM is measured on domains unrelated to the fine-tuning task."""
    if questions_filter is None:
        return [q for q in questions if not q.meta.get("code")]
    if callable(questions_filter):
        return [q for q in questions if questions_filter(q)]
    wanted = set(questions_filter)
    unknown = wanted - {q.id for q in questions}
    if unknown:
        raise ConfigError(f"eval: unknown question id(s) {', '.join(sorted(unknown))}")
    return [q for q in questions if q.id in wanted]


def temperature_for(question: Question, settings: EvalSettings) -> float:
    """settings.temperature when set (explicit overrides win), else the question file's, else 1."""
    if settings.temperature is not None:
        return settings.temperature
    return question.temperature if question.temperature is not None else 1.0


def samples_for(question: Question, settings: EvalSettings) -> int:
    """Samples per paraphrase: settings.samples when set, else the file's `samples_per_paraphrase`,
    else DEFAULT_SAMPLES."""
    if settings.samples is not None:
        return settings.samples
    return question.samples_per_paraphrase or DEFAULT_SAMPLES
