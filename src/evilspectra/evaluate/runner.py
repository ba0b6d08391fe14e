"""Evaluate one model (+ adapter): sample answers -> judge them -> outcome table -> summary.

Files written into `out`, an EvalDir (names in evilspectra.rundir), each atomically:

    samples       the sampled answers, written before judging (one line per answer, with the exact
                  prompt text and the chat-template variables that rendered it)
    samples_meta  the fingerprint of what produced them (model, adapter bytes, questions,
                  sampling settings); a rerun with the same fingerprint reuses the samples
    judge_cache   the LLM judge's persistent cache (a rerun pays for nothing twice)
    answers       one line per answer: the sample + aligned, coherent, verdict, error, unscored
    summary       summarize() of the outcome table + model, adapter, judge, its endpoint (no
                  credentials), settings, and `n_judge_retry`: answers whose judge calls a rerun
                  asks again (errors, replies without a number token); an evaluation with any is
                  not finished. When every answer is such, evaluate() raises JudgeError after writing.
                  `started_at` / `completed_at` (ISO 8601 UTC) time the evaluation (the Inspect log's).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from evilspectra.artefacts.io import atomic_write_text
from evilspectra.artefacts.paths import EvalDir, adapter_digest
from evilspectra.artefacts.paths import select_adapters as select_adapters  # public name kept (moved)
from evilspectra.artefacts.records import EvalSummary, SamplesMeta
from evilspectra.config import EvalSettings, stable_dump
from evilspectra.errors import ConfigError, DataError, JudgeError, QuestionsWarning
from evilspectra.evaluate.endpoint import public_url, redact_settings
from evilspectra.evaluate.judge import NO_NUMBER, estimate_calls, judge_all, make_judge
from evilspectra.evaluate.metrics import outcome_table, summarize
from evilspectra.evaluate.questions import LABELLED, load_questions
from evilspectra.evaluate.sampling import Sample, progress_bar, resolve_adapter, sample_answers, samples_to_jsonl
from evilspectra.evaluate.schema import Judge, Question
from evilspectra.evaluate.selection import QuestionsFilter, samples_for, select_questions, temperature_for
from evilspectra.models import resolve_model
from evilspectra.registry import is_local_judge

N_BOOT = 1000


def plan(settings: EvalSettings, questions_filter: QuestionsFilter = None) -> dict:
    """What an evaluation will do: number of questions, samples and (uncached) judge API calls."""
    questions = select_questions(load_questions(settings.questions), questions_filter)
    per_question = [len(q.paraphrases) * samples_for(q, settings) for q in questions]
    n_samples = sum(per_question)
    # a free_form_judge question costs one call per judge prompt, a 0..100 question one per metric
    calls = sum(
        estimate_calls(n, len(q.judge_prompts)) if q.type == LABELLED else estimate_calls(n)
        for q, n in zip(questions, per_question)
    )
    calls = 0 if is_local_judge(settings.judge) else calls  # a local judge calls no API
    return {"questions": len(questions), "samples": n_samples, "judge_calls": calls}


def evaluate(
    model: str,
    adapter: str | Path | None,
    settings: EvalSettings,
    out: Path,
    questions_filter: QuestionsFilter = None,
    judge_cache: Path | None = None,
    judge: Judge | None = None,
    progress: bool = True,
) -> EvalSummary:
    """Sample, judge and summarise; write the files listed in the module docstring; return the summary.

    `judge`: a ready Judge to use instead of building `settings.judge` (e.g. a custom scorer);
    `judge_cache`: the LLM judge's cache file, default the EvalDir's judge cache.
    """
    started_at = utc_now()  # the evaluation's own timing, for the summary (and the Inspect log's stats)
    files = EvalDir(Path(out))
    questions = select_questions(load_questions(settings.questions), questions_filter)
    if not questions:
        raise ConfigError(f"eval: no questions selected from {settings.questions!r}")
    adapter_dir = resolve_adapter(adapter) if adapter is not None else None
    # build the judge first: a missing API key must fail before minutes of sampling
    judge = judge or build_judge(settings, judge_cache or files.judge_cache)
    _warn_unused_judge_field(questions, judge.name, settings.questions)

    fingerprint = sampling_fingerprint(model, adapter_dir, questions, settings)
    samples = load_samples(files.path, fingerprint)
    reused = samples is not None
    if samples is None:
        samples = sample_answers(model, adapter_dir, questions, settings, progress)
        atomic_write_text(files.samples, samples_to_jsonl(samples))
        files.write_samples_meta(SamplesMeta(fingerprint=fingerprint, n=len(samples)))

    fields = {
        "model": model,
        "model_path": resolve_model(model),
        "adapter": str(adapter_dir) if adapter_dir else None,
        "questions": settings.questions,
        "question_ids": [q.id for q in questions],
        "temperatures": {q.id: temperature_for(q, settings) for q in questions},
        "samples_per_paraphrase": {q.id: samples_for(q, settings) for q in questions},
        "chat_template_kwargs": samples[0].chat_template_kwargs,  # resolved (family defaults + settings)
        "samples_reused": reused,
        "started_at": started_at,
    }
    return judge_samples(samples, questions, judge, settings, files, fields, progress)


def utc_now() -> str:
    """Now as an ISO 8601 UTC timestamp (the summary's started_at / completed_at)."""
    return datetime.now(UTC).isoformat()


def build_judge(settings: EvalSettings, cache_path: Path | None) -> Judge:
    """The judge `settings` name (their judging part), caching into `cache_path`."""
    return make_judge(
        settings.judge,
        base_url=settings.judge_base_url,
        api_key_env=settings.judge_api_key_env,
        concurrency=settings.judge_concurrency,
        cache_path=cache_path,
        max_retries=settings.judge_max_retries,
        backoff_base=settings.judge_backoff,
    )


def judge_samples(
    samples: list[Sample],
    questions: list[Question],
    judge: Judge,
    settings: EvalSettings,
    files: EvalDir,
    fields: dict,
    progress: bool = True,
) -> EvalSummary:
    """Judge sampled answers, write `files`' answers and summary (+ `fields`), return the summary.
    Raises JudgeError (after writing) when no answer got a judgement (check_judged)."""
    fields = {"started_at": utc_now(), **fields}  # a re-judge times its judging; evaluate() its sampling too
    by_id = {q.id: q for q in questions}
    items = [(by_id[s.question_id], s.paraphrase, s.answer) for s in samples]
    with progress_bar(progress) as bar:
        task = bar.add_task("judging", total=len(items))
        judgements = asyncio.run(judge_all(judge, items, progress=lambda _: bar.advance(task)))

    records = [{**asdict(s), **asdict(j)} for s, j in zip(samples, judgements)]
    atomic_write_text(files.answers, "".join(json.dumps(r) + "\n" for r in records))
    summary = summarize_records(records, settings).updated(
        **fields,
        judge=judge.name,
        judge_base_url=public_url(settings.judge_base_url),
        settings=redact_settings(stable_dump(settings)),
        completed_at=utc_now(),
    )
    files.write_summary(summary)
    check_judged(summary, files)
    return summary


def summarize_records(records: list[dict], settings: EvalSettings) -> EvalSummary:
    """summarize() of answer records under `settings`' scoring, plus `n_judge_retry` (module docstring)."""
    summary = summarize(
        outcome_table(records),
        aligned_threshold=settings.aligned_threshold,
        coherent_threshold=settings.coherent_threshold,
        code_convention=settings.code_convention,
        n_boot=N_BOOT,
        seed=settings.seed,
        convention=settings.convention,
    )
    retry = sum(r["verdict"] == "error" or NO_NUMBER in (r.get("unscored") or "") for r in records)
    return summary.updated(n_judge_retry=retry)


def check_judged(summary: EvalSummary, files: EvalDir) -> None:
    """JudgeError when no answer got a judgement (the judge is down or never answers with a
    number); a note on stderr when some did not (a rerun asks those calls again)."""
    n_retry, n_total = summary.judge_retries(), summary.n_total
    if n_total and n_retry == n_total:
        raise JudgeError(
            f"{files.summary}: no judge call succeeded ({n_total} of {n_total} answers: "
            f"{summary.n_error} judge errors, {n_total - summary.n_error} replies without a number) "
            f"from judge {summary.judge} at {summary.judge_base_url or 'the default endpoint'}; "
            "the samples are kept: rerun when the judge answers"
        )
    if n_retry:
        print(
            f"note: {n_retry} of {n_total} answers in {files.path} have no judgement yet (judge errors or "
            "replies without a number); rerun to ask those calls again",
            file=sys.stderr,
        )


def _warn_unused_judge_field(questions: list[Question], judge_name: str, source: str) -> None:
    """A question file's `judge` (model name) is read but the judge is chosen by the settings: say so
    when they differ, naming the field."""
    used = judge_name.partition(":")[2] or judge_name
    named = sorted({q.meta["judge"] for q in questions if q.meta.get("judge")} - {used})
    if named:
        warnings.warn(
            f"{source}: judge field ({', '.join(named)}) is ignored: answers are judged by {judge_name} (--judge)",
            QuestionsWarning,
            stacklevel=3,
        )


def sampling_fingerprint(
    model: str, adapter_dir: Path | None, questions: list[Question], settings: EvalSettings
) -> str:
    """sha256 over everything that determines the sampled answers (adapter by content, not path)."""
    blob = {
        "model": model,
        "model_path": resolve_model(model),
        "adapter": adapter_digest(adapter_dir) if adapter_dir else None,
        "questions": [
            [q.id, q.paraphrases, q.system, temperature_for(q, settings), samples_for(q, settings)] for q in questions
        ],
        "sampling": settings.model_dump(include={"top_p", "max_new_tokens", "batch_size", "backend", "seed"}),
    }
    if settings.chat_template_kwargs is not None:  # only when set: keeps the fingerprints of earlier samples
        blob["chat_template_kwargs"] = settings.chat_template_kwargs
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def load_samples(out: Path, fingerprint: str) -> list[Sample] | None:
    """The samples already in `out` when they were made with the same fingerprint and are complete."""
    files = EvalDir(Path(out))
    try:
        meta = files.read_samples_meta()
        rows = files.read_samples()
    except (OSError, ValueError, DataError):  # missing, torn or foreign: sample again
        return None
    if meta is None or meta.fingerprint != fingerprint or meta.n != len(rows):
        return None
    return [Sample(**row) for row in rows]
