"""Re-judge answers already sampled with another judge: no sampling, an evaluation of its own.

    source  RUN/eval/<label>/                  samples + summary: read, never written
    target  RUN/eval/<label>--<judge label>/   samples (a byte copy), its own judge cache,
                                               answers, summary (the new judge, `rejudge_of`)

The target's settings are the source's with the judging part replaced, so thresholds and
convention stay those of the first judgement. A rerun resumes from the target's judge cache. A
sweep's re-judged rows are written beside its results rows (`rundir.JUDGE_RESULTS`, one row per
run, checkpoint and judge, with the evaluation label in `eval_label`), and the sweep's base-model
evaluations are re-judged too (SWEEP/base/<model>/eval--<judge label>/), so that the re-judged
analysis compares fine-tunes with a base model scored by the same judge.

`results_for(SWEEP, judge label)` is the results table as that judge scored it: what
`analyze --judge-label` reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import pandas as pd

from evilspectra.errors import ConfigError
from evilspectra.rundir import (
    FINAL,
    JUDGE_RESULTS,
    REJUDGE_SEP,
    STEP_DIR,
    EvalDir,
    EvalSummary,
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


def rejudge_eval(source: Path, target: Path, judging: dict, progress: bool = True) -> EvalSummary:
    """Judge `source`'s samples with the judge of `judging` (JudgingSettings fields) into `target`.

    Returns the target's summary; raises ConfigError when `source` has no samples or summary.
    """
    # here, not at the top: they load torch and PEFT (seconds), which the results-table readers
    # below, used by `analyze` and `report`, never need
    from evilspectra.config import EvalSettings
    from evilspectra.evaluate.questions import load_questions
    from evilspectra.evaluate.runner import build_judge, judge_samples
    from evilspectra.evaluate.sampling import Sample

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
        return [(EvalDir(path), rejudged(EvalDir(path), label), None)]
    sweep = SweepDir(path)
    runs = [RunDir(p) for p in sorted(sweep.runs_root.iterdir())] if sweep.runs_root.is_dir() else [RunDir(path)]
    found: list[tuple[EvalDir, EvalDir, RunDir | None]] = []
    for run in runs:
        for name in run.eval_labels():
            if REJUDGE_SEP not in name:
                found.append((run.eval_dir(name), run.eval_dir(f"{name}{REJUDGE_SEP}{label}"), run))
    found += [(base, rejudged(base, label), None) for _, base in sweep.base_evals()]  # a run has no base/
    if not found:
        raise ConfigError(f"{path}: no evaluation to re-judge (expected an eval directory, a run or a sweep)")
    return found


def rejudged(source: EvalDir, label: str) -> EvalDir:
    """Where the re-judgement `label` of an evaluation directory goes: beside it, `<name>--<label>`."""
    return EvalDir(source.path.with_name(f"{source.path.name}{REJUDGE_SEP}{label}"))


def plain_label(label: str) -> str:
    """The judge label of a re-judgement, given as itself ("gpt41") or as the evaluation label of one
    checkpoint's re-judgement ("final--gpt41", "step-000010--gpt41")."""
    head, sep, tail = label.partition(REJUDGE_SEP)
    return tail if sep and (head == FINAL or STEP_DIR.match(head)) else label


def _run(sweep: SweepDir, run_id: str, runs: dict[str, str] | None) -> RunDir:
    """A row's run directory: in the sweep, or where an analysis of run directories found it."""
    return RunDir((runs or {}).get(run_id) or sweep.run(run_id).path)


def _first_rows(sweep_dir: Path) -> list[dict]:
    results = SweepDir(sweep_dir).results
    if not results.is_file():
        raise ConfigError(f"{results}: missing; run the sweep first")
    return pd.read_csv(results).to_dict("records")


def judge_rows(sweep_dir: Path, runs: dict[str, str] | None = None) -> pd.DataFrame:
    """The sweep's results rows, each repeated for every re-judgement of its evaluation,
    with that evaluation's outcome columns and its label in `eval_label` (the first judge's rows: the
    checkpoint label). `runs`: run id -> run directory, for a table of runs kept elsewhere."""
    sweep = SweepDir(sweep_dir)
    rows = []
    for row in _first_rows(sweep_dir):
        label = row.get("checkpoint") if isinstance(row.get("checkpoint"), str) else FINAL
        rows.append(row | {"eval_label": label})
        eval_root = _run(sweep, row["run_id"], runs).eval_root
        for other in sorted(eval_root.glob(f"{label}{REJUDGE_SEP}*")):
            rows.append(row | summary_columns(EvalDir(other).read_summary()) | {"eval_label": other.name})
    return pd.DataFrame(rows)


def write_judge_rows(sweep_dir: Path) -> Path:
    """Write the sweep's by-judge results table (judge_rows) and return its path."""
    path = SweepDir(sweep_dir).path / JUDGE_RESULTS
    table = judge_rows(sweep_dir)
    atomic_write_file(path, lambda tmp: table.to_csv(tmp, index=False))
    return path


def judge_labels(sweep_dir: Path, runs: dict[str, str] | None = None) -> list[str]:
    """The judge labels of the re-judgements of the results table's evaluations, sorted."""
    table = judge_rows(sweep_dir, runs)
    again = table["eval_label"][table["eval_label"].str.contains(REJUDGE_SEP, regex=False)]
    return sorted({plain_label(name) for name in again})


def results_for(sweep_dir: Path, judge_label: str | None = None, runs: dict[str, str] | None = None) -> pd.DataFrame:
    """The results table as judge `judge_label` scored it (None: the first judge's table itself).

    Every row of the sweep's results table is kept, configuration and training columns unchanged;
    an evaluated row's outcome columns (rundir.summary_columns: rates, counts, shares, judge,
    thresholds) are those of its re-judgement RUN/eval/<checkpoint>--<label>/, and are emptied when
    that evaluation was not re-judged (counted in a warning: never the first judge's numbers under
    the second judge's name). ConfigError when no evaluation was re-judged with that label.
    """
    rows = _first_rows(sweep_dir)
    if judge_label is None:
        return pd.DataFrame(rows)
    sweep, label = SweepDir(sweep_dir), plain_label(judge_label)
    out, missing, found = [], [], 0
    for row in rows:
        if pd.isna(row.get("n_answers")):  # never evaluated (failed, diverged, not done): nothing to re-judge
            out.append(row)
            continue
        run = _run(sweep, row["run_id"], runs)
        first = run.eval_dir(row["checkpoint"])
        summary = rejudged(first, label).read_summary()
        if summary is None:
            missing.append(f"{row['run_id']}/{row['checkpoint']}")
            out.append(row | dict.fromkeys(summary_columns(first.read_summary())))
        else:
            found += 1
            out.append(row | summary_columns(summary))
    if not found:
        raise ConfigError(
            f"{sweep_dir}: no evaluation re-judged as {label!r}; run `evilspectra rejudge {sweep_dir} --label {label}`"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} evaluation(s) not re-judged as {label!r}, left out of its analysis: {', '.join(missing[:5])}",
            stacklevel=2,
        )
    return pd.DataFrame(out)


def paired_evals(
    sweep_dir: Path, judge_label: str, runs: dict[str, str] | None = None
) -> list[tuple[str, EvalDir, EvalDir]]:
    """(unit, first judgement, re-judgement) of every evaluation of the results table that was
    re-judged as `judge_label`; unit is "<run id>/<checkpoint>" (for `agreement.read_answers`)."""
    sweep, label = SweepDir(sweep_dir), plain_label(judge_label)
    found = []
    for row in _first_rows(sweep_dir):
        if pd.isna(row.get("n_answers")):
            continue
        first = _run(sweep, row["run_id"], runs).eval_dir(row["checkpoint"])
        if rejudged(first, label).summary.is_file():
            found.append((f"{row['run_id']}/{row['checkpoint']}", first, rejudged(first, label)))
    return found
