"""Every file name of the artefacts contract, and the path objects that spell them.

RUN/                         RunDir
  manifest.json              Manifest: config, status, versions, timings (written by train)
  metrics.jsonl              one JSON line per optimiser step
  checkpoints/step-NNNNNN/   PEFT adapters saved during training (AdapterDir)
  adapter/                   the final PEFT adapter (AdapterDir)
  spectra.csv, spectra.png   singular values + metrics of every adapter, their plot (spectra)
  eval/<label>/              EvalDir of one adapter (label `final` or `step-NNNNNN`)
  error.json                 ErrorRecord: the stage that failed in a sweep, with its traceback
  audit/                     AuditDir: `evilspectra audit` output
SWEEP/                       SweepDir
  sweep.json  results.csv  results.parquet  analysis.json  report.html  references.json
  sweep.history.jsonl        specs of earlier invocations that sweep.json replaced
  runs/<run-id>/             RunDir of each configuration
  base/<model-slug>/eval/    EvalDir of each base model (the reference)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, overload

from evilspectra.artefacts.io import dir_lock, load_record, read_json, write_dir, write_record
from evilspectra.artefacts.records import AuditReport, ErrorRecord, EvalSummary, Manifest, SamplesMeta
from evilspectra.errors import AdapterError, ConfigError

# ------------------------------------------------------------------------------- file names

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
SPECTRA = "spectra.csv"
SPECTRA_PNG = "spectra.png"  # `evilspectra spectra` plot (beside the spectra table)
EVAL = "eval"
ERROR = "error.json"
AUDIT = "audit"
# what `train --report-to` trackers write inside RUN (wandb's own folder; mlflow's file store)
TENSORBOARD, WANDB, MLRUNS = "tensorboard", "wandb", "mlruns"
TRACKER_DIRS = (TENSORBOARD, WANDB, MLRUNS)
# inside an EvalDir
SAMPLES, SAMPLES_META, ANSWERS, SUMMARY, JUDGE_CACHE = (
    "samples.jsonl",
    "samples.meta.json",
    "answers.jsonl",
    "summary.json",
    "judge_cache.sqlite",
)
# inside a SweepDir
SWEEP_HISTORY = "sweep.history.jsonl"  # the specs of earlier invocations that sweep.json replaced, one a line
SWEEP_SPEC, RESULTS, RESULTS_PARQUET, ANALYSIS, REPORT, REFERENCES = (
    "sweep.json",
    "results.csv",
    "results.parquet",
    "analysis.json",
    "report.html",
    "references.json",
)
RUNS, BASE = "runs", "base"
# inside an audit directory
AUDIT_MD, AUDIT_HTML, AUDIT_JSON, AUDIT_PNG = "audit.md", "audit.html", "audit.json", "audit_spectra.png"
# inside a PEFT adapter directory
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_CARD = "README.md"  # the adapter's model card, where the Hugging Face Hub looks for it

FINAL: Final = "final"  # label of the final adapter (RUN/adapter) and of its evaluation
FINISHED = {"done", "diverged"}  # runs a resumed sweep does not redo
STEP_DIR = re.compile(r"^step-(\d+)$")  # RUN/checkpoints/step-NNNNNN; `.step-N.tmp` are half-written
INSPECT_LOG = "inspect.eval"  # `eval --format inspect`: the evaluation as an Inspect AI log
# `rejudge`: RUN/eval/<label><REJUDGE_SEP><judge label>/ re-judges RUN/eval/<label>/'s samples
REJUDGE_SEP = "--"
JUDGE_RESULTS = "results_by_judge.csv"  # SWEEP/: results rows of every judge, `eval_label` column
AGREEMENT_JSON, AGREEMENT_PNG = "agreement.json", "agreement.png"  # `judges compare --out DIR`
EVAL_FILES = (SAMPLES, SAMPLES_META, ANSWERS, SUMMARY, JUDGE_CACHE, INSPECT_LOG)


def plain_name(name: str, what: str) -> str:
    """`name` when it names one entry inside a folder; a label such as `../x`, `/tmp/x`, `` or `.`
    would write outside the run (or into RUN/eval/ itself): ConfigError."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"--{what}: expected a plain folder name (no '/' or '\\', not '', '.' or '..'), got {name!r}")
    return name


class _Dir:
    """A directory of the contract: `.path`, usable wherever a path is (os.fspath)."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)


class _Child:
    """A file or folder of a directory by its contract name, read like a property: `RunDir(p).metrics`
    is p / METRICS (a typed one, where `property(lambda ...)` reads as Any to the type checker)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[_Dir]) -> _Child: ...
    @overload
    def __get__(self, obj: _Dir, owner: type[_Dir]) -> Path: ...
    def __get__(self, obj: _Dir | None, owner: type[_Dir]) -> Path | _Child:
        return self if obj is None else obj.path / self.name


# ---------------------------------------------------------------------------------- adapters


@dataclass(frozen=True, init=False)
class AdapterDir(_Dir):
    """A PEFT adapter folder (RUN/adapter, RUN/checkpoints/step-N, or one made elsewhere)."""

    path: Path

    config = _Child(ADAPTER_CONFIG)
    weights = _Child(ADAPTER_WEIGHTS)
    card = _Child(ADAPTER_CARD)

    def read_config(self) -> dict[str, Any]:
        """PEFT's adapter config; AdapterError naming the file when missing or not JSON."""
        if not self.config.is_file():
            raise AdapterError(f"{self.path}: not a PEFT adapter directory (no {ADAPTER_CONFIG})")
        try:
            config = json.loads(self.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AdapterError(f"{self.config}: not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise AdapterError(f"{self.config}: expected a JSON object (PEFT's adapter config)")
        return config

    def base_model(self) -> str | None:
        """The base model PEFT recorded (base_model_name_or_path), None when absent or unreadable."""
        config = read_json(self.config)
        base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
        return base if isinstance(base, str) and base else None


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def resolve_adapter(adapter: str | Path) -> Path:
    """An adapter directory, or a run directory meaning RUN/adapter (RUN/checkpoints/step-N is itself one)."""
    path = Path(adapter)
    if is_adapter(path):
        return path
    if is_adapter(path / ADAPTER):
        return path / ADAPTER
    raise AdapterError(
        f"{path}: not a PEFT adapter directory nor a run directory with {ADAPTER}/ "
        f"(expected {ADAPTER_CONFIG} in it or in its {ADAPTER}/ folder)"
    )


def adapter_digest(adapter_dir: Path) -> str:
    """sha256 over the adapter's files (config + weights), by content, not path."""
    digest = hashlib.sha256()
    for path in sorted(Path(adapter_dir).glob("adapter_*")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def save_adapter(model: Any, final_dir: Path) -> Path:
    """Save a PEFT model's adapter to a temp dir, then move it into place (never half-written)."""
    return write_dir(final_dir, model.save_pretrained)


# ----------------------------------------------------------------------------- directories


@dataclass(frozen=True, init=False)
class EvalDir(_Dir):
    """One evaluation's files: samples, their fingerprint, judge cache, answers, summary."""

    path: Path

    samples = _Child(SAMPLES)
    samples_meta = _Child(SAMPLES_META)
    answers = _Child(ANSWERS)
    summary = _Child(SUMMARY)
    judge_cache = _Child(JUDGE_CACHE)
    inspect_log = _Child(INSPECT_LOG)

    def read_summary(self) -> EvalSummary | None:
        return load_record(EvalSummary, self.summary)

    def write_summary(self, summary: EvalSummary | dict[str, Any]) -> None:
        """Write the summary record (a dict is validated into one first: no wrong field is written)."""
        write_record(self.summary, EvalSummary.model_validate(summary))

    def read_samples_meta(self) -> SamplesMeta | None:
        return load_record(SamplesMeta, self.samples_meta)

    def write_samples_meta(self, meta: SamplesMeta) -> None:
        write_record(self.samples_meta, meta)

    def read_samples(self) -> list[dict[str, Any]]:
        """The sampled answers, one per line (OSError when missing, JSONDecodeError when torn)."""
        return [json.loads(line) for line in self.samples.read_text(encoding="utf-8").splitlines()]

    def read_answers(self) -> list[dict[str, Any]]:
        """The answer records, one per line (OSError when missing, JSONDecodeError when torn)."""
        return [json.loads(line) for line in self.answers.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True, init=False)
class AuditDir(_Dir):
    """`evilspectra audit` output: the report in three forms, the plot, the spectra, the probe."""

    path: Path

    markdown = _Child(AUDIT_MD)
    html = _Child(AUDIT_HTML)
    report = _Child(AUDIT_JSON)
    plot = _Child(AUDIT_PNG)
    spectra = _Child(SPECTRA)
    eval_root = _Child(EVAL)

    def read_report(self) -> AuditReport | None:
        return load_record(AuditReport, self.report)

    def write_report(self, report: AuditReport) -> None:
        write_record(self.report, report)


@dataclass(frozen=True, init=False)
class RunDir(_Dir):
    """Paths and readers of one run directory (layout in the module docstring)."""

    path: Path

    manifest_path = _Child(MANIFEST)
    metrics = _Child(METRICS)
    checkpoints = _Child(CHECKPOINTS)
    adapter = _Child(ADAPTER)
    spectra = _Child(SPECTRA)
    error = _Child(ERROR)
    eval_root = _Child(EVAL)
    audit_dir = _Child(AUDIT)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def eval_dir(self, label: str = FINAL) -> EvalDir:
        return EvalDir(self.eval_root / plain_name(label, "label"))

    def audit(self) -> AuditDir:
        return AuditDir(self.audit_dir)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return dir_lock(self.path)

    def read_manifest(self) -> Manifest | None:
        """The manifest record; None when absent or torn (an unfinished run); DataError when wrong."""
        return load_record(Manifest, self.manifest_path)

    def write_manifest(self, manifest: Manifest) -> None:
        write_record(self.manifest_path, manifest)

    def read_error(self) -> ErrorRecord | None:
        return load_record(ErrorRecord, self.error)

    def write_error(self, error: ErrorRecord) -> None:
        write_record(self.error, error)

    def is_run(self) -> bool:
        return self.manifest_path.is_file()

    def adapters(self) -> list[tuple[str, int | None, Path]]:
        return run_adapters(self.path)

    def eval_labels(self) -> list[str]:
        """Labels with an evaluation summary (after migrating a legacy RUN/eval/summary.json)."""
        migrate_legacy_eval(self)
        if not self.eval_root.is_dir():
            return []
        return sorted(d.name for d in self.eval_root.iterdir() if (d / SUMMARY).is_file())

    def fresh(self) -> None:
        """An unfinished run restarts from scratch: drop its metrics, checkpoints, adapter, spectra,
        evals and experiment trackers' output."""
        self.path.mkdir(parents=True, exist_ok=True)
        for path in (
            self.metrics,
            self.checkpoints,
            self.adapter,
            self.spectra,
            self.eval_root,
            *map(self.path.joinpath, TRACKER_DIRS),
        ):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def migrate_legacy_eval(run: RunDir) -> bool:
    """Move an evaluation written by evilspectra <= 0.1 (`eval RUN` -> RUN/eval/summary.json) to
    RUN/eval/final/, the layout every stage reads; says so on stderr. True when something moved."""
    legacy, target = run.eval_root, run.eval_dir(FINAL).path
    if not (legacy / SUMMARY).is_file() or (target / SUMMARY).exists():
        return False
    target.mkdir(parents=True, exist_ok=True)
    for name in EVAL_FILES:
        if (legacy / name).exists():
            os.replace(legacy / name, target / name)
    print(f"note: moved the evaluation in {legacy}/ (old layout) to {target}/", file=sys.stderr)
    return True


@dataclass(frozen=True, init=False)
class SweepDir(_Dir):
    """Paths of a sweep directory (layout in the module docstring)."""

    path: Path

    spec = _Child(SWEEP_SPEC)
    spec_history = _Child(SWEEP_HISTORY)
    results = _Child(RESULTS)
    results_parquet = _Child(RESULTS_PARQUET)
    analysis = _Child(ANALYSIS)
    report = _Child(REPORT)
    references = _Child(REFERENCES)
    runs_root = _Child(RUNS)

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs_root / run_id)

    def read_spec(self) -> dict[str, Any]:
        """sweep.json as written (the SweepSpec dumped, judge URLs redacted); {} for runs analysed by
        hand. A plain dict: a spec written by an earlier release may not validate under today's."""
        return read_json(self.spec) or {}

    def analysis_for(self, judge_label: str) -> Path:
        """The analysis of the sweep's re-judged evaluations (`rejudge --label`): analysis.<label>.json."""
        return self.path / f"{Path(ANALYSIS).stem}.{plain_name(judge_label, 'judge-label')}{Path(ANALYSIS).suffix}"

    def base_eval(self, model: str) -> EvalDir:
        return EvalDir(self.path / BASE / model.strip("/").replace("/", "__") / EVAL)

    def base_evals(self) -> list[tuple[str, EvalDir]]:
        """(model slug, EvalDir) of every base-model evaluation with a summary."""
        return [(p.parent.parent.name, EvalDir(p.parent)) for p in sorted(self.path.glob(f"{BASE}/*/{EVAL}/{SUMMARY}"))]


# ------------------------------------------------------------------------------- run readers


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """RunDir(run_dir).read_manifest() as a dict of what the file holds (the name and type of
    earlier releases, kept for their callers; new code reads the record)."""
    manifest = RunDir(run_dir).read_manifest()
    return None if manifest is None else manifest.model_dump(mode="json", by_alias=True, exclude_unset=True)


def run_adapters(run_dir: str | Path) -> list[tuple[str, int | None, Path]]:
    """(label, step, adapter dir) of a run: RUN/checkpoints/step-N/ in step order, then `final`.

    The final adapter's step is the manifest's `steps_done`, else the largest checkpoint step.
    Temp dirs of a checkpoint being written are never listed.
    """
    run = RunDir(run_dir)
    checkpoints: list[tuple[str, int, Path]] = []
    if run.checkpoints.is_dir():
        for d in run.checkpoints.iterdir():
            m = STEP_DIR.match(d.name)
            if m and d.is_dir():
                checkpoints.append((d.name, int(m.group(1)), d))
    checkpoints.sort(key=lambda t: t[1])
    found: list[tuple[str, int | None, Path]] = [*checkpoints]
    if run.adapter.is_dir():
        manifest = run.read_manifest()
        step = manifest.steps_done if manifest is not None else None
        if step is None and checkpoints:
            step = checkpoints[-1][1]
        found.append((FINAL, step, run.adapter))
    return found


def select_adapters(
    run_dir: Path, checkpoints: Literal["final", "all"] | list[int] = FINAL
) -> list[tuple[str, int | None, Path]]:
    """(label, step, adapter dir) to evaluate in a run directory, always ending with the final
    adapter: "final" -> the final adapter only; "all" -> every RUN/checkpoints/step-N too; a list of
    steps -> those checkpoints (each must exist)."""
    listed = run_adapters(run_dir)
    if not listed or listed[-1][0] != FINAL:
        resolve_adapter(run_dir)  # raises the clear "not a run directory" error
    final = listed[-1]
    # checkpoints always have a step (only the final adapter may lack one)
    ckpts = {step: (label, step, path) for label, step, path in listed[:-1] if step is not None}
    if isinstance(checkpoints, str):  # "final" | "all"
        return [final] if checkpoints == FINAL else listed
    missing = [s for s in checkpoints if s not in ckpts]
    if missing:
        raise ConfigError(f"{run_dir}: no checkpoint for step(s) {missing}; available: {sorted(ckpts)}")
    return [ckpts[s] for s in sorted(set(checkpoints))] + [final]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a torn last line (process killed mid-write) is skipped."""
    path = RunDir(run_dir).metrics
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
