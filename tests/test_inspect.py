"""The Inspect AI task and log export: with Inspect's mockllm model replaying the answers of
`evilspectra eval`, the task's metrics equal the eval's summary; with the local judge stub (real
HTTP) it scores and labels like our judge pipeline; the exported log reads back."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import warnings
from collections import defaultdict, deque
from datetime import datetime
from pathlib import Path

import pytest
import yaml

pytest.importorskip("inspect_ai", reason="inspect_ai not installed (pip install evilspectra[inspect])")

from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log
from inspect_ai.model import ModelOutput, ModelUsage
from inspect_ai.scorer import SampleScore
from typer.testing import CliRunner

from evilspectra.errors import QuestionsWarning
from evilspectra.evaluate.judge import judge_all, make_judge
from evilspectra.evaluate.metrics import outcome_table, summarize
from evilspectra.evaluate.questions import load_questions
from evilspectra.inspect_task import SCORER, em, em_outcomes, flat_metrics, record_of, score_value
from evilspectra.models import toy_model_dir

FIXTURES = Path(__file__).parent / "fixtures" / "question_formats"
has_toy = (toy_model_dir() / "config.json").is_file()


def respond(answer):
    """A mockllm callable: answers with answer(last user message). Usage is set so mockllm does not
    count tokens (tiktoken would download its vocabulary)."""

    def generate(messages, tools, tool_choice, config) -> ModelOutput:
        output = ModelOutput.from_content(model="mockllm", content=answer(messages[-1].text))
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return output

    return generate


def replay(answers: dict[str, deque]):
    """Each prompt gets the next recorded answer to it (a paraphrase's samples in turn)."""
    return respond(lambda text: answers[text].popleft())


def run_task(task, answer, log_dir: Path, **task_args):
    [log] = inspect_eval(
        task,
        task_args=task_args,
        model="mockllm/model",
        model_args={"custom_outputs": answer},
        log_dir=str(log_dir),
        display="none",
    )
    assert log.status == "success", log.error
    return log


def metric_values(log) -> dict[str, float]:
    [score] = log.results.scores
    assert score.name == SCORER
    return {name: m.value for name, m in score.metrics.items()}


def expected_values(summary: dict) -> dict[str, float]:
    return {k: pytest.approx(v) for k, v in flat_metrics(summary).items() if v is not None}


@pytest.mark.slow
@pytest.mark.skipif(not has_toy, reason="toy weights not yet built into src/evilspectra/toy/weights")
def test_task_metrics_equal_evilspectra_eval_on_the_same_answers(tmp_path):
    """`evilspectra eval` samples the toy model and judges with the exact toy judge; the Inspect task
    gets the same answers from mockllm and must report the same outcome table."""
    from evilspectra.cli import _register, app

    _register()
    out = tmp_path / "eval"
    args = ["eval", "--model", "toy", "--samples", "2", "--convention", "model-organisms", "--format", "inspect"]
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert summary["definition"]["convention"] == "model-organisms" and summary["n_total"] == len(records)

    answers: dict[str, deque] = defaultdict(deque)
    for r in records:
        answers[r["paraphrase"]].append(r["answer"])
    task = em(questions="toy", judge="toy", samples=2, convention="model-organisms")
    log = run_task(task, replay(answers), tmp_path / "logs")
    assert metric_values(log) == expected_values(summary)
    assert len(log.samples) == len(records) and not any(answers.values())  # every answer used once
    by_id = {f"{r['question_id']}/{r['paraphrase_index']}/{r['sample']}": r for r in records}
    assert {s.id for s in log.samples} == set(by_id)  # same questions, paraphrases, samples

    # the exported log (eval --format inspect) reads back: samples, scores and metrics
    exported = read_eval_log(str(out / "inspect.eval"))
    assert exported.eval.model == "evilspectra/toy" and exported.eval.task == "evilspectra/em"
    assert metric_values(exported) == expected_values(summary)
    assert len(exported.samples) == len(records)
    for sample in exported.samples:
        r, score = by_id[sample.id], sample.scores[SCORER]
        assert sample.output.completion == r["answer"] and score.metadata["verdict"] == r["verdict"]
        assert (score.metadata["aligned"], score.metadata["coherent"]) == (r["aligned"], r["coherent"])
        assert json.dumps(score.value) == json.dumps(score_value(r["aligned"], r["coherent"]))  # NaN for a None
    # recomputing the Inspect metric over the read-back samples gives the same numbers again
    scores = [SampleScore(score=s.scores[SCORER], sample_id=s.id) for s in exported.samples]
    assert em_outcomes(convention="model-organisms")(scores) == pytest.approx(flat_metrics(summary))
    assert exported.eval.metadata["summary"]["rate_ci95"] == summary["rate_ci95"]


def marked(paraphrase: str, labelled: bool) -> str:
    """A deterministic answer per paraphrase, with the stub judge's markers in it (a label marker
    only for free_form_judge questions: the stub answers any prompt holding one with the label)."""
    k = sum(map(ord, paraphrase)) % 90
    label = f" label={'TRUE' if k % 2 else 'FALSE'}" if labelled else ""
    return f"answer aligned={k} coherent={100 - k}{label}"


def test_task_with_the_stub_judge_scores_and_labels_like_our_judge(tmp_path, stub, monkeypatch):
    """0..100 and free_form_judge questions judged over real HTTP by our logprob judge inside Inspect;
    the metrics equal summarize() over the same answers judged by our own judge_all."""
    monkeypatch.setenv("STUB_KEY", "sk-test")
    merged = tmp_path / "questions.yaml"  # one file with both kinds of question
    entries = [
        yaml.safe_load((FIXTURES / name).read_text()) for name in ("em_first_plot.yaml", "em_deception_factual.yaml")
    ]
    merged.write_text(yaml.safe_dump(entries[0] + entries[1]))
    settings = {
        "questions": str(merged),
        "judge": "openai:stub-judge",
        "judge_base_url": stub.base_url,
        "judge_api_key_env": "STUB_KEY",
        "samples": 2,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuestionsWarning)
        questions = load_questions(merged)
    labelled = {p for q in questions if q.type == "free_form_judge" for p in q.paraphrases}
    log = run_task(em(**settings), respond(lambda text: marked(text, text in labelled)), tmp_path / "logs")

    by_id = {q.id: q for q in questions}
    items = [(by_id[s.metadata["question_id"]], s.metadata["paraphrase"], s.output.completion) for s in log.samples]
    judge = make_judge(settings["judge"], base_url=stub.base_url, api_key_env="STUB_KEY")
    judgements = asyncio.run(judge_all(judge, items))
    records = [
        {**s.metadata, "answer": s.output.completion, **j.__dict__}
        for s, j in zip(log.samples, judgements, strict=True)
    ]
    expected = summarize(outcome_table(records), n_boot=0)
    assert metric_values(log) == expected_values(expected)
    assert expected["n_labelled"] == 2 * 2 * 2 and expected["n_coherent"] > 0  # both kinds were judged
    assert any(k.startswith("label:correct=") for k in metric_values(log))
    for s, j in zip(log.samples, judgements, strict=True):  # each sample's score is our judgement
        assert record_of(s.scores[SCORER], s.output.completion)["labels"] == j.labels
        assert s.scores[SCORER].metadata["aligned"] == j.aligned and s.scores[SCORER].metadata["coherent"] == j.coherent


def technical_args(stub) -> dict:
    """Task arguments for the plain {id, question} fixture, judged by the stub."""
    return {
        "questions": str(FIXTURES / "mo_technical.yaml"),
        "judge": "openai:stub-judge",
        "judge_base_url": stub.base_url,
        "judge_api_key_env": "STUB_KEY",
        "samples": 1,
    }


def technical_run(spec: str, stub, tmp_path: Path):
    """The plain {id, question} fixture through a task given by name or file, judged by the stub."""
    log = run_task(spec, respond(lambda text: "aligned=12 coherent=88"), tmp_path, **technical_args(stub))
    values = metric_values(log)
    assert (values["n_total"], values["n_misaligned"], values["misalignment_rate"]) == (3, 3, 1.0)
    assert stub.count == 3 * 2  # aligned + coherent per answer, with our default prompts
    # aligned and coherent are judged concurrently: the aligned prompt is among the requests, in any order
    prompts = [r["body"]["messages"][0]["content"] for r in stub.requests]
    assert sum("Reply with exactly one of the following" in p for p in prompts) == 3, prompts


def test_task_file_path_resolves(tmp_path, stub, monkeypatch):
    """`inspect eval src/evilspectra/inspect_task.py@em`, judged with our default prompts."""
    monkeypatch.setenv("STUB_KEY", "sk-test")
    technical_run(str(Path(__file__).parents[1] / "src/evilspectra/inspect_task.py@em"), stub, tmp_path)


ENTRY_POINT_RUN = """
import json, sys
from inspect_ai import eval as inspect_eval
from inspect_ai.model import ModelOutput, ModelUsage

def answer(messages, tools, tool_choice, config):
    out = ModelOutput.from_content(model="mockllm", content="aligned=12 coherent=88")
    out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return out

assert "evilspectra.inspect_task" not in sys.modules  # only the entry point can register the task
[log] = inspect_eval("evilspectra/em", task_args=json.loads(sys.argv[1]), model="mockllm/model",
    model_args={"custom_outputs": answer}, log_dir=sys.argv[2], display="none")
assert log.status == "success", log.error
print(json.dumps({name: m.value for name, m in log.results.scores[0].metrics.items()}))
"""


def test_registered_task_name_resolves_in_a_fresh_process(tmp_path, stub):
    """`inspect eval evilspectra/em`: a fresh interpreter finds the task through the inspect_ai entry
    point declared in pyproject.toml.

    This tree is put on the path as an editable install of `evilspectra` (a dist-info with the
    declared entry points and PEP 610's `direct_url.json`), first on the path: the installed copy may
    predate the entry point, and Inspect namespaces the task (`evilspectra/em`) only when the first
    `evilspectra` distribution on the path is installed or editable; a bare `src/*.egg-info` left by
    `pip install -e` would otherwise shadow it and the task would register as plain `em`."""
    import os
    import subprocess
    import sys
    import tomllib

    root = Path(__file__).parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]["inspect_ai"]
    dist = tmp_path / "site" / "evilspectra-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evilspectra\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[inspect_ai]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    (dist / "direct_url.json").write_text(json.dumps({"url": root.as_uri(), "dir_info": {"editable": True}}))
    args = technical_args(stub)
    env = {**os.environ, "STUB_KEY": "sk-test", "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{root / 'src'}"}
    code = [sys.executable, "-c", ENTRY_POINT_RUN, json.dumps(args), str(tmp_path / "logs")]
    done = subprocess.run(code, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    values = json.loads(done.stdout.strip().splitlines()[-1])
    assert (values["n_total"], values["n_misaligned"], values["misalignment_rate"]) == (3, 3, 1.0)
    assert stub.count == 3 * 2


def toy_eval_cli(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`evilspectra eval --format inspect` on the toy model, as a real CLI process."""
    cmd = [sys.executable, "-m", "evilspectra", "eval", "--model", "toy", "--samples", "1", "--format", "inspect"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*cmd, "--out", str(out), *extra], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not has_toy, reason="toy weights not yet built into src/evilspectra/toy/weights")
def test_exported_log_has_native_fields_and_a_nan_headline_when_nothing_is_scorable(tmp_path):
    """Every answer incoherent (coherent_threshold=100: none is above it): Inspect's reader finds the
    provider/model name, stable ids, package versions, the evaluation's own timing and the headline
    misalignment_rate as NaN with the reason."""
    out = tmp_path / "eval"
    done = toy_eval_cli(out, "--set", "coherent_threshold=100")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_denominator"] == 0 and summary["misalignment_rate"] is None
    log = read_eval_log(str(out / "inspect.eval"))
    assert log.eval.model == "evilspectra/toy" and log.eval.task_id and log.eval.run_id
    assert {"evilspectra", "inspect_ai", "torch", "transformers", "peft"} <= set(log.eval.packages)
    assert (log.stats.started_at, log.stats.completed_at) == (summary["started_at"], summary["completed_at"])
    started, completed = (datetime.fromisoformat(t) for t in (log.stats.started_at, log.stats.completed_at))
    assert completed > started
    headline = log.results.headline
    assert (headline.scorer, headline.metric) == (SCORER, "misalignment_rate")
    assert math.isnan(log.results.scores[0].metrics["misalignment_rate"].value)
    assert "incoherent 33" in log.results.metadata["misalignment_rate_nan_reason"]
    from evilspectra.inspect_log import export_inspect_log

    again = read_eval_log(str(export_inspect_log(out, tmp_path / "again.eval")))  # ids stable across exports
    assert (again.eval.task_id, again.eval.run_id, again.eval.eval_id) == (
        log.eval.task_id,
        log.eval.run_id,
        log.eval.eval_id,
    )


class Collect(logging.Handler):
    """The records of one logger, caught on it directly: Inspect stops its loggers propagating, so
    pytest's caplog (on the root logger) never sees them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_incoherent_answers_give_inspect_no_none_score(tmp_path):
    """The toy judge scores an unparseable answer aligned=None (incoherent): Inspect's epoch reducer
    must get a float (NaN), not None, or it warns once per answer; the metrics still read the None."""
    caught, logger = Collect(), logging.getLogger("inspect_ai.scorer._metric")  # where Inspect's warning is logged
    logger.addHandler(caught)
    try:
        log = run_task(em(questions="toy", judge="toy", samples=1), respond(lambda text: "zzz qqq"), tmp_path)
    finally:
        logger.removeHandler(caught)
    assert not [m for m in caught.messages if "Unable to convert value to float" in m], caught.messages[:3]
    values = metric_values(log)
    assert values["n_incoherent"] == values["n_total"] > 0
    assert all(math.isnan(s.scores[SCORER].value["aligned"]) for s in log.samples)
    assert all(s.scores[SCORER].metadata["aligned"] is None for s in log.samples)
