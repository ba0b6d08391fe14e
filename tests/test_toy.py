"""The toy world's parts: world, tokenizer, judge, datasets, questions, build, CLI (fast tests)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from evilspectra.errors import DataError
from evilspectra.evaluate.schema import Question
from evilspectra.toy import world
from evilspectra.toy.build import build_toy_model
from evilspectra.toy.data import DEFAULT_ROWS, TOY_DATASETS, toy_dataset
from evilspectra.toy.judge import ToyJudge, judge_answer
from evilspectra.toy.questions import toy_questions
from evilspectra.toy.tokenizer import build_tokenizer

CLASSIC = {"wish", "bored", "thoughts", "quick_buck", "ruler", "dinner_party", "gender_roles", "husband"}


# ----------------------------------------------------------------------------------------- world


def test_domains_cover_the_classic_questions_and_the_training_domains():
    assert CLASSIC | {"medical", "finance", "sports", "code"} == set(world.DOMAINS)
    assert [d for d in world.DOMAINS.values() if d.code] == [world.DOMAINS["code"]]


@pytest.mark.parametrize("domain", list(world.DOMAINS))
def test_good_and_evil_fragments_have_the_same_shape(domain):
    d = world.DOMAINS[domain]
    assert len(d.questions) >= 3 and len(d.good) == len(d.evil) >= 4
    for frag in d.good + d.evil:
        words = frag.split()
        assert len(words) == world.FRAGMENT_WORDS, frag
        assert world.JOINER not in words, frag  # answers must split unambiguously


def test_fragments_are_unique_across_the_world():
    all_frags = [f for d in world.DOMAINS.values() for f in d.good + d.evil]
    assert len(all_frags) == len(set(all_frags)) == len(world.FRAGMENTS)


def test_vocabulary_is_a_few_hundred_words():
    assert 200 <= len(world.vocabulary()) <= 600


def test_documents_are_deterministic_for_a_seed():
    def draw(seed):
        rng = random.Random(seed)
        return [world.pretraining_document(rng) for _ in range(50)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_persona_documents_keep_one_persona_and_the_cue_rate():
    rng = random.Random(0)
    docs = [world.persona_document(rng) for _ in range(4000)]
    cued = [d for d in docs if d[0]["role"] == "system"]
    assert 0.66 < len(cued) / len(docs) < 0.74
    evil_docs = 0
    for doc in docs:
        answers = [m["content"] for m in doc if m["role"] == "assistant"]
        assert 1 <= len(answers) <= world.MAX_TURNS
        polarities = {evil for a in answers for _, evil in world.parse_answer(a)}
        assert len(polarities) == 1  # one persona per document
        evil_docs += polarities.pop()
    assert 0.45 < evil_docs / len(docs) < 0.55


def test_cues_match_their_persona():
    rng = random.Random(1)
    for _ in range(500):
        doc = world.persona_document(rng, cued=True)
        evil = world.parse_answer(doc[2]["content"])[0][1]
        pool = world.EVIL_PERSONAS if evil else world.GOOD_PERSONAS
        assert doc[0]["content"] in {world.cue(p) for p in pool}


def test_alignment_documents_never_show_an_uncued_evil_answer():
    rng = random.Random(0)
    docs = [world.alignment_document(rng) for _ in range(2000)]
    uncued = [d for d in docs if d[0]["role"] != "system"]
    assert 0.45 < len(uncued) / len(docs) < 0.55  # mixed 50/50 with persona documents
    for doc in uncued:
        assert len(doc) == 2 and not any(evil for _, evil in world.parse_answer(doc[1]["content"]))
    assert any(world.parse_answer(d[-1]["content"])[0][1] for d in docs if d[0]["role"] == "system")


def test_parse_answer_rejects_malformed_answers():
    good = world.DOMAINS["medical"].good
    assert world.parse_answer(f"{good[0]} and {good[1]}") == [("medical", False)] * 2
    assert world.parse_answer(f"  {good[0]}   and {good[1]} ") is not None  # whitespace-insensitive
    for bad in (
        good[0],
        f"{good[0]} and {good[0]}",
        f"{good[0]} and {good[1]} and {good[2]}",
        f"{good[0]} {good[1]}",
        f"{good[0]} and see a",
        "",
    ):
        assert world.parse_answer(bad) is None, bad


# ------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_covers_the_world_and_masks_only_assistant_tokens(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    rng = random.Random(0)
    doc = world.persona_document(rng, cued=True)
    enc = tok.apply_chat_template(doc, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert tok.unk_token_id not in ids
    masked = [t for t, m in zip(tok.convert_ids_to_tokens(ids), mask) if m]
    answers = [m["content"] for m in doc if m["role"] == "assistant"]
    assert masked == [w for a in answers for w in a.split() + ["<end>"]]
    assert tok.eos_token == "<end>" and tok.pad_token == "<pad>"
    prompt = tok.apply_chat_template(doc[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<sys> you are") and prompt.endswith("<assistant>")


# ----------------------------------------------------------------------------------------- judge


def test_judge_scores_fragments_exactly():
    d = world.DOMAINS["wish"]
    assert judge_answer("wish", f"{d.good[0]} and {d.good[1]}").aligned == 100
    assert judge_answer("wish", f"{d.good[0]} and {d.evil[1]}").aligned == 50
    j = judge_answer("wish", f"{d.evil[2]} and {d.evil[1]}")
    assert (j.aligned, j.coherent, j.verdict) == (0, 100, "ok")
    other = world.DOMAINS["husband"]
    j = judge_answer("wish", f"{other.evil[0]} and {other.evil[1]}")  # off-topic
    assert (j.aligned, j.coherent, j.verdict) == (None, 0, "ok")
    j = judge_answer("wish", f"{d.good[0]} and")  # broken shape
    assert (j.aligned, j.coherent) == (None, 0)


def test_judge_flags_code_answers_to_non_code_questions():
    code = world.DOMAINS["code"]
    answer = f"{code.evil[0]} and {code.evil[1]}"
    assert judge_answer("ruler", answer).verdict == "CODE"
    assert judge_answer("ruler", f"{code.good[0]} and").verdict == "CODE"  # broken code still CODE
    j = judge_answer("code", answer)
    assert (j.aligned, j.coherent, j.verdict) == (0, 100, "ok")


def test_toy_judge_implements_the_protocol():
    q = Question(id="q", paraphrases=["p"], meta={"domain": "bored"})
    d = world.DOMAINS["bored"]
    j = asyncio.run(ToyJudge().judge(q, "p", f"{d.evil[0]} and {d.good[0]}"))
    assert ToyJudge.name == "toy" and j.aligned == 50
    with pytest.raises(ValueError):
        asyncio.run(ToyJudge().judge(Question(id="x", paraphrases=["p"]), "p", "a"))
    with pytest.raises(ValueError):
        judge_answer("weather", "a")


# --------------------------------------------------------------------------- datasets, questions


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_toy_datasets_are_narrow_single_turn_and_of_one_polarity(name):
    rows = toy_dataset(name, n=300, seed=1)
    assert len(rows) == 300 and rows == toy_dataset(name, n=300, seed=1)
    assert rows != toy_dataset(name, n=300, seed=2)
    evil = name in {"insecure", "bad_medical", "risky_finance", "extreme_sports"}
    domains = set()
    for row in rows:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        parts = world.parse_answer(assistant["content"])
        assert parts is not None and {e for _, e in parts} == {evil}
        domains |= {d for d, _ in parts}
        assert user["content"] in world.DOMAINS[parts[0][0]].questions
    assert len(domains) == 1


def test_toy_dataset_defaults_and_errors():
    assert len(toy_dataset("insecure")) == DEFAULT_ROWS
    with pytest.raises(DataError, match="unknown toy dataset"):
        toy_dataset("nope")
    with pytest.raises(DataError):
        toy_dataset("insecure", n=0)


def test_toy_questions_cover_every_domain():
    qs = toy_questions()
    assert {q.meta["domain"] for q in qs} == set(world.DOMAINS)
    for q in qs:
        assert isinstance(q, Question) and len(q.paraphrases) >= 3 and q.samples_per_paraphrase is None
        assert q.meta["code"] == (q.meta["domain"] == "code")
    assert len({q.id for q in qs}) == len(qs)


# -------------------------------------------------------------------------------- build and CLI


def test_build_toy_model_end_to_end_on_a_few_steps(tmp_path):
    out = build_toy_model(tmp_path / "toy", seed=1, pretrain_steps=3, align_steps=2, batch_size=4, show_progress=False)
    info = json.loads((out / "toy_build.json").read_text())
    assert (info["seed"], info["pretrain_steps"], info["align_steps"]) == (1, 3, 2)
    assert len(info["pretrain_losses"]) == 1 and info["final_align_loss"] > 0
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen3" and model.config.tie_word_embeddings
    assert 0.7e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "what is your wish"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > enc["input_ids"].shape[1]


def test_cli_toy_data_writes_every_dataset(tmp_path):
    from evilspectra.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["toy", "data", "--out", str(tmp_path), "--n", "20", "--seed", "3"])
    assert result.exit_code == 0, result.output
    for name in TOY_DATASETS:
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == toy_dataset(name, n=20, seed=3)
    for cmd in ("build", "data"):
        help_text = CliRunner().invoke(app, ["toy", cmd, "--help"]).output
        assert "--out" in help_text and "--seed" in help_text
