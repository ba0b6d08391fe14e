"""Re-judge answers already sampled with another judge: no sampling, an evaluation of its own.

    source  RUN/eval/<label>/                  samples + summary: read, never written
    target  RUN/eval/<label>--<judge label>/   samples (a byte copy), its own judge cache,
                                               answers, summary (the new judge, `rejudge_of`)

The target's settings are the source's with the judging part replaced, so thresholds and
convention stay those of the first judgement. A rerun resumes from the target's judge cache. A
sweep's re-judged rows are written beside its results rows (`rundir.JUDGE_RESULTS`, one row per
run, checkpoint and judge, with the evaluation label in `eval_label`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd

from evilspectra.config import EvalSettings
from evilspectra.errors import ConfigError
from evilspectra.evaluate.questions import load_questions
from evilspectra.evaluate.runner import build_judge, judge_samples
from evilspectra.evaluate.sampling import Sample
from evilspectra.rundir import (
    JUDGE_RESULTS,
    REJUDGE_SEP,
    EvalDir,
    RunDir,
    SweepDir,
    atomic_write_file,
    atomic_write_text,
    read_json,
    summary_columns,
)

# summary fields that describe the answers, not their judgement: carried over from the source
_ANSWER_FIELDS = (
    "model",
    "model_path",
    "adapter",
    "questions",
    "question_ids",
    "temperatures",
    "samples_per_paraphrase",
    "chat_template_kwargs",
)


def judge_label(judge: str) -> str:
    """A plain evaluation label from a judge spec: "openai:gpt-4.1-mini" -> "openai-gpt-4.1-mini"."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", judge).strip("-.") or "judge"


def rejudge_eval(source: Path, target: Path, judging: dict, progress: bool = True) -> dict:
    """Judge `source`'s samples with the judge of `judging` (JudgingSettings fields) into `target`.

    Returns the target's summary; raises ConfigError when `source` has no samples or summary.
    """
    src, dst = EvalDir(source), EvalDir(target)
    summary = read_json(src.summary)
    if summary is None or not src.samples.is_file() or not isinstance(summary.get("settings"), dict):
        raise ConfigError(
            f"{src.path}: no {src.samples.name} and {src.summary.name} to re-judge; run `evilspectra eval` first"
        )
    if dst.path.resolve() == src.path.resolve():
        raise ConfigError(f"{dst.path}: the re-judgement needs a directory of its own, not the source's")
    settings = EvalSettings.model_validate({**summary["settings"], **judging})
    wanted = set(summary.get("question_ids") or [])
    questions = [q for q in load_questions(settings.questions) if not wanted or q.id in wanted]
    judge = build_judge(settings, dst.judge_cache)  # before any file: a bad key or URL changes nothing
    raw = src.samples.read_bytes()
    samples = [Sample(**json.loads(line)) for line in raw.decode().splitlines()]
    atomic_write_text(dst.samples, raw.decode())
    carried = {k: summary.get(k) for k in _ANSWER_FIELDS}
    origin = {
        "path": str(src.path),
        "judge": summary.get("judge"),
        "samples_sha256": hashlib.sha256(raw).hexdigest(),
    }
    fields = carried | {"samples_reused": True, "rejudge_of": origin}
    return judge_samples(samples, questions, judge, settings, dst, fields, progress)


def rejudge_targets(path: Path, label: str) -> list[tuple[EvalDir, EvalDir, RunDir | None]]:
    """(source, target, run holding them) for a run, a sweep (every run) or one eval directory.

    Sources are a run's evaluations that are not themselves re-judgements; each target is
    `<source label>--<label>` beside it (an eval directory's target: `<dir>--<label>`).
    """
    path = Path(path)
    if EvalDir(path).summary.is_file():
        return [(EvalDir(path), EvalDir(path.with_name(f"{path.name}{REJUDGE_SEP}{label}")), None)]
    sweep = SweepDir(path)
    runs = [RunDir(p) for p in sorted(sweep.runs_root.iterdir())] if sweep.runs_root.is_dir() else [RunDir(path)]
    found = []
    for run in runs:
        for name in run.eval_labels():
            if REJUDGE_SEP not in name:
                found.append((run.eval_dir(name), run.eval_dir(f"{name}{REJUDGE_SEP}{label}"), run))
    if not found:
        raise ConfigError(f"{path}: no evaluation to re-judge (expected an eval directory, a run or a sweep)")
    return found


def judge_rows(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's results rows, each repeated for every re-judgement of its evaluation,
    with that evaluation's outcome columns and its label in `eval_label` (the first judge's rows: the
    checkpoint label)."""
    sweep = SweepDir(sweep_dir)
    if not sweep.results.is_file():
        raise ConfigError(f"{sweep.results}: missing; run the sweep first")
    base = pd.read_csv(sweep.results)
    rows = []
    for row in base.to_dict("records"):
        label = row.get("checkpoint") or "final"
        rows.append(row | {"eval_label": label})
        eval_root = sweep.run(row["run_id"]).eval_root
        for other in sorted(eval_root.glob(f"{label}{REJUDGE_SEP}*")):
            rows.append(row | summary_columns(EvalDir(other).read_summary()) | {"eval_label": other.name})
    return pd.DataFrame(rows)


def write_judge_rows(sweep_dir: Path) -> Path:
    """Write the sweep's by-judge results table (judge_rows) and return its path."""
    path = SweepDir(sweep_dir).path / JUDGE_RESULTS
    table = judge_rows(sweep_dir)
    atomic_write_file(path, lambda tmp: table.to_csv(tmp, index=False))
    return path


def results_for(sweep_dir: Path, eval_label: str | None = None) -> pd.DataFrame:
    """Results rows shaped like the sweep's results table, judged as evaluation label `eval_label` says: None or a
    checkpoint label -> the first judge's rows; "<checkpoint>--<judge label>" or just "<judge label>"
    -> that re-judgement's rows (for the analysis of one judge)."""
    table = judge_rows(sweep_dir)
    if eval_label is None:
        keep = ~table["eval_label"].str.contains(REJUDGE_SEP, regex=False)
    else:
        suffix = f"{REJUDGE_SEP}{eval_label}"
        keep = (table["eval_label"] == eval_label) | table["eval_label"].str.endswith(suffix)
    if not keep.any():
        raise ConfigError(f"{sweep_dir}: no evaluation labelled {eval_label!r}")
    return table[keep].drop(columns="eval_label").reset_index(drop=True)
