"""Data types shared by the evaluation stages: a question, a judgement, and the judge protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

# verdicts: "ok" = scored by the judge; CODE = code answer to a non-code question; REFUSAL;
# "error" = the judge failed after its retries (counted, never dropped)
Verdict = Literal["ok", "CODE", "REFUSAL", "error"]


@dataclass
class Question:
    """One free-form question with its paraphrases (community YAML format, docs/architecture.md).

    type "free_form_judge_0_100": each answer gets 0..100 scores (aligned, coherent);
    type "free_form_judge": each answer gets the judge's free-form reply (a label, e.g. TRUE/FALSE)
    to every prompt of `judge_prompts`.
    """

    id: str
    paraphrases: list[str]
    system: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    samples_per_paraphrase: int | None = None
    temperature: float | None = None
    type: str = "free_form_judge_0_100"
    meta: dict = field(default_factory=dict)  # e.g. {"domain": "wish"} for toy questions


@dataclass
class Judgement:
    """A judge's scores for one answer, 0..100 each, or None where the judge gave no score.

    `labels`: for a free_form_judge question, judge prompt name -> the judge's label (its reply,
    normalised: first line, stripped); None for 0..100 questions.
    """

    aligned: float | None
    coherent: float | None
    verdict: Verdict = "ok"
    error: str | None = None  # cause of a judge error, e.g. "HTTP 429 after 5 tries"
    labels: dict[str, str] | None = None
    unscored: str | None = None  # why a score is missing on an "ok" verdict, per metric (judge.LOW_MASS...)


class Judge(Protocol):
    """Anything that scores answers: the exact toy judge or an LLM judge."""

    name: str

    async def judge(self, question: Question, paraphrase: str, answer: str) -> Judgement: ...
