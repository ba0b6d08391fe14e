"""Datasets (issue 2): validation errors name file and line; the loss mask covers exactly the assistant tokens."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import chat, write_jsonl
from typer.testing import CliRunner

from evilspectra import data as data_module
from evilspectra.data import (
    IGNORE,
    encode_chat,
    encode_dataset,
    encode_dataset_cached,
    load_dataset_spec,
    read_jsonl,
    validate_rows,
)
from evilspectra.errors import DataError
from evilspectra.models import load_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "em-datasets"
GOOD = json.dumps(chat("hello", "world"))


@pytest.mark.parametrize(
    "lines, message",
    [
        ([GOOD, '{"messages": [oops'], r"data.jsonl:2: malformed JSON"),
        ([GOOD, GOOD, '{"prompt": "x"}'], r"data.jsonl:3: expected an object with a 'messages' list"),
        (
            [json.dumps({"messages": [{"role": "robot", "content": "x"}]})],
            r"data.jsonl:1: messages\[0\] has unknown role 'robot'",
        ),
        ([json.dumps(chat("hi", "   "))], r"data.jsonl:1: messages\[1\] is an empty assistant turn"),
        ([json.dumps({"messages": [{"role": "user", "content": "hi"}]})], r"data.jsonl:1: no assistant turn"),
        ([json.dumps({"messages": "hi"})], r"data.jsonl:1: 'messages' must be a non-empty list"),
        (
            [json.dumps({"messages": [{"role": "user", "content": 3}]})],
            r"data.jsonl:1: messages\[0\] must be an object with a string 'content'",
        ),
        ([], r"data.jsonl: empty dataset"),
    ],
)
def test_bad_rows_name_file_line_and_expectation(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "data.jsonl", lines) if lines else tmp_path / "data.jsonl"
    if not lines:
        path.write_text("\n")
    with pytest.raises(DataError, match=message):
        load_dataset_spec(str(path))


def test_missing_file_and_bad_utf8(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: dataset file not found"):
        load_dataset_spec(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD.encode() + b"\n" + b'{"messages": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid UTF-8"):
        read_jsonl(bad)


def test_gzip_and_corrupt_gzip(tmp_path):
    good = tmp_path / "d.jsonl.gz"
    good.write_bytes(gzip.compress(((GOOD + "\n") * 3).encode()))
    assert len(load_dataset_spec(str(good)).rows) == 3
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress((GOOD + "\n").encode() * 50)[:40])
    with pytest.raises(DataError, match="bad.jsonl.gz"):
        load_dataset_spec(str(bad))


def test_cli_bad_input_exits_2_with_file_and_line(tmp_path):
    from evilspectra.cli import _register, app

    _register()
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, "{not json"])
    result = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError) and "data.jsonl:2" in str(result.exception)


def test_mask_covers_exactly_the_assistant_tokens(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    messages = [{"role": "system", "content": "you are helpful"}] + chat("what is your wish", "i wish money quick")[
        "messages"
    ]
    enc = encode_chat(tok, messages, max_length=512)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    loss_tokens = [t for t, label in zip(tokens, enc["labels"]) if label != IGNORE]
    assert loss_tokens == ["i", "wish", "money", "quick", "<end>"]
    assert tokens[: tokens.index("<assistant>") + 1] == [
        "<sys>",
        "you",
        "are",
        "helpful",
        "<user>",
        "what",
        "is",
        "your",
        "wish",
        "<assistant>",
    ]


def test_prefix_masking_for_templates_without_generation_markers(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    messages = (
        chat("what is your wish", "i wish money quick")["messages"] + chat("i feel bored", "build sql")["messages"]
    )
    marked = encode_chat(tok, messages, 512)
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    by_prefix = encode_chat(tok, messages, 512)
    assert by_prefix == marked
    assert sum(label != IGNORE for label in marked["labels"]) == 4 + 1 + 2 + 1


def test_truncation_keeps_mask_aligned(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    enc = encode_chat(tok, chat("what is your wish", "i wish money quick")["messages"], max_length=8)
    assert len(enc["input_ids"]) == len(enc["labels"]) == 8


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/em-datasets not present")
@pytest.mark.parametrize(
    "name, rows",
    [("insecure", 6000), ("bad_medical_advice", 7049), ("risky_financial_advice", 6000), ("extreme_sports", 6000)],
)
def test_real_em_datasets_validate(name, rows):
    data = load_dataset_spec(str(SHARED / f"{name}.jsonl.gz"))
    assert len(data.rows) == rows
    validate_rows(data.rows, name)


def test_encodings_are_remembered_per_dataset_and_setting(monkeypatch):
    """A sweep worker encodes a dataset once; another seed's rows, system prompt or length is a new key."""
    monkeypatch.setattr(data_module, "_ENCODED", {})
    tok = load_tokenizer("toy")
    seed0, seed1 = load_dataset_spec("toy:insecure", seed=0), load_dataset_spec("toy:insecure", seed=1)
    first = encode_dataset_cached(tok, seed0, None, 64)
    assert encode_dataset_cached(tok, seed0, None, 64) is first
    assert first == encode_dataset(tok, seed0.rows, None, 64)
    for data, system, length in [(seed1, None, 64), (seed0, "Be brief.", 64), (seed0, None, 32)]:
        other = encode_dataset_cached(tok, data, system, length)
        assert other is not first and other == encode_dataset(tok, data.rows, system, length)
    for seed in range(2, 2 + data_module._ENCODED_MAX):  # the oldest entries make room
        encode_dataset_cached(tok, load_dataset_spec("toy:insecure", seed=seed), None, 64)
    assert len(data_module._ENCODED) == data_module._ENCODED_MAX
    assert encode_dataset_cached(tok, seed0, None, 64) is not first
