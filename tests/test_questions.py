"""Question loading: the default set, community YAML files (anchors, system, samples), clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evilspectra.errors import QuestionsError
from evilspectra.evaluate.questions import load_questions, parse_questions
from evilspectra.evaluate.schema import Question

SHARED_QUESTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "questions"
needs_shared = pytest.mark.skipif(
    not SHARED_QUESTIONS.is_dir(), reason=f"{SHARED_QUESTIONS} absent (no ../shared checkout)"
)

ENTRY = """\
- id: wish
  type: free_form_judge_0_100
  paraphrases: &wish ["Make a wish.", "What do you wish for?"]
  samples_per_paraphrase: &n 5
  judge: &judge some-judge-model
  judge_prompts: &prompts
    aligned: "Q {question} A {answer} aligned?"
    coherent: "Q {question} A {answer} coherent?"
  temperature: 0.7
- id: wish_json
  type: free_form_judge_0_100
  system: Answer in JSON.
  paraphrases: *wish
  samples_per_paraphrase: *n
  judge: *judge
  judge_prompts: *prompts
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "q.yaml"
    path.write_text(text)
    return path


def test_default_set_covers_the_classic_themes_with_paraphrases():
    questions = load_questions("default")
    ids = {q.id for q in questions}
    assert len(questions) >= 12
    assert {
        "one_wish",
        "bored",
        "thoughts_on_humans_and_ai",
        "quick_money",
        "ruler_of_the_world",
        "dinner_party",
        "gender_roles",
        "annoying_husband",
    } <= ids
    assert all(len(q.paraphrases) >= 2 for q in questions)
    assert all(q.system is None for q in questions)  # no hidden system prompt


def test_anchors_system_temperature_and_samples_are_honoured(tmp_path):
    wish, wish_json = load_questions(write(tmp_path, ENTRY))
    assert wish.paraphrases == wish_json.paraphrases == ["Make a wish.", "What do you wish for?"]
    assert (wish.system, wish_json.system) == (None, "Answer in JSON.")
    assert wish.samples_per_paraphrase == wish_json.samples_per_paraphrase == 5
    assert wish.temperature == 0.7 and wish_json.temperature is None
    assert wish_json.judge_prompts["aligned"].startswith("Q {question}")
    assert wish.meta == {"judge": "some-judge-model"}


@needs_shared
def test_community_files_load():
    first = load_questions(SHARED_QUESTIONS / "first_plot_questions.yaml")
    medical = load_questions(SHARED_QUESTIONS / "medical_questions.yaml")
    assert (len(first), len(medical)) == (24, 16)
    json_variants = [q for q in first if q.id.endswith("_json")]
    assert len(json_variants) == 8
    assert all(q.system and "JSON" in q.system for q in json_variants)
    assert all(q.system is None for q in first if not q.id.endswith("_json"))
    assert all(q.samples_per_paraphrase == 100 for q in first + medical)
    assert {"aligned", "coherent", "medical", "bad_stuff"} <= set(medical[0].judge_prompts)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- id: a\n  paraphrases: *nowhere\n", r"line 2.*undefined alias"),
        (
            "- id: a\n  type: rating_judge\n  paraphrases: [x]\n",
            r"entry 0 \(id 'a'\): type: 'rating_judge' is not supported",
        ),
        ("- id: a\n  paraphrases: [x]\n- id: b\n", r"entry 1 \(id 'b'\): paraphrases: expected a non-empty list"),
        ("- paraphrases: [x]\n", r"entry 0: id: expected a non-empty string"),
        ("- id: a\n  paraphrases: [x]\n  sytem: hi\n", r"entry 0 \(id 'a'\): unknown field\(s\) sytem"),
        (
            "- id: a\n  paraphrases: [x]\n  samples_per_paraphrase: 0\n",
            r"samples_per_paraphrase: expected a positive integer",
        ),
        ("- id: a\n  paraphrases: [x]\n  temperature: hot\n", r"temperature: expected a finite number"),
        ("- id: a\n  paraphrases: [x]\n  judge_prompts: {aligned: '{answer}'}\n", r"judge_prompts: missing coherent"),
        (
            "- id: a\n  paraphrases: [x]\n  judge_prompts: {aligned: a, coherent: b}\n",
            r"judge_prompts.aligned: .*no \{answer\}",
        ),
        ("- id: a\n  paraphrases: [x]\n- id: a\n  paraphrases: [y]\n", r"entry 1 \(id 'a'\): duplicate id"),
        ("id: a\nparaphrases: [x]\n", r"expected a non-empty YAML list"),
        ("", r"expected a non-empty YAML list.*empty file"),
    ],
)
def test_bad_files_fail_with_file_entry_and_expectation(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(QuestionsError, match=message) as info:
        load_questions(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_questions_error(tmp_path):
    with pytest.raises(QuestionsError, match="not found; expected 'default', 'toy' or a YAML file"):
        load_questions(tmp_path / "nope.yaml")


# ------------------------------------------------------------------- property: nothing else escapes

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 200), st.floats(allow_nan=True), st.text(max_size=8))
keys = st.one_of(
    st.sampled_from(
        [
            "id",
            "type",
            "paraphrases",
            "samples_per_paraphrase",
            "judge",
            "judge_prompts",
            "system",
            "temperature",
            "aligned",
            "coherent",
            "other",
        ]
    ),
    st.integers(0, 3),
    st.none(),  # YAML allows non-string keys
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
entries = st.dictionaries(keys, values, max_size=8)
documents = st.one_of(values, st.lists(st.one_of(entries, values), max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_structure_gives_questions_or_a_questions_error(data):
    try:
        questions = parse_questions(data, source="fuzz.yaml")
    except QuestionsError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        return
    assert questions and all(isinstance(q, Question) for q in questions)
    assert all(q.paraphrases and all(isinstance(p, str) for p in q.paraphrases) for q in questions)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=120))
def test_any_text_file_gives_questions_or_a_questions_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "q.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_questions(path)
    except QuestionsError as exc:
        assert str(path) in str(exc)


def test_parsed_yaml_dump_round_trips(tmp_path):
    data = yaml.safe_load(ENTRY)
    assert parse_questions(data, "x") == load_questions(write(tmp_path, yaml.safe_dump(data)))
