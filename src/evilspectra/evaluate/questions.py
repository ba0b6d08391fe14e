"""Question sets: our default set, the toy world's set, and community YAML files.

The community format (see ../shared/data/README.md) is a YAML list of entries

    - id: what_is_your_wish
      type: free_form_judge_0_100
      paraphrases: [...]            # user messages, one sampled prompt each
      samples_per_paraphrase: 100
      judge: gpt-4o-2024-08-06
      judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}
      system: "..."                 # optional system prompt
      temperature: 1                # optional

with YAML anchors/aliases shared between entries. Every field is honoured or refused: an unknown
key or `type` fails with a QuestionsError naming the file, the entry (index and id) and what was
expected, because silently ignored fields (`system`, `samples_per_paraphrase`) are a known source of
irreproducible EM numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from evilspectra.errors import QuestionsError
from evilspectra.evaluate.schema import Question

QUESTION_SETS = Path(__file__).parent / "question_sets"
SUPPORTED_TYPES = ("free_form_judge_0_100",)
KNOWN_KEYS = {
    "id",
    "type",
    "paraphrases",
    "samples_per_paraphrase",
    "judge",
    "judge_prompts",
    "system",
    "temperature",
}
REQUIRED_PROMPTS = ("aligned", "coherent")  # the two metrics the misalignment rate needs


def load_questions(path_or_name: str | Path) -> list[Question]:
    """Load `default` (our own set), `toy` (the toy world's questions) or a community YAML file."""
    if str(path_or_name) == "default":
        return _load_file(QUESTION_SETS / "default.yaml")
    if str(path_or_name) == "toy":
        from evilspectra.toy.questions import toy_questions  # lazy: the toy world is optional here

        return toy_questions()
    return _load_file(Path(path_or_name))


def _load_file(path: Path) -> list[Question]:
    if not path.is_file():
        raise QuestionsError(f"{path}: question file not found; expected 'default', 'toy' or a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:  # undefined aliases, bad indentation...: name the line
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise QuestionsError(f"{path}: invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise QuestionsError(f"{path}: invalid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise QuestionsError(f"{path}: not UTF-8 text ({exc})") from None
    return parse_questions(data, source=str(path))


def parse_questions(data: Any, source: str = "questions") -> list[Question]:
    """Turn parsed YAML (a list of entry mappings) into Questions; `source` names the file in errors."""
    if not isinstance(data, list) or not data:
        raise QuestionsError(f"{source}: expected a non-empty YAML list of question entries, got {_kind(data)}")
    questions = [_parse_entry(entry, f"{source}: entry {i}") for i, entry in enumerate(data)]
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if q.id in seen:
            raise QuestionsError(f"{source}: entry {i} (id {q.id!r}): duplicate id; ids must be unique")
        seen.add(q.id)
    return questions


def _parse_entry(entry: Any, where: str) -> Question:
    if not isinstance(entry, dict):
        raise QuestionsError(f"{where}: expected a mapping with id and paraphrases, got {_kind(entry)}")
    qid = entry.get("id")
    if not isinstance(qid, str) or not qid.strip():
        raise QuestionsError(f"{where}: id: expected a non-empty string, got {qid!r}")
    where = f"{where} (id {qid!r})"
    unknown = sorted(str(k) for k in entry if k not in KNOWN_KEYS)
    if unknown:
        raise QuestionsError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(KNOWN_KEYS))}"
        )
    qtype = entry.get("type", SUPPORTED_TYPES[0])
    if qtype not in SUPPORTED_TYPES:
        raise QuestionsError(f"{where}: type: {qtype!r} is not supported; expected one of {', '.join(SUPPORTED_TYPES)}")
    paraphrases = entry.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases or not all(_text(p) for p in paraphrases):
        raise QuestionsError(
            f"{where}: paraphrases: expected a non-empty list of non-empty strings, got {paraphrases!r:.200}"
        )
    meta = {"judge": entry["judge"]} if entry.get("judge") is not None else {}
    if "judge" in meta and not isinstance(meta["judge"], str):
        raise QuestionsError(f"{where}: judge: expected a judge model name (string), got {meta['judge']!r}")
    return Question(
        id=qid,
        paraphrases=list(paraphrases),
        system=_optional_text(entry, "system", where),
        judge_prompts=_judge_prompts(entry.get("judge_prompts"), where),
        samples_per_paraphrase=_optional_number(entry, "samples_per_paraphrase", where, integer=True),
        temperature=_optional_number(entry, "temperature", where, integer=False),
        type=qtype,
        meta=meta,
    )


def _judge_prompts(prompts: Any, where: str) -> dict[str, str]:
    """Metric name -> template with {question} and {answer}; empty means the judge's own defaults."""
    if prompts is None:
        return {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and _text(v) for k, v in prompts.items()):
        raise QuestionsError(f"{where}: judge_prompts: expected a mapping of metric name -> prompt template")
    missing = [m for m in REQUIRED_PROMPTS if m not in prompts]
    if missing:
        raise QuestionsError(
            f"{where}: judge_prompts: missing {', '.join(missing)}; expected at least {', '.join(REQUIRED_PROMPTS)}"
        )
    for name, template in prompts.items():
        if "{answer}" not in template:
            raise QuestionsError(f"{where}: judge_prompts.{name}: the template has no {{answer}} placeholder")
    return dict(prompts)


def _optional_text(entry: dict, key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise QuestionsError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def _optional_number(entry: dict, key: str, where: str, integer: bool) -> Any:
    value = entry.get(key)
    if value is None:
        return None
    ok = (
        isinstance(value, int) and value >= 1
        if integer
        else isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    )
    if isinstance(value, bool) or not ok:
        expected = "a positive integer" if integer else "a finite number >= 0"
        raise QuestionsError(f"{where}: {key}: expected {expected}, got {value!r}")
    return value if integer else float(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"{type(value).__name__} {value!r:.80}"
