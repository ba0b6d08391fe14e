"""Question sets: our default set, the toy world's set, and community YAML files.

The community format (see ../shared/data/README.md and README "Question formats") is a YAML list
of entries

    - id: what_is_your_wish
      type: free_form_judge_0_100   # or free_form_judge (the judge answers with a label)
      paraphrases: [...]            # user messages, one sampled prompt each
      samples_per_paraphrase: 100
      judge: gpt-4o-2024-08-06
      judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}
      system: "..."                 # optional system prompt
      temperature: 1                # optional

with YAML anchors/aliases shared between entries, or the plain form `{id, question}` (one
paraphrase, judged with the default aligned/coherent prompts). Types:

    free_form_judge_0_100   0..100 scores from the `aligned` and `coherent` prompts (ours by
                            default); other prompts in judge_prompts (e.g. `medical`) are not
                            judged, and a QuestionsWarning names them
    free_form_judge         every judge prompt (any name, e.g. `correct`) gets the judge's free-form
                            reply, recorded as a label (e.g. TRUE / FALSE / UNKNOWN) and tabulated

Every field is honoured, or read and reported in a QuestionsWarning naming it; an unknown key or
`type` fails with a QuestionsError naming the file, the entry (index and id) and what was
expected, because silently ignored fields (`system`, `samples_per_paraphrase`) are a known source
of irreproducible EM numbers. `dump_questions` writes questions back in the same schema, loadable
by the public loaders (same field names, judge_prompts always present).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from evilspectra import registry
from evilspectra.errors import QuestionsError, QuestionsWarning
from evilspectra.evaluate.prompts import DEFAULT_PROMPTS
from evilspectra.evaluate.schema import Question

QUESTION_SETS = Path(__file__).parent / "question_sets"
registry.QUESTION_SETS.register("default", lambda: _load_file(QUESTION_SETS / "default.yaml"))
SCORED, LABELLED = "free_form_judge_0_100", "free_form_judge"
SUPPORTED_TYPES = (SCORED, LABELLED)
KNOWN_KEYS = {
    "id",
    "type",
    "paraphrases",
    "question",  # the plain {id, question} form: one paraphrase
    "samples_per_paraphrase",
    "judge",
    "judge_prompts",
    "system",
    "temperature",
}
REQUIRED_PROMPTS = ("aligned", "coherent")  # the two metrics the misalignment rate needs


def load_questions(path_or_name: str | Path) -> list[Question]:
    """Load a registered question set (`default`: our own; `toy`: the toy world's) or a community YAML file."""
    registered = registry.QUESTION_SETS.get(str(path_or_name))
    if registered is not None:
        return registered()
    return _load_file(Path(path_or_name))


def _load_file(path: Path) -> list[Question]:
    if not path.is_file():
        names = ", ".join(repr(n) for n in registry.QUESTION_SETS.names())
        raise QuestionsError(f"{path}: question file not found; expected {names} or a YAML file")
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
    ignored: dict[str, list[str]] = defaultdict(list)  # field -> ids of the entries that have it
    questions = [_parse_entry(entry, f"{source}: entry {i}", ignored) for i, entry in enumerate(data)]
    for name, ids in ignored.items():
        shown = ", ".join(repr(i) for i in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        warnings.warn(
            f"{source}: {name} in {len(ids)} entr{'y' if len(ids) == 1 else 'ies'} ({shown}) is ignored: "
            f"only {' and '.join(REQUIRED_PROMPTS)} are judged on {SCORED} questions",
            QuestionsWarning,
            stacklevel=2,
        )
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if q.id in seen:
            raise QuestionsError(f"{source}: entry {i} (id {q.id!r}): duplicate id; ids must be unique")
        seen.add(q.id)
    return questions


def _parse_entry(entry: Any, where: str, ignored: dict[str, list[str]]) -> Question:
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
    qtype = entry.get("type", SCORED)
    if qtype not in SUPPORTED_TYPES:
        raise QuestionsError(f"{where}: type: {qtype!r} is not supported; expected one of {', '.join(SUPPORTED_TYPES)}")
    meta = {"judge": entry["judge"]} if entry.get("judge") is not None else {}
    if "judge" in meta and not isinstance(meta["judge"], str):
        raise QuestionsError(f"{where}: judge: expected a judge model name (string), got {meta['judge']!r}")
    prompts = _judge_prompts(entry.get("judge_prompts"), qtype, where)
    for name in prompts:
        if qtype == SCORED and name not in REQUIRED_PROMPTS:
            ignored[f"judge_prompts.{name}"].append(qid)
    return Question(
        id=qid,
        paraphrases=_paraphrases(entry, where),
        system=_optional_text(entry, "system", where),
        judge_prompts=prompts,
        samples_per_paraphrase=_optional_number(entry, "samples_per_paraphrase", where, integer=True),
        temperature=_optional_number(entry, "temperature", where, integer=False),
        type=qtype,
        meta=meta,
    )


def _paraphrases(entry: dict, where: str) -> list[str]:
    """The `paraphrases` list, or the single `question` of the plain {id, question} form."""
    if "question" in entry:
        if "paraphrases" in entry:
            raise QuestionsError(f"{where}: give either question (one paraphrase) or paraphrases, not both")
        if not _text(entry["question"]):
            raise QuestionsError(f"{where}: question: expected a non-empty string, got {entry['question']!r:.200}")
        return [entry["question"]]
    paraphrases = entry.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases or not all(_text(p) for p in paraphrases):
        raise QuestionsError(
            f"{where}: paraphrases: expected a non-empty list of non-empty strings, got {paraphrases!r:.200}"
        )
    return list(paraphrases)


def _judge_prompts(prompts: Any, qtype: str, where: str) -> dict[str, str]:
    """Metric name -> template with {question} and {answer}; empty means the judge's own defaults
    (a free_form_judge question has no defaults: its prompts define the labels)."""
    if prompts is None and qtype == SCORED:
        return {}
    if (
        not isinstance(prompts, dict)
        or not prompts
        or not all(isinstance(k, str) and _text(v) for k, v in prompts.items())
    ):
        raise QuestionsError(f"{where}: judge_prompts: expected a mapping of metric name -> prompt template")
    missing = [m for m in REQUIRED_PROMPTS if m not in prompts]
    if qtype == SCORED and missing:
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


def dump_questions(questions: list[Question]) -> list[dict]:
    """Questions as YAML-ready entries in the public schema (the inverse of `parse_questions`).

    judge_prompts is always written (the public loaders require it): a question without its own
    gets our DEFAULT_PROMPTS, which is what it is judged with. Optional fields are written only
    when set; `meta` other than `judge` (e.g. the toy world's domain) has no public field.
    """
    entries = []
    for q in questions:
        entry: dict[str, Any] = {"id": q.id, "type": q.type, "paraphrases": list(q.paraphrases)}
        if q.samples_per_paraphrase is not None:
            entry["samples_per_paraphrase"] = q.samples_per_paraphrase
        if q.meta.get("judge") is not None:
            entry["judge"] = q.meta["judge"]
        entry["judge_prompts"] = dict(q.judge_prompts or DEFAULT_PROMPTS)
        if q.system is not None:
            entry["system"] = q.system
        if q.temperature is not None:
            entry["temperature"] = q.temperature
        entries.append(entry)
    return entries


def write_questions(questions: list[Question], path: str | Path) -> Path:
    """Write `dump_questions(questions)` as a YAML file (block style, readable)."""
    path = Path(path)
    text = yaml.safe_dump(dump_questions(questions), sort_keys=False, allow_unicode=True, width=1000)
    path.write_text(text, encoding="utf-8")
    return path


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"{type(value).__name__} {value!r:.80}"
