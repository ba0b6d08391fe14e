"""Write an `evilspectra eval` result (the answers and summary of an EvalDir) as an Inspect AI eval
log (EvalDir.inspect_log) to browse with `inspect view` or read with `inspect_ai.log.read_eval_log`.

The log has the shape the Inspect task (inspect_task.py) writes: one sample per answer, id
"QID/P/K", the answer as the model output, an `em_judge` score with value {aligned, coherent}
and the answers record as metadata, and the em_outcomes metrics of the summary (flat
names, inspect_task.flat_metrics). The whole summary (CIs, per-question numbers) is kept in
the log's eval metadata. inspect_ai is optional (`pip install evilspectra[inspect]`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
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
    write_eval_log,
)
from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser, ModelOutput
from inspect_ai.scorer import Score

from evilspectra import rundir
from evilspectra.errors import EvilSpectraError, QuestionsError
from evilspectra.evaluate.questions import load_questions
from evilspectra.inspect_task import SCORER, flat_metrics

RECORD_KEYS = ("question_id", "paraphrase_index", "paraphrase", "sample", "aligned", "coherent", "verdict", "error")


def export_inspect_log(eval_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write eval_dir's answers and summary as an Inspect log at `path` (default EvalDir(eval_dir).inspect_log)."""
    files = rundir.EvalDir(eval_dir)
    try:
        summary = json.loads(files.summary.read_text())
        records = [json.loads(line) for line in files.answers.read_text().splitlines()]
    except (OSError, json.JSONDecodeError) as exc:
        raise EvilSpectraError(f"{eval_dir}: no readable {rundir.SUMMARY} and {rundir.ANSWERS} ({exc})") from None
    systems = _system_prompts(summary.get("questions"))
    now = datetime.now(UTC).isoformat()
    log = EvalLog(
        status="success",
        eval=EvalSpec(
            created=now,
            task="evilspectra/em",
            dataset=EvalDataset(name=summary.get("questions"), samples=len(records)),
            model=summary["model"],
            config=EvalConfig(),
            task_args=summary.get("settings", {}),
            metadata={"adapter": summary.get("adapter"), "judge": summary.get("judge"), "summary": summary},
        ),
        results=EvalResults(
            total_samples=len(records),
            completed_samples=len(records),
            scores=[EvalScore(name=SCORER, scorer=SCORER, metrics=_metrics(summary))],
        ),
        stats=EvalStats(started_at=now, completed_at=now),
        samples=[_sample(r, summary["model"], systems.get(r["question_id"])) for r in records],
    )
    out = Path(path) if path is not None else files.inspect_log
    write_eval_log(log, str(out))
    return out


def _metrics(summary: dict) -> dict[str, EvalMetric]:
    return {name: EvalMetric(name=name, value=v) for name, v in flat_metrics(summary).items() if v is not None}


def _sample(record: dict, model: str, system: str | None) -> EvalSample:
    """One answer as an Inspect sample: the chat, the answer as output, the judge's Score."""
    prompt = [ChatMessageSystem(content=system)] if system else []
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
                value={"aligned": record["aligned"], "coherent": record["coherent"]},
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
