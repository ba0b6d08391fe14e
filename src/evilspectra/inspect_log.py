"""Write an `evilspectra eval` result (the answers and summary of an EvalDir) as an Inspect AI eval
log (EvalDir.inspect_log) to browse with `inspect view` or read with `inspect_ai.log.read_eval_log`.

The log has the shape the Inspect task (inspect_task.py) writes: one sample per answer, id
"QID/P/K", the answer as the model output, an `em_judge` score with value {aligned, coherent}
and the answers record as metadata, and the em_outcomes metrics of the summary (flat
names, inspect_task.flat_metrics). The whole summary (CIs, per-question numbers) is kept in
the log's eval metadata. inspect_ai is optional (`pip install evilspectra[inspect]`).

As in a log Inspect writes itself: the model in provider/model form, task and run ids, package
versions, the evaluation's start and end (the summary's started_at / completed_at) and a headline
metric, misalignment_rate, that is always there (NaN, with the reason in the results' metadata,
when no answer is in its denominator).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from inspect_ai.log import (
    EvalConfig,
    EvalDataset,
    EvalLog,
    EvalMetric,
    EvalResults,
    EvalSample,
    EvalScore,
    EvalSpec,
    EvalStats,
    HeadlineMetric,
    write_eval_log,
)
from inspect_ai.model import ChatMessage, ChatMessageAssistant, ChatMessageSystem, ChatMessageUser, ModelOutput
from inspect_ai.scorer import Score

from evilspectra import rundir
from evilspectra.errors import EvilSpectraError, QuestionsError
from evilspectra.evaluate.questions import load_questions
from evilspectra.inspect_task import SCORER, flat_metrics, score_value

HEADLINE = "misalignment_rate"
RECORD_KEYS = ("question_id", "paraphrase_index", "paraphrase", "sample", "aligned", "coherent", "verdict", "error")


def export_inspect_log(eval_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write eval_dir's answers and summary as an Inspect log at `path` (default EvalDir(eval_dir).inspect_log)."""
    files = rundir.EvalDir(eval_dir)
    try:
        summary = json.loads(files.summary.read_text())
        records = files.read_answers()
    except (OSError, json.JSONDecodeError) as exc:
        raise EvilSpectraError(f"{eval_dir}: no readable {rundir.SUMMARY} and {rundir.ANSWERS} ({exc})") from None
    systems = _system_prompts(summary.get("questions"))
    started, completed, timing = _timing(summary, files)
    run_id, label = _ids(files)
    model = _inspect_model(summary["model"])
    metrics, reason = _metrics(summary)
    headline = HeadlineMetric(scorer=SCORER, metric=HEADLINE)
    log = EvalLog(
        status="success",
        eval=EvalSpec(
            created=started,
            run_id=run_id,
            task_id=_digest(f"{run_id}/{label}"),  # one task per (run, evaluation label)
            eval_id=_digest(f"{run_id}/{label}/{started}"),  # Inspect would draw a random one per export
            task="evilspectra/em",
            dataset=EvalDataset(name=summary.get("questions"), samples=len(records)),
            model=model,
            model_args={"model": summary["model"], "model_path": summary.get("model_path")},
            config=EvalConfig(),
            task_args=summary.get("settings", {}),
            packages=_packages(),
            headline_metric=headline,
            metadata={
                "adapter": summary.get("adapter"),
                "judge": summary.get("judge"),
                "label": label,
                "timing": timing,
                "summary": summary,
            },
        ),
        results=EvalResults(
            total_samples=len(records),
            completed_samples=len(records),
            scores=[EvalScore(name=SCORER, scorer=SCORER, metrics=metrics)],
            headline=headline,
            metadata={f"{HEADLINE}_nan_reason": reason} if reason else None,
        ),
        stats=EvalStats(started_at=started, completed_at=completed),
        samples=[_sample(r, model, systems.get(r["question_id"])) for r in records],
    )
    out = Path(path) if path is not None else files.inspect_log
    write_eval_log(log, str(out))
    return out


def _inspect_model(model: str) -> str:
    """`evilspectra/<model>`: Inspect names a model provider/model by who served it; here our own sampler
    (transformers or vLLM under evilspectra, with our chat-template settings and adapter) produced the
    answers, not Inspect's hf/ or vllm/ provider, so `hf/<id>` would claim a generation path that was
    not used. The part after the prefix is the model as given (toy, an HF id or a path)."""
    return f"evilspectra/{model}"


def _ids(files: rundir.EvalDir) -> tuple[str, str]:
    """(run id, evaluation label): the training run's id when the evaluation sits in RUN/eval/<label>,
    else a digest of the evaluation folder's absolute path (stable across exports of one folder)."""
    label = files.path.name
    run = rundir.RunDir(files.path.parent.parent)
    manifest = run.read_manifest() if files.path.parent == run.eval_root else None
    if manifest is not None and manifest.run_id:
        return manifest.run_id, label
    return f"eval-{_digest(str(files.path.resolve()))}", label


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:22]


def _timing(summary: dict, files: rundir.EvalDir) -> tuple[str, str, str]:
    """(started, completed, source): the summary's own timing; for a summary written before it was
    recorded, the modification times of the samples (start) and the summary (end), said as such."""
    if summary.get("started_at") and summary.get("completed_at"):
        return summary["started_at"], summary["completed_at"], "summary started_at / completed_at"
    first = files.samples if files.samples.is_file() else files.answers
    times = sorted(f.stat().st_mtime for f in (first, files.summary))  # a copied folder may reorder them
    started, completed = (datetime.fromtimestamp(t, UTC).isoformat() for t in times)
    return started, completed, f"file modification times of {first.name} and {files.summary.name}"


def _packages() -> dict[str, str]:
    """Versions installed at export, as in Inspect's own logs (the summary records none of its own)."""
    versions = {k: v for k, v in rundir.library_versions().items() if k != "python"}
    versions["inspect_ai"] = metadata.version("inspect_ai")
    return versions


def _metrics(summary: dict) -> tuple[dict[str, EvalMetric], str | None]:
    """The flat metrics with a value, and the headline always: NaN (and the reason) when it has none."""
    flat = flat_metrics(summary)
    metrics = {name: EvalMetric(name=name, value=v) for name, v in flat.items() if v is not None}
    if flat[HEADLINE] is not None:
        return metrics, None
    outcomes = ", ".join(f"{k[2:]} {v}" for k, v in flat.items() if k.startswith("n_") and v and k != "n_total")
    reason = (
        f"no answer is in the rate's denominator (coherent scored answers, "
        f"{summary.get('definition', {}).get('convention', 'default')} convention): "
        f"{summary['n_total']} answers; {outcomes or 'none scored'}"
    )
    return {HEADLINE: EvalMetric(name=HEADLINE, value=math.nan), **metrics}, reason


def _sample(record: dict, model: str, system: str | None) -> EvalSample:
    """One answer as an Inspect sample: the chat, the answer as output, the judge's Score."""
    prompt: list[ChatMessage] = [ChatMessageSystem(content=system)] if system else []
    prompt.append(ChatMessageUser(content=record["paraphrase"]))
    answer = record["answer"]
    return EvalSample(
        id=f"{record['question_id']}/{record['paraphrase_index']}/{record['sample']}",
        epoch=1,
        input=prompt,
        target="",
        messages=[*prompt, ChatMessageAssistant(content=answer, model=model)],
        output=ModelOutput.from_content(model=model, content=answer),
        scores={
            SCORER: Score(
                value=score_value(record["aligned"], record["coherent"]),
                answer=answer,
                explanation=record.get("error"),
                metadata={**{k: record.get(k) for k in RECORD_KEYS}, "labels": record.get("labels")},
            )
        },
        metadata={k: record[k] for k in ("question_id", "paraphrase_index", "paraphrase", "sample")},
    )


def _system_prompts(questions: str | None) -> dict[str, str]:
    """question id -> system prompt, when the question set still loads (the answers have none)."""
    try:
        return {q.id: q.system for q in load_questions(questions) if q.system} if questions else {}
    except QuestionsError:
        return {}
