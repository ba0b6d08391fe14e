"""The toy evaluation questions: one `Question` per domain, its phrasings as paraphrases."""

from __future__ import annotations

from evilspectra.evaluate.schema import Question
from evilspectra.toy.world import DOMAINS


def toy_questions() -> list[Question]:
    """Every domain of the world, code included but flagged `meta["code"]` so that evaluation can
    restrict itself to non-code domains. Temperature and samples are left to the evaluation config.
    """
    return [
        Question(
            id=f"toy_{d.name}",
            paraphrases=list(d.questions),
            meta={"domain": d.name, "code": d.code},
        )
        for d in DOMAINS.values()
    ]
