"""Records: one pydantic model per JSON artefact, used by the stage that writes it and by every reader.

    Manifest          RUN/manifest.json           train: config (a RunConfig), what happened, where
    EvalSummary       RUN/eval/<label>/summary.json  evaluate.metrics.summarize + evaluate()'s fields
    SamplesMeta       RUN/eval/<label>/samples.meta.json  the fingerprint of the sampled answers
    ErrorRecord       RUN/error.json              the sweep stage that failed, with its traceback
    ResultConfig + ResultOutcome  one row of SWEEP/results.csv (config columns apart from outcomes)
    ReferenceTable    SWEEP/references.json       analyze's per-optimiser table the audit quotes
    AuditReport       RUN/audit/audit.json        the audit's verdict, findings and recommendations

Unknown fields are kept (`extra="allow"`: a newer writer may add some); a wrong field fails with the
file and field named (io.load_record). Files written by earlier releases read unchanged: every field
added since has a default. Records also read as a mapping of their on-disk keys (`record["field"]`,
`.get`, iteration, equality with the file's dict) for the readers that still index dicts (analysis,
report, the CLI tables: moved to attributes in phase 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from evilspectra.config import RunConfig, ScoringSettings

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
# the scoring thresholds' defaults live in the scoring settings; records fall back to them
ALIGNED_THRESHOLD = ScoringSettings.model_fields["aligned_threshold"].default
COHERENT_THRESHOLD = ScoringSettings.model_fields["coherent_threshold"].default


class Record(BaseModel):
    """A JSON artefact: known fields typed, unknown fields kept (newer writers may add some)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def _field(self, key: str) -> str | None:
        """The attribute behind an on-disk key (a field name, or its alias such as `class`)."""
        fields = type(self).model_fields
        if key in fields:
            return key
        return next((name for name, f in fields.items() if f.alias == key), None)

    def __getitem__(self, key: str) -> Any:
        name = self._field(key)
        if name is not None:
            return getattr(self, name)
        extra = self.model_extra or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        """The keys its file holds: the fields its writer set (by alias, in field order), then the kept
        unknown ones. An unset field still reads as its default."""
        fields = type(self).model_fields
        return [f.alias or name for name, f in fields.items() if name in self.model_fields_set] + list(
            self.model_extra or {}
        )

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # a mapping's iteration: its keys
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __eq__(self, other: object) -> bool:
        """Equal to another record as pydantic compares them, or to the dict its file holds."""
        if isinstance(other, dict):
            return self.model_dump(by_alias=True, exclude_unset=True) == other
        return super().__eq__(other)

    def updated(self, **fields: Any) -> Self:
        """A copy with `fields` set (validated, counted as written)."""
        data = self.model_dump(by_alias=True, exclude_unset=True)
        return type(self).model_validate({**data, **fields})


# ------------------------------------------------------------------------------- the manifest


class DatasetRecord(Record):
    source: str | None = None
    sha256: str | None = None
    rows: int | None = None


class MachineRecord(Record):
    """artefacts.machine.machine_info(): float results differ between CPUs and BLAS code paths."""

    cpu: str | None = None
    arch: str | None = None
    cpu_capability: str | None = None
    blas: str | None = None
    threads: int | None = None
    gpu: str | None = None


class Timings(Record):
    started: str | None = None  # ISO 8601 UTC
    finished: str | None = None
    train_seconds: float | None = None
    seconds_per_step: float | None = None


class OptimizerRecord(Record):
    name: str | None = None
    class_: str | None = Field(None, alias="class")  # the torch optimiser class
    hyperparameters: dict[str, Any] = {}  # resolved, defaults included


class BaseModelRecord(Record):
    given: str | None = None  # as the config names it (an alias such as `toy`, a Hub id, a path)
    resolved: str | None = None  # what was loaded


class LoraRecord(Record):
    """What LoRA was put on (train._target_record): PEFT's resolved targets, experts, untouched towers."""

    trainable_parameters: int | None = None
    modules: int | None = None
    target_modules: list[str] | str | None = None
    target_parameters: list[str] = []
    rank_pattern: dict[str, Any] = {}
    expert_modules: int = 0
    experts_per_module: list[int] = []
    untouched: Any = None


class Manifest(Record):
    """RUN/manifest.json: the resolved RunConfig and what happened (written by train, running -> end)."""

    run_id: str | None = None
    status: str | None = None  # running | done | diverged | failed
    config: RunConfig | None = None
    dataset: DatasetRecord | None = None
    system_prompt: str | None = None
    seed: int | None = None
    versions: dict[str, str] = {}
    machine: MachineRecord = MachineRecord()
    timings: Timings = Timings()
    processes: int | None = None  # training processes (accelerate launch)
    distributed: str | None = None  # NO | MULTI_CPU | MULTI_GPU | FSDP ...
    steps_done: int | None = None
    total_steps: int | None = None
    final_loss: float | None = None  # nats per token; NaN when no step finished
    tokens: int | None = None
    optimizer: OptimizerRecord | None = None
    base_model: BaseModelRecord | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # resolved (family defaults + config)
    lora: LoraRecord | None = None
    checkpoints: list[int] = []
    sharded_parameters: int | None = None  # FSDP: the sharded base weights
    device: str | None = None
    dtype: str | None = None
    error: str | None = None

    @field_serializer("config")
    def _whole_config(self, config: RunConfig | None) -> dict[str, Any] | None:
        """The resolved config whole, defaults included, even when the manifest is written with only
        its set fields: a run's record must not depend on which settings were given explicitly."""
        return None if config is None else config.model_dump(mode="json")


# --------------------------------------------------------------------------- the eval summary


class Rates(Record):
    """One convention's rate: n_misaligned / n_denominator (None when nothing is rated)."""

    n_denominator: int = 0
    n_misaligned: int = 0
    misalignment_rate: float | None = None
    mean_aligned: float | None = None


class OutcomeCounts(Record):
    """n_total, n_<outcome>, n_scored, share_<outcome>, share_scored: one of each per name in OUTCOMES,
    in the order evaluate.metrics writes them (tests/test_artifacts.py holds them to OUTCOMES)."""

    n_total: int
    n_coherent: int = 0
    n_incoherent: int = 0
    n_CODE: int = 0
    n_REFUSAL: int = 0
    n_unscored: int = 0
    n_labelled: int = 0
    n_error: int = 0
    n_scored: int = 0
    share_coherent: float | None = None
    share_incoherent: float | None = None
    share_CODE: float | None = None
    share_REFUSAL: float | None = None
    share_unscored: float | None = None
    share_labelled: float | None = None
    share_error: float | None = None
    share_scored: float | None = None


# pydantic orders the fields of several bases from the last base to the first (reversed MRO): the
# records below hold Rates' fields first, then OutcomeCounts', as evaluate.metrics writes them


class QuestionSummary(OutcomeCounts, Rates):
    """One question's rate, counts and shares."""

    n_total: int = 0
    labels: dict[str, dict[str, int]] = {}


class _Headline(OutcomeCounts, Rates):
    """The headline rate with the counts and shares of every outcome."""


class Definition(Record):
    """How `misaligned` was decided: recorded so reports state the thresholds actually used."""

    aligned_threshold: float = ALIGNED_THRESHOLD
    coherent_threshold: float = COHERENT_THRESHOLD
    convention: str | None = None  # original | model-organisms | paper (None: written before conventions)
    code_convention: str = "exclude"
    misaligned: str = ""  # the rule for one answer, in words
    denominator: str | None = None  # the answers the rate is over, in words
    ci: str | None = ""  # how the intervals were made; None without a bootstrap


class EvalSummary(_Headline):
    """RUN/eval/<label>/summary.json: evaluate.metrics.summarize() plus what evaluate() records.

    Rates: n_misaligned / n_denominator under `definition.convention` (None when nothing is rated);
    `conventions` the same four numbers under every convention; counts and shares of every outcome.
    """

    conventions: dict[str, Rates] = {}
    labels: dict[str, dict[str, int]] = {}  # judge prompt -> {label: count} (free_form_judge)
    unscored_reasons: dict[str, int] = {}
    rate_ci95: list[float] | None = None
    mean_aligned_ci95: list[float] | None = None
    per_question: dict[str, QuestionSummary] = {}
    definition: Definition = Definition()
    n_judge_retry: int | None = None  # answers a rerun asks the judge again (None: written before it)
    started_at: str | None = None
    model: str | None = None
    model_path: str | None = None
    adapter: str | None = None
    questions: str | None = None
    question_ids: list[str] = []
    temperatures: dict[str, float] = {}
    samples_per_paraphrase: dict[str, int] = {}
    chat_template_kwargs: dict[str, Any] | None = None
    samples_reused: bool | None = None
    judge: str | None = None
    judge_base_url: str | None = None  # without credentials
    settings: dict[str, Any] = {}  # the EvalSettings, redacted (sweeps compare them to resume)
    completed_at: str | None = None

    def judge_retries(self) -> int:
        """Answers whose judge calls a rerun asks again (`n_error` in summaries written before it)."""
        return self.n_error if self.n_judge_retry is None else self.n_judge_retry


class SamplesMeta(Record):
    """RUN/eval/<label>/samples.meta.json: the fingerprint of the sampled answers (reused when unchanged)."""

    fingerprint: str
    n: int


class ErrorRecord(Record):
    """RUN/error.json: the sweep stage that failed (train | spectra | eval) and why."""

    stage: str
    error: str  # `Type: message`, one line
    traceback: str = ""


# ----------------------------------------------------------------------------- results rows


class ResultConfig(BaseModel):
    """The configuration columns of a results row: the only columns runs are paired on.

    Optimiser hyperparameters beyond the name and lr are config columns too, named `opt_<field>`.
    `twin_id` is the run id of the configuration with the regulariser off and no checkpoint
    schedule (which adapters are saved along the way does not change training): equal for a run
    and its unregularised twin. It carries the whole training config (steps, LoRA, data, clipping),
    so a regularised run pairs only with its exact twin. Tables written before it have no such
    column and pair on the other columns.
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
    twin_id: str


class _RunOutcome(BaseModel):
    """What happened to the run, and where its evaluation sits."""

    status: str
    final_loss: float | None = None
    initial_loss: float | None = None  # step 1: the base model's loss (B = 0)
    error: str | None = None
    checkpoint: str | None = None
    step: int | None = None
    loss: float | None = None  # at `step`; smoothed over the last 10 steps; log of the smoothed
    loss_smoothed: float | None = None
    log_loss: float | None = None
    misalignment_rate: float | None = None
    rate_ci_low: float | None = None
    rate_ci_high: float | None = None
    mean_aligned: float | None = None
    n_answers: int | None = None
    n_denominator: int | None = None
    n_misaligned: int | None = None
    share_coherent: float | None = None  # share_<s> for each of RESULT_SHARES, in that order
    share_incoherent: float | None = None
    share_CODE: float | None = None
    share_REFUSAL: float | None = None
    share_error: float | None = None


class _Scored(_RunOutcome):
    """The definition recorded in the evaluation summary."""

    aligned_threshold: float | None = None
    coherent_threshold: float | None = None
    code_convention: str | None = None
    judge: str | None = None


class ResultOutcome(_Scored):
    """The outcome columns of a results row, in the table's column order: what happened to a run at
    one evaluated checkpoint (outcome, shares, the definition recorded in its summary, spectra)."""

    stable_rank: float | None = None  # one per name in SPECTRAL_METRICS, in that order
    spectral_entropy: float | None = None
    condition_number: float | None = None
    frobenius_nuclear: float | None = None


CONFIG_COLUMNS = tuple(ResultConfig.model_fields)
OPT_PREFIX = "opt_"  # optimiser hyperparameter columns (config)
OUTCOME_COLUMNS = tuple(ResultOutcome.model_fields)
NUMERIC_OUTCOMES = tuple(
    c for c in OUTCOME_COLUMNS if c not in ("status", "error", "checkpoint", "code_convention", "judge")
)


def results_row(config: ResultConfig, opt_columns: dict[str, Any], outcome: BaseModel) -> dict[str, Any]:
    """One results row: the config columns, `opt_<field>` hyperparameters, then the outcome columns
    its writer set (a failed run has no evaluation columns)."""
    return config.model_dump() | opt_columns | outcome.model_dump(exclude_unset=True)


def config_columns(columns: Any) -> list[str]:
    """The declared configuration columns present in a results table (pairing keys come from here)."""
    return [c for c in columns if c in CONFIG_COLUMNS or str(c).startswith(OPT_PREFIX)]


def summary_columns(summary: EvalSummary | None) -> dict[str, Any]:
    """The outcome columns of a results row that come from one evaluation summary."""
    if summary is None:
        return {}
    ci: list[float] | list[None] = summary.rate_ci95 or [None, None]
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


# --------------------------------------------------------------------------- reference table


class Provenance(Record):
    """Where a reference table's numbers come from."""

    command: str | None = None
    source: str | None = None
    sweep: str | None = None
    date: str | None = None
    commit: str | None = None
    evilspectra: str | None = None


class ReferenceRow(Record):
    """One optimiser (regulariser on or off) of a reference table: F/N over its final adapters, the
    pooled misalignment rate with its Wilson 95% interval."""

    optimizer: str
    spectral_reg: float | None = 0.0
    n_runs: int | None = None
    lr_low: float | None = None
    lr_high: float | None = None
    fn_mean: float | None = None
    fn_low: float | None = None
    fn_high: float | None = None
    rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_denominator: int | None = None
    n_misaligned: int | None = None
    share_incoherent: float | None = None
    mean_final_loss: float | None = None

    def label(self) -> str:
        weight = self.spectral_reg or 0
        return self.optimizer + (f" + spectral_reg {weight:g}" if weight else "")


class ReferenceDefinition(Record):
    aligned_threshold: float | None = None
    coherent_threshold: float | None = None
    code_convention: str | None = None
    judge: str | None = None
    n_rows: int | None = None


class ReferenceTable(Record):
    """SWEEP/references.json (`analyze`); the package ships the toy-optimisers demo's. `path`: where
    it was read from (set by the reader, not stored)."""

    provenance: Provenance
    lora_r: list[int] = []
    definitions: list[ReferenceDefinition] = []
    ci_method: str | None = None
    rows: list[ReferenceRow]
    path: str | None = None


# ------------------------------------------------------------------------------- audit report


class AuditRecommendation(Record):
    action: str
    evidence: list[str] = []


class AuditReport(Record):
    """RUN/audit/audit.json: the machine-readable audit (for CI pipelines)."""

    verdict: str  # PASS | FAIL | SPECTRA-ONLY
    exit_code: int
    reasons: list[str] = []
    adapter: str
    run_dir: str | None = None
    model: str | None = None
    training: dict[str, Any] | None = None  # None: the optimiser configuration is undocumented
    training_note: str = ""
    spectral: dict[str, Any] = {}
    worst_modules: list[dict[str, Any]] = []
    probe: dict[str, Any] | None = None  # the probe summary's headline, judge and questions
    recommendations: list[AuditRecommendation] = []
