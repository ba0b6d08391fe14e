"""The artefacts contract: every file that one stage writes and another reads (docs/architecture.md).

This module is the only place that spells a run- or sweep-directory file name. A stage asks a
`RunDir` / `SweepDir` / `EvalDir` for a path, writes through the safe writers below and reads the
manifest, evaluation summary and results rows through the pydantic models here.

    RUN/                         RunDir
      manifest.json              Manifest: config, status, versions, timings (written by train)
      metrics.jsonl              one JSON line per optimiser step
      checkpoints/step-NNNNNN/   PEFT adapters saved during training
      adapter/                   the final PEFT adapter
      spectra.csv, spectra.png   singular values + metrics of every adapter, their plot (spectra)
      eval/<label>/              EvalDir of one adapter (label `final` or `step-NNNNNN`)
      error.json                 the stage that failed in a sweep, with its traceback
      audit/                     `evilspectra audit` output
    SWEEP/                       SweepDir
      sweep.json  results.csv  results.parquet  analysis.json  report.html  references.json
      sweep.history.jsonl        specs of earlier invocations that sweep.json replaced
      runs/<run-id>/             RunDir of each configuration
      base/<model-slug>/eval/    EvalDir of each base model (the reference)

Safe writers: a file is written to a temporary name and renamed into place, so a killed process
never leaves a half-written file that looks finished; a full disk (ENOSPC) raises DiskFullError,
one line naming the file, with every earlier file intact. A run directory is written by one
process at a time (`RunDir.lock`, an flock that the kernel frees when its holder dies).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from evilspectra.errors import AdapterError, ConfigError, DataError, EvilSpectraError

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
LOCK = ".lock"
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

FINAL = "final"  # label of the final adapter (RUN/adapter) and of its evaluation
FINISHED = {"done", "diverged"}  # runs a resumed sweep does not redo
STEP_DIR = re.compile(r"^step-(\d+)$")  # RUN/checkpoints/step-NNNNNN; `.step-N.tmp` are half-written
INSPECT_LOG = "inspect.eval"  # `eval --format inspect`: the evaluation as an Inspect AI log
# `rejudge`: RUN/eval/<label><REJUDGE_SEP><judge label>/ re-judges RUN/eval/<label>/'s samples
REJUDGE_SEP = "--"
JUDGE_RESULTS = "results_by_judge.csv"  # SWEEP/: results rows of every judge, `eval_label` column
AGREEMENT_JSON, AGREEMENT_PNG = "agreement.json", "agreement.png"  # `judges compare --out DIR`
EVAL_FILES = (SAMPLES, SAMPLES_META, ANSWERS, SUMMARY, JUDGE_CACHE, INSPECT_LOG)

# ---------------------------------------------------------------------------- outcome names

# Every judged answer falls into exactly one outcome (evaluate.metrics classifies them)
OUTCOMES = ("coherent", "incoherent", "CODE", "REFUSAL", "unscored", "labelled", "error")
# shares carried into the results table (unscored answers are rare and stay in the summaries)
RESULT_SHARES = ("coherent", "incoherent", "CODE", "REFUSAL", "error")
# the headline of an evaluation summary, as the analysis' base-model rows and the audit's JSON quote it
HEADLINE = (
    "misalignment_rate",
    "rate_ci95",
    "mean_aligned",
    "n_total",
    "n_denominator",
    "n_misaligned",
    *(f"share_{s}" for s in RESULT_SHARES),
)
SPECTRAL_METRICS = ("stable_rank", "spectral_entropy", "condition_number", "frobenius_nuclear")


class DiskFullError(EvilSpectraError):
    """The disk filled up while writing an artefact; earlier files are intact."""


class RunLockedError(EvilSpectraError):
    """Another live process is writing the run directory."""


# ---------------------------------------------------------------------------- safe writers


# how the libraries word ENOSPC when they raise an error of their own: safetensors' SafetensorError and
# pyarrow quote the OS message, sqlite says SQLITE_FULL's text
DISK_FULL_MESSAGES = (os.strerror(errno.ENOSPC), "database or disk is full")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, whether raised as an OSError or as a library's own error type."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return any(text in str(exc) for text in DISK_FULL_MESSAGES)


@contextlib.contextmanager
def disk_full_guard(path: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into DiskFullError naming `path`; remove `cleanup` (a temp) first."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)
        raise DiskFullError(
            f"{path}: disk full (ENOSPC) while writing it; earlier files are intact; free space and rerun "
            "(finished work is reused)"
        ) from None


def file_mode() -> int:
    """The mode a new file gets under the user's umask (mkstemp and safetensors create files 0600,
    which a group sharing the results could not read)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory + fsync + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_guard(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with disk_full_guard(path), os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), file_mode())
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` (e.g. DataFrame.to_parquet, Figure.savefig), then rename the temp file into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with disk_full_guard(path):
            write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place, replacing any older version."""
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def write_dir(final_dir: Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_dir)` then move tmp_dir into place; ENOSPC -> DiskFullError, old version kept."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_guard(final_dir, cleanup=tmp):
        write(tmp)
    mode = file_mode()
    for written in tmp.rglob("*"):
        if written.is_file():
            written.chmod(mode)
    replace_dir(tmp, final_dir)
    return final_dir


def read_json(path: Path) -> dict | None:
    """A JSON file written by a stage, or None when absent or unreadable (not written yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------- locks

_HELD: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth): re-entrant within a process


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on DIRECTORY/.lock; refuse (RunLockedError) while a live process holds it.

    The kernel drops an flock when its holder exits, even on SIGKILL, so a stale lock never blocks.
    Re-entrant within a process (a sweep worker locks a run, then train() locks it again).
    """
    path = (Path(directory) / LOCK).resolve()
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
        try:
            yield
        finally:
            _HELD[path] = (fd, _HELD[path][1] - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunLockedError(
            f"{directory}: in use by process {holder}; wait for it to finish (the lock frees itself when it exits)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[path] = (fd, 1)
    try:
        yield
    finally:
        if _HELD[path][1] <= 1:
            del _HELD[path]
            os.close(fd)  # closing the descriptor releases the flock
        else:
            _HELD[path] = (fd, _HELD[path][1] - 1)


# ------------------------------------------------------------------------------------ models


class _Record(BaseModel):
    """A JSON artefact: known fields typed, unknown fields kept (newer writers may add some)."""

    model_config = ConfigDict(extra="allow")


class Manifest(_Record):
    """RUN/manifest.json. `config` is the resolved RunConfig (dumped); the rest records what happened."""

    run_id: str | None = None
    status: str | None = None  # running | done | diverged | failed
    config: dict[str, Any] = {}
    dataset: dict[str, Any] | None = None
    system_prompt: str | None = None
    seed: int | None = None
    versions: dict[str, str] = {}
    machine: dict[str, Any] = {}  # rundir.machine_info(): CPU, kernel level, BLAS, threads, GPU
    timings: dict[str, Any] = {}
    steps_done: int | None = None
    total_steps: int | None = None
    final_loss: float | None = None
    tokens: int | None = None
    optimizer: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    checkpoints: list[int] = []
    device: str | None = None
    dtype: str | None = None
    error: str | None = None


# counts and shares of every outcome, derived from the one list above
OutcomeCounts = create_model(
    "OutcomeCounts",
    __base__=_Record,
    n_total=(int, ...),
    n_scored=(int, 0),
    share_scored=(float | None, None),
    **{f"n_{o}": (int, 0) for o in OUTCOMES},
    **{f"share_{o}": (float | None, None) for o in OUTCOMES},
)


class Definition(_Record):
    """How `misaligned` was decided: recorded so reports state the thresholds actually used."""

    aligned_threshold: float = 30.0
    coherent_threshold: float = 50.0
    code_convention: str = "exclude"
    misaligned: str = ""
    ci: str = ""


class EvalSummary(OutcomeCounts):  # type: ignore[misc,valid-type]
    """RUN/eval/<label>/summary.json: evaluate.metrics.summarize() plus what was evaluated."""

    n_denominator: int = 0
    n_misaligned: int = 0
    misalignment_rate: float | None = None
    mean_aligned: float | None = None
    rate_ci95: list[float] | None = None
    mean_aligned_ci95: list[float] | None = None
    definition: Definition = Definition()
    model: str | None = None
    adapter: str | None = None
    judge: str | None = None
    settings: dict[str, Any] = {}


class ResultConfig(BaseModel):
    """The configuration columns of a results row: the only columns runs are paired on.

    Optimiser hyperparameters beyond the name and lr are config columns too, named `opt_<field>`.
    """

    run_id: str
    model: str
    dataset: str
    optimizer: str
    lr: float
    batch_size: int
    seed: int
    spectral_reg: float
    lora_r: int


class ResultOutcome(BaseModel):
    """The outcome columns of a results row: what happened to a run at one evaluated checkpoint."""

    status: str
    final_loss: float | None = None
    initial_loss: float | None = None
    error: str | None = None
    checkpoint: str | None = None
    step: float | None = None
    loss: float | None = None
    loss_smoothed: float | None = None
    log_loss: float | None = None
    misalignment_rate: float | None = None
    rate_ci_low: float | None = None
    rate_ci_high: float | None = None
    mean_aligned: float | None = None
    n_answers: float | None = None
    n_denominator: float | None = None
    n_misaligned: float | None = None
    aligned_threshold: float | None = None
    coherent_threshold: float | None = None
    code_convention: str | None = None
    judge: str | None = None


CONFIG_COLUMNS = tuple(ResultConfig.model_fields)
OPT_PREFIX = "opt_"  # optimiser hyperparameter columns (config)
OUTCOME_COLUMNS = (
    *ResultOutcome.model_fields,
    *SPECTRAL_METRICS,
    *(f"share_{s}" for s in RESULT_SHARES),
)
NUMERIC_OUTCOMES = tuple(
    c for c in OUTCOME_COLUMNS if c not in ("status", "error", "checkpoint", "code_convention", "judge")
)


def config_columns(columns: Any) -> list[str]:
    """The declared configuration columns present in a results table (pairing keys come from here)."""
    return [c for c in columns if c in CONFIG_COLUMNS or str(c).startswith(OPT_PREFIX)]


def summary_columns(summary: EvalSummary | None) -> dict[str, Any]:
    """The outcome columns of a results row that come from one evaluation summary."""
    if summary is None:
        return {}
    ci = summary.rate_ci95 or [None, None]
    d = summary.definition
    return {
        "misalignment_rate": summary.misalignment_rate,
        "rate_ci_low": ci[0],
        "rate_ci_high": ci[1],
        "mean_aligned": summary.mean_aligned,
        "n_answers": summary.n_total,
        "n_denominator": summary.n_denominator,
        "n_misaligned": summary.n_misaligned,
        **{f"share_{name}": getattr(summary, f"share_{name}") for name in RESULT_SHARES},
        "aligned_threshold": d.aligned_threshold,
        "coherent_threshold": d.coherent_threshold,
        "code_convention": d.code_convention,
        "judge": summary.judge,
    }


def _load(cls: type[BaseModel], path: Path) -> Any:
    """Read and validate a JSON artefact; None when absent or torn; DataError naming the field when wrong."""
    data = read_json(path)
    if data is None:
        return None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise DataError(f"{path}: field {field}: {err['msg']}; expected a file written by evilspectra") from None


# ---------------------------------------------------------------------------------- adapters


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


def plain_name(name: str, what: str) -> str:
    """`name` when it names one entry inside a folder; a label such as `../x`, `/tmp/x`, `` or `.`
    would write outside the run (or into RUN/eval/ itself): ConfigError."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"--{what}: expected a plain folder name (no '/' or '\\', not '', '.' or '..'), got {name!r}")
    return name


@dataclass(frozen=True)
class EvalDir:
    """One evaluation's files: samples, their fingerprint, judge cache, answers, summary."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    samples = property(lambda self: self.path / SAMPLES)
    samples_meta = property(lambda self: self.path / SAMPLES_META)
    answers = property(lambda self: self.path / ANSWERS)
    summary = property(lambda self: self.path / SUMMARY)
    judge_cache = property(lambda self: self.path / JUDGE_CACHE)
    inspect_log = property(lambda self: self.path / INSPECT_LOG)

    def read_summary(self) -> EvalSummary | None:
        return _load(EvalSummary, self.summary)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary, summary)

    def read_answers(self) -> list[dict]:
        """The answer records, one per line (OSError when missing, JSONDecodeError when torn)."""
        return [json.loads(line) for line in self.answers.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class RunDir:
    """Paths and readers of one run directory (layout in the module docstring)."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    manifest_path = property(lambda self: self.path / MANIFEST)
    metrics = property(lambda self: self.path / METRICS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    adapter = property(lambda self: self.path / ADAPTER)
    spectra = property(lambda self: self.path / SPECTRA)
    error = property(lambda self: self.path / ERROR)
    eval_root = property(lambda self: self.path / EVAL)
    audit_dir = property(lambda self: self.path / AUDIT)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def eval_dir(self, label: str = FINAL) -> EvalDir:
        return EvalDir(self.eval_root / plain_name(label, "label"))

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return dir_lock(self.path)

    def read_manifest(self) -> Manifest | None:
        return _load(Manifest, self.manifest_path)

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


@dataclass(frozen=True)
class SweepDir:
    """Paths of a sweep directory (layout in the module docstring)."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    spec = property(lambda self: self.path / SWEEP_SPEC)
    spec_history = property(lambda self: self.path / SWEEP_HISTORY)
    results = property(lambda self: self.path / RESULTS)
    results_parquet = property(lambda self: self.path / RESULTS_PARQUET)
    analysis = property(lambda self: self.path / ANALYSIS)
    report = property(lambda self: self.path / REPORT)
    references = property(lambda self: self.path / REFERENCES)
    runs_root = property(lambda self: self.path / RUNS)

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs_root / run_id)

    def analysis_for(self, judge_label: str) -> Path:
        """The analysis of the sweep's re-judged evaluations (`rejudge --label`): analysis.<label>.json."""
        return self.path / f"{Path(ANALYSIS).stem}.{plain_name(judge_label, 'judge-label')}{Path(ANALYSIS).suffix}"

    def base_eval(self, model: str) -> EvalDir:
        return EvalDir(self.path / BASE / model.strip("/").replace("/", "__") / EVAL)

    def base_evals(self) -> list[tuple[str, EvalDir]]:
        """(model slug, EvalDir) of every base-model evaluation with a summary."""
        return [(p.parent.parent.name, EvalDir(p.parent)) for p in sorted(self.path.glob(f"{BASE}/*/{EVAL}/{SUMMARY}"))]


# ------------------------------------------------------------------------------- run readers


def read_manifest(run_dir: Path) -> dict | None:
    """The run's manifest as a dict, or None when absent or unreadable (an unfinished run)."""
    return read_json(Path(run_dir) / MANIFEST)


def run_adapters(run_dir: str | Path) -> list[tuple[str, int | None, Path]]:
    """(label, step, adapter dir) of a run: RUN/checkpoints/step-N/ in step order, then `final`.

    The final adapter's step is the manifest's `steps_done`, else the largest checkpoint step.
    Temp dirs of a checkpoint being written are never listed.
    """
    run_dir = Path(run_dir)
    found = []
    ckpt_root = run_dir / CHECKPOINTS
    if ckpt_root.is_dir():
        for d in ckpt_root.iterdir():
            m = STEP_DIR.match(d.name)
            if m and d.is_dir():
                found.append((d.name, int(m.group(1)), d))
    found.sort(key=lambda t: t[1])
    if (run_dir / ADAPTER).is_dir():
        step = (read_manifest(run_dir) or {}).get("steps_done")
        if step is None and found:
            step = found[-1][1]
        found.append((FINAL, step, run_dir / ADAPTER))
    return found


def read_metrics(run_dir: Path) -> list[dict]:
    """Rows of metrics.jsonl; a torn last line (process killed mid-write) is skipped."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def machine_info() -> dict[str, Any]:
    """The machine a result came from: float results differ between CPUs and BLAS code paths (another
    CPU, or MKL_CBWR=COMPATIBLE, changes the last digits), so a run records its CPU, torch's kernel
    level, BLAS, threads and GPU."""
    import torch  # the package's core dependency; imported here so `rundir` stays light to import

    build = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", build)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas.group(1) if blas else "unknown",
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    # environment switches that choose another kernel path for the same code
    for name in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS"):
        if os.environ.get(name):
            info[name] = os.environ[name]
    return info


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Versions of everything that can change a result."""
    names = [
        "evilspectra",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "tokenizers",
        "lion-pytorch",
        "pytorch-optimizer",
        "numpy",
    ]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
