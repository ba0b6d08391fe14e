"""The analysis record: SWEEP/analysis.json (and analysis.<label>.json of a re-judgement), `analyze`'s output.

    Analysis      the whole file: what was analysed, by which judge, and every statistic
    PooledRate    one row of per_optimizer / per_optimizer_regularised (answers pooled over final checkpoints)
    Claim         one row of the claims table (evilspectra.claims), with its n and stability check
    JudgeRecord   which judge scored the analysed evaluations

The rows people read (rates, claims) are typed; the statistics' own payloads (regression, fits,
trajectories, matched_loss, ...) stay open mappings: each is documented by the function that
computes it (evilspectra.analysis_*), and a field added there needs no change here. Files written by
earlier releases read unchanged: every field added since has a default (`judge`, a claim's
`judge`, its `n`'s runs and answers). The writer dumps only the fields set, in the order declared
here, which is the order `analyze` builds them in: a file is written byte for byte as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evilspectra.artefacts.io import load_record, write_record
from evilspectra.artefacts.records import Record, ReferenceDefinition


class JudgeRecord(Record):
    label: str | None = None  # the `rejudge --label`; None for the first judgement
    name: str | None = None  # the judge(s) the evaluation summaries record, joined by " + "


class PooledRate(Record):
    """Answers pooled over some final checkpoints (one per run): the rate of the scorable answers
    (n_misaligned / n_denominator) with a Wilson 95% interval on the answers (ci_low, ci_high) and a
    percentile bootstrap over runs (ci_runs_low, ci_runs_high); shares are of all answers."""

    optimizer: str
    spectral_reg: float | None = None  # set on the regularised rows only
    n_runs: int = 0
    n_answers: int = 0
    n_denominator: int = 0
    n_misaligned: int = 0
    rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_runs_low: float | None = None
    ci_runs_high: float | None = None
    mean_aligned: float | None = None  # 0..100, over the denominator
    mean_final_loss: float | None = None  # nats
    # n_<outcome>, share_<outcome> for each of artefacts.records.RESULT_SHARES, in that order
    n_coherent: int = 0
    share_coherent: float | None = None
    n_incoherent: int = 0
    share_incoherent: float | None = None
    n_CODE: int = 0
    share_CODE: float | None = None
    n_REFUSAL: int = 0
    share_REFUSAL: float | None = None
    n_error: int = 0
    share_error: float | None = None


class ClaimCount(Record):
    """What a claim's interval stands on: `units` (seeds, runs, checkpoints or pairs, as its method
    says), and where it read answers, the runs and scorable answers behind it."""

    units: int | None = None
    runs: int | None = None
    answers: int | None = None


class StabilityCheck(Record):
    """evilspectra.stability.check: the verdict without each seed, and over seed resamples."""

    leave_one_seed_out: dict[str, str] = {}  # seed -> verdict
    resample_agreement: float | None = None  # share of resamples giving the row's verdict
    n_resamples: int = 0
    fragile: bool = False
    why: str = ""


class Claim(Record):
    """One claim of the study checked against this sweep (evilspectra.claims documents the rules)."""

    id: str
    claim: str
    paper: str
    quantity: str = ""
    estimate: float | None = None
    ci: list[float | None] | None = None  # 95%; a side None where it is unbounded
    method: str | None = None
    n: ClaimCount = ClaimCount()
    power: float | None = None
    p: float | None = None
    p_holm: float | None = None  # None on exploratory rows
    confirmatory: bool = False
    rule: dict[str, Any] = {}
    verdict: str
    reason: str = ""
    details: dict[str, Any] = {}
    measured_as: str | None = None  # the old name of `quantity`, kept for readers of earlier analyses
    stability: StabilityCheck | None = None
    verdict_unperturbed: str | None = None  # a fragile row's verdict before the stability check
    judge: str | None = None  # the judge whose scores the row's estimate comes from


class Analysis(Record):
    """SWEEP/analysis.json: `analyze`'s statistics of a results table (evilspectra.analysis lists them)."""

    sweep_dir: str  # the sweep directory, or the run directories joined by ", "
    judge: JudgeRecord | None = None  # None in analyses written before they named their judge
    runs: dict[str, int] = {}  # status -> number of runs
    ci_method: str = ""
    definitions: list[ReferenceDefinition] = []
    per_optimizer: list[PooledRate] = []
    spread: dict[str, Any] = {}
    per_optimizer_regularised: list[PooledRate] = []
    regression: dict[str, Any] = {}
    trajectories: dict[str, list[dict[str, Any]]] = {}
    overtake: dict[str, Any] = {}
    spectral_correlations: list[dict[str, Any]] = []
    regulariser: dict[str, Any] = {}
    base_model: list[dict[str, Any]] = []  # the base models' summary headlines (records.HEADLINE)
    run_dirs: dict[str, str] = {}  # run id -> run directory, for runs away from SWEEP/runs/
    fits: dict[str, Any] = {}
    not_estimable: list[dict[str, Any]] = []
    matched_loss: dict[str, Any] = {}
    spectral_fits: dict[str, Any] = {}
    claims: list[Claim] = []

    def judge_name(self) -> str:
        """The judge as the evaluation summaries record it ("?" before analyses named their judge)."""
        return (self.judge.name if self.judge else None) or "?"

    def judge_label(self) -> str | None:
        """The `rejudge --label` of a re-judgement's analysis; None for the first judgement."""
        return self.judge.label if self.judge else None


def read_analysis(path: Path) -> Analysis | None:
    """The analysis file at `path`; None when absent or torn; DataError naming the field when wrong."""
    return load_record(Analysis, path)


def write_analysis(path: Path, analysis: Analysis) -> None:
    """Write the analysis atomically, the fields set in declaration order (io.write_record)."""
    write_record(path, analysis)
