"""The artefacts contract (issue 16): one module spells every file name; typed manifest, summary and
results rows; the one evaluation layout (old layout migrated); pairing on declared config columns;
one writer per run directory. (A really full disk: test_nothing_lost.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evilspectra import rundir
from evilspectra.analysis import regulariser_effect
from evilspectra.errors import DataError
from evilspectra.rundir import EvalSummary, RunDir, RunLockedError, SweepDir, dir_lock

SRC = Path(rundir.__file__).parent
FILE_NAMES = [
    v
    for k, v in vars(rundir).items()
    if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z_]+\.[a-z.]+", v) and v != rundir.LOCK
]


def test_file_names_are_spelled_only_in_the_artefacts_module():
    assert {"manifest.json", "summary.json", "results.csv", "spectra.csv", "adapter_config.json"} <= set(FILE_NAMES)
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "artefacts":  # the package that owns the names
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(SRC)}: {name}" for name in FILE_NAMES if name in text]
    assert not offenders, offenders


def test_architecture_doc_describes_the_layout():
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    for name in ("manifest.json", "metrics.jsonl", "eval/<label>/", "summary.json", "results.csv", "references.json"):
        assert name in doc, name
    for path in SRC.rglob("*.py"):
        assert "DESIGN.md" not in path.read_text(), f"{path} points to a design document not in the repository"


# ------------------------------------------------------------------------------------- models


def test_summary_counts_and_shares_come_from_the_one_outcome_list():
    fields = EvalSummary.model_fields
    for outcome in rundir.OUTCOMES:
        assert f"n_{outcome}" in fields and f"share_{outcome}" in fields
    from evilspectra.evaluate.metrics import OUTCOMES

    assert tuple(OUTCOMES) == rundir.OUTCOMES


def test_declared_counts_shares_and_spectra_follow_their_name_lists():
    """The records spell their fields out (so the type checker sees them): in the order of the lists."""
    from evilspectra.artefacts.records import SPECTRAL_METRICS, OutcomeCounts, QuestionSummary, Rates

    counts = ["n_total", *(f"n_{o}" for o in rundir.OUTCOMES), "n_scored"]
    counts += [f"share_{o}" for o in (*rundir.OUTCOMES, "scored")]
    assert list(OutcomeCounts.model_fields) == counts
    assert list(QuestionSummary.model_fields) == [*Rates.model_fields, *counts, "labels"]
    assert list(EvalSummary.model_fields)[: len(Rates.model_fields) + len(counts)] == [*Rates.model_fields, *counts]
    outcome = list(rundir.ResultOutcome.model_fields)
    shares = [f"share_{s}" for s in rundir.RESULT_SHARES]
    assert outcome[outcome.index(shares[0]) :][: len(shares)] == shares
    assert outcome[-len(SPECTRAL_METRICS) :] == list(SPECTRAL_METRICS)


def test_bad_manifest_names_the_file_and_field(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.manifest_path.write_text(json.dumps({"status": "done", "steps_done": "many"}))
    with pytest.raises(DataError, match=r"manifest\.json: field steps_done"):
        run.read_manifest()
    run.manifest_path.write_text("{torn")
    assert run.read_manifest() is None  # a torn file is an unfinished run, not an error


def test_results_columns_are_declared_apart():
    assert set(rundir.CONFIG_COLUMNS).isdisjoint(rundir.OUTCOME_COLUMNS)
    assert {"optimizer", "lr", "seed", "spectral_reg"} <= set(rundir.CONFIG_COLUMNS)
    assert {"error", "status", "misalignment_rate", "aligned_threshold", "stable_rank"} <= set(rundir.OUTCOME_COLUMNS)
    cols = ["run_id", "optimizer", "lr", "opt_betas", "error", "notes", "misalignment_rate"]
    assert rundir.config_columns(cols) == ["run_id", "optimizer", "lr", "opt_betas"]


# rundir's public names in the release before the artefacts package (6c82485): all still import
RUNDIR_NAMES_6C82485 = [
    "MANIFEST",
    "METRICS",
    "CHECKPOINTS",
    "ADAPTER",
    "SPECTRA",
    "SPECTRA_PNG",
    "EVAL",
    "ERROR",
    "AUDIT",
    "LOCK",
    "TENSORBOARD",
    "WANDB",
    "MLRUNS",
    "TRACKER_DIRS",
    "SAMPLES",
    "SAMPLES_META",
    "ANSWERS",
    "SUMMARY",
    "JUDGE_CACHE",
    "SWEEP_HISTORY",
    "SWEEP_SPEC",
    "RESULTS",
    "RESULTS_PARQUET",
    "ANALYSIS",
    "REPORT",
    "REFERENCES",
    "RUNS",
    "BASE",
    "AUDIT_MD",
    "AUDIT_HTML",
    "AUDIT_JSON",
    "AUDIT_PNG",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "ADAPTER_CARD",
    "FINAL",
    "FINISHED",
    "STEP_DIR",
    "INSPECT_LOG",
    "REJUDGE_SEP",
    "JUDGE_RESULTS",
    "AGREEMENT_JSON",
    "AGREEMENT_PNG",
    "EVAL_FILES",
    "OUTCOMES",
    "RESULT_SHARES",
    "HEADLINE",
    "SPECTRAL_METRICS",
    "DiskFullError",
    "RunLockedError",
    "DISK_FULL_MESSAGES",
    "is_disk_full",
    "disk_full_guard",
    "file_mode",
    "atomic_write_text",
    "atomic_write_file",
    "atomic_write_json",
    "replace_dir",
    "write_dir",
    "read_json",
    "dir_lock",
    "Manifest",
    "OutcomeCounts",
    "Definition",
    "EvalSummary",
    "ResultConfig",
    "ResultOutcome",
    "CONFIG_COLUMNS",
    "OPT_PREFIX",
    "OUTCOME_COLUMNS",
    "NUMERIC_OUTCOMES",
    "config_columns",
    "summary_columns",
    "is_adapter",
    "resolve_adapter",
    "adapter_digest",
    "save_adapter",
    "plain_name",
    "EvalDir",
    "RunDir",
    "migrate_legacy_eval",
    "SweepDir",
    "read_manifest",
    "run_adapters",
    "read_metrics",
    "machine_info",
    "library_versions",
]
RELEASE = Path(__file__).parent / "fixtures" / "release_6c82485"  # written by `sweep toy-quick` at 6c82485


def test_rundir_keeps_every_public_name_of_the_last_release():
    assert [name for name in RUNDIR_NAMES_6C82485 if not hasattr(rundir, name)] == []


def test_files_written_by_the_last_release_read_into_their_records(tmp_path):
    """A manifest, summary and samples fingerprint from 6c82485 validate, keep every key, and
    write back byte-equal as JSON (the write side dumps exactly what was read)."""
    run = RunDir(tmp_path / "run")
    evals = run.eval_dir()
    evals.path.mkdir(parents=True)
    for name, dest in (("manifest.json", run.manifest_path), ("summary.json", evals.summary)):
        dest.write_bytes((RELEASE / name).read_bytes())
    evals.samples_meta.write_bytes((RELEASE / "samples.meta.json").read_bytes())
    manifest = run.read_manifest()
    assert manifest.config.optimizer.name == "lion" and manifest.optimizer.class_ == "Lion"
    assert manifest.timings.train_seconds > 0 and manifest.processes == 1 and manifest.base_model.given == "toy"
    assert manifest.model_extra == {}  # every field train writes is declared
    summary = evals.read_summary()
    assert summary.definition.convention == "original" and "coherent" in summary.definition.denominator
    assert summary.model_extra == {} and summary.per_question and summary.conventions["paper"].n_denominator
    assert evals.read_samples_meta().n > 0
    run.write_manifest(manifest)
    evals.write_summary(summary)
    for name, path in (("manifest.json", run.manifest_path), ("summary.json", evals.summary)):
        assert json.loads(path.read_text()) == json.loads((RELEASE / name).read_text()), name
        assert list(json.loads(path.read_text())) == list(json.loads((RELEASE / name).read_text())), name
    assert rundir.read_manifest(run.path) == json.loads((RELEASE / "manifest.json").read_text())


def test_the_shipped_reference_table_reads_into_its_record():
    from evilspectra.artefacts.records import ReferenceTable

    shipped = Path(rundir.__file__).parent / "references" / "toy-optimisers.json"
    table = ReferenceTable.model_validate_json(shipped.read_text())
    assert table.provenance.sweep == "toy-optimisers" and table.lora_r == [32]
    assert {row.optimizer for row in table.rows} >= {"adam", "muon"} and table.model_extra == {}
    assert all(row.model_extra == {} for row in table.rows)


def test_records_answer_dict_style_reads_for_unmoved_readers(tmp_path):
    manifest = rundir.Manifest.model_validate(json.loads((RELEASE / "manifest.json").read_text()))
    assert manifest["optimizer"]["class"] == "Lion" and manifest.get("nothing", 1) == 1
    assert "timings" in manifest and "nothing" not in manifest
    with pytest.raises(KeyError):
        manifest["nothing"]


# ------------------------------------------------------------------------------------- layout


def _legacy_run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.eval_root.mkdir(parents=True)
    run.manifest_path.write_text(json.dumps({"run_id": "abc", "status": "done", "config": {}}))
    (run.eval_root / rundir.SUMMARY).write_text(json.dumps({"n_total": 3}))
    (run.eval_root / rundir.ANSWERS).write_text("{}\n")
    return run


def test_old_eval_layout_is_migrated_with_a_message(tmp_path, capsys):
    run = _legacy_run(tmp_path)
    assert run.eval_labels() == ["final"]
    assert "old layout" in capsys.readouterr().err
    assert run.eval_dir().read_summary().n_total == 3 and run.eval_dir().answers.is_file()
    assert not (run.eval_root / rundir.SUMMARY).exists()
    assert run.eval_labels() == ["final"] and capsys.readouterr().err == ""  # once


def test_sweep_dir_paths(tmp_path):
    sweep = SweepDir(tmp_path)
    assert sweep.run("abc").eval_dir("step-000010").summary == tmp_path / "runs/abc/eval/step-000010/summary.json"
    assert sweep.base_eval("org/model").path == tmp_path / "base/org__model/eval"
    assert Path(sweep.run("abc")) == tmp_path / "runs/abc"


# ------------------------------------------------------------------------------------ pairing


def _pair_table() -> pd.DataFrame:
    row = {
        "run_id": "off",
        "model": "toy",
        "dataset": "toy:insecure",
        "optimizer": "adamw",
        "lr": 3e-4,
        "batch_size": 16,
        "seed": 0,
        "spectral_reg": 0.0,
        "lora_r": 32,
        "status": "done",
        "checkpoint": "final",
        "final_loss": 1.0,
        "mean_aligned": 80.0,
        "misalignment_rate": 0.2,
        "frobenius_nuclear": 0.3,
    }
    return pd.DataFrame([row, row | {"run_id": "on", "spectral_reg": 1.0, "mean_aligned": 90.0}])


def test_unrelated_columns_never_change_regulariser_pairing():
    df = _pair_table()
    reference = regulariser_effect(df)
    assert reference["n_pairs"] == 1 and reference["pairs"][0]["delta_mean_aligned"] == 10.0
    for column, values in {"error": [None, "boom"], "notes": ["a", "b"], "share_unscored": [0.0, 0.5]}.items():
        result = regulariser_effect(df.assign(**{column: values}))
        assert result["n_pairs"] == 1, column
        assert result["pairing_columns"] == reference["pairing_columns"], column
    # a declared config column that differs does separate the runs
    assert regulariser_effect(df.assign(lr=[3e-4, 1e-3]))["n_pairs"] == 0
    assert regulariser_effect(df.assign(opt_betas=["[0.9, 0.99]", "[0.9, 0.95]"]))["n_pairs"] == 0


# ------------------------------------------------------------------------------------- writers

HOLDER = """
import sys, time
from evilspectra.rundir import dir_lock
with dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _hold_lock(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_a_run_dir_has_one_writer_and_the_lock_frees_when_its_holder_dies(tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid}"), dir_lock(run):
            pass
        # the CLI refuses with one line and exit status 2, for train and for eval
        res = subprocess.run(
            [sys.executable, "-m", "evilspectra", "train", "--out", str(run), "--max-steps", "1"],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 2 and f"in use by process {holder.pid}" in res.stderr, res.stderr
        (run / rundir.MANIFEST).write_text(json.dumps({"status": "done", "config": {"model": "toy"}}))
        (run / rundir.ADAPTER).mkdir()
        (run / rundir.ADAPTER / rundir.ADAPTER_CONFIG).write_text("{}")
        res = subprocess.run(
            [sys.executable, "-m", "evilspectra", "eval", str(run), "--samples", "1"], capture_output=True, text=True
        )
        assert res.returncode == 2 and f"in use by process {holder.pid}" in res.stderr, res.stderr
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait()
    with dir_lock(run), dir_lock(run):  # free again, and re-entrant within one process
        assert (run / rundir.LOCK).read_text() == str(os.getpid())


def test_regulariser_pairs_only_with_its_exact_training_twin():
    """Issue 26: a 12-step regularised run next to a 20-step baseline differs in no declared column
    but in its training; `twin_id` (the config with the regulariser off and no checkpoint schedule)
    keeps them apart, while a twin that saved other checkpoints still pairs."""
    from evilspectra.config import RunConfig
    from evilspectra.results import config_row

    base = RunConfig(optimizer={"name": "adamw", "lr": 3e-4}, train={"max_steps": 20, "checkpoints": [10]})
    on = base.model_copy(update={"spectral_reg": base.spectral_reg.model_copy(update={"weight": 1.0})})
    on = RunConfig.model_validate(on.model_dump() | {"train": base.train.model_dump() | {"checkpoints": "none"}})
    short = RunConfig.model_validate(on.model_dump() | {"train": on.train.model_dump() | {"max_steps": 12}})
    outcome = {"status": "done", "checkpoint": "final", "final_loss": 1.0, "misalignment_rate": 0.2}
    outcome |= {"frobenius_nuclear": 0.3}
    rows = [config_row(c) | outcome | {"mean_aligned": m} for c, m in ((base, 80.0), (on, 90.0))]
    assert rows[0]["twin_id"] == rows[1]["twin_id"] != rows[1]["run_id"]
    assert regulariser_effect(pd.DataFrame(rows))["n_pairs"] == 1
    assert "twin_id" in regulariser_effect(pd.DataFrame(rows))["pairing_columns"]
    mismatched = [rows[0], config_row(short) | outcome | {"mean_aligned": 90.0}]
    with pytest.warns(UserWarning, match="no unregularised twin"):
        assert regulariser_effect(pd.DataFrame(mismatched))["n_pairs"] == 0
