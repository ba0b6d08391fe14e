"""Issues 18 and 26: `train`, `eval` and `sweep --report-to` write tracker logs (offline, inside the run
directory), under one set of names shared with the HF Trainer integration, read back with each
tracker's own reader."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys

import pytest

from evilspectra.integrations.trackers import TRACKER_NAMES, run_name
from evilspectra.rundir import read_metrics
from evilspectra.spectra import aggregate_spectra, run_spectra_frame

SECRET = "sk-test-never-logged-0123456789"


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from evilspectra.cli import main

    monkeypatch.setattr(sys, "argv", ["evilspectra", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out + captured.err


def train_args(model_dir, dataset, out, tracker: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model_dir),
        "--dataset",
        str(dataset),
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--spectral-reg",
        "1",
        "--set",
        "lora.r=4",
        "--set",
        "lora.alpha=8",
        "--set",
        "train.checkpoints=[2,4]",
        "--report-to",
        tracker,
        "--out",
        str(out),
    ]


def no_secret_anywhere(run) -> None:
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_tensorboard_event_files_hold_loss_and_spectra(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'evilspectra[integrations]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run = tmp_path / "run"
    code, out = cli(monkeypatch, capsys, *train_args(tiny_model_dir, tiny_dataset, run, "tensorboard"))
    assert code == 0, out

    scalars: dict[str, dict[int, float]] = {}
    for events in run.joinpath("tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    rows = read_metrics(run)
    for key in ("loss", "lr", "tokens", "reg"):
        assert scalars[TRACKER_NAMES.get(key, key)] == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in rows}, key

    spectra = aggregate_spectra(run_spectra_frame(run))
    assert spectra["step"].tolist() == [2, 4, 6]
    for row in spectra.itertuples():
        for metric in ("frobenius_nuclear", "stable_rank", "spectral_entropy", "condition_number"):
            assert scalars[f"spectra/{metric}"][row.step] == pytest.approx(getattr(row, metric), rel=1e-6)
    no_secret_anywhere(run)


def wandb_history(path) -> dict[int, dict]:
    """{step: logged values} from a W&B offline run file: LevelDB-style 32 KiB blocks of chunks
    (crc32, length, type) after a 7-byte header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf, history = path.read_bytes(), 7, b"", {}
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                history.setdefault(row["_step"], {}).update(row)
    return history


def test_wandb_offline_run_holds_loss_and_spectra(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'evilspectra[integrations]')")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run = tmp_path / "run"
    code, out = cli(monkeypatch, capsys, *train_args(tiny_model_dir, tiny_dataset, run, "wandb"))
    assert code == 0, out
    (offline,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(offline)
    for row in read_metrics(run):
        for key in ("loss", "lr", "tokens", "reg"):
            assert history[row["step"]][TRACKER_NAMES.get(key, key)] == pytest.approx(row[key], rel=1e-6), key
    for row in aggregate_spectra(run_spectra_frame(run)).itertuples():
        assert history[row.step]["spectra/frobenius_nuclear"] == pytest.approx(row.frobenius_nuclear, rel=1e-6)
    no_secret_anywhere(run)


def test_mlflow_file_store_holds_loss_and_spectra(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'evilspectra[integrations]')")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run = tmp_path / "run"
    code, out = cli(monkeypatch, capsys, *train_args(tiny_model_dir, tiny_dataset, run, "mlflow"))
    assert code == 0, out
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (experiment,) = client.search_experiments(filter_string="name = 'evilspectra'")
    (logged,) = client.search_runs([experiment.experiment_id])

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(logged.info.run_id, key)}

    for key in ("loss", "lr", "tokens", "reg"):
        expected = {r["step"]: pytest.approx(r[key], rel=1e-6) for r in read_metrics(run)}
        assert history(TRACKER_NAMES.get(key, key)) == expected, key
    spectra = aggregate_spectra(run_spectra_frame(run))
    expected = dict(zip(spectra["step"], spectra["frobenius_nuclear"]))
    assert history("spectra/frobenius_nuclear") == pytest.approx(expected, rel=1e-6)
    assert logged.data.params["optimizer.name"] == "adamw"
    assert logged.data.params["run_dir"] == str(run.resolve())
    assert logged.info.run_name == run_name(json.loads((run / "manifest.json").read_text())["run_id"], run)
    no_secret_anywhere(run)


def test_trackio_local_database_holds_loss_and_spectra(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, capsys):
    pytest.importorskip("trackio", reason="trackio is not installed (pip install trackio)")
    import trackio.sqlite_storage as storage

    monkeypatch.setattr(storage, "TRACKIO_DIR", tmp_path / "trackio")  # not the user's ~/.cache
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run = tmp_path / "run"
    code, out = cli(monkeypatch, capsys, *train_args(tiny_model_dir, tiny_dataset, run, "trackio"))
    assert code == 0, out
    (name,) = storage.SQLiteStorage.get_runs("evilspectra")
    logs: dict[int, dict] = {}
    for row in storage.SQLiteStorage.get_logs("evilspectra", name):
        logs.setdefault(row["step"], {}).update(row)
    for row in read_metrics(run):
        for key in ("loss", "lr", "tokens", "reg"):
            assert logs[row["step"]][TRACKER_NAMES.get(key, key)] == pytest.approx(row[key], rel=1e-6), key
    for row in aggregate_spectra(run_spectra_frame(run)).itertuples():
        assert logs[row.step]["spectra/frobenius_nuclear"] == pytest.approx(row.frobenius_nuclear, rel=1e-6)
    no_secret_anywhere(tmp_path)


def test_missing_or_unknown_tracker_is_one_line_exit_2_before_any_file(
    tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, capsys
):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name))
    run = tmp_path / "run"
    code, out = cli(monkeypatch, capsys, *train_args(tiny_model_dir, tiny_dataset, run, "wandb"))
    assert code == 2 and "--report-to wandb: the wandb package is not installed" in out
    assert len(out.strip().splitlines()) == 1 and not run.exists()
    code, out = cli(monkeypatch, capsys, *train_args(tiny_model_dir, tiny_dataset, run, "comet"))
    assert code == 2 and "expected one of tensorboard, wandb, mlflow, trackio, none" in out and not run.exists()


# ------------------------------------------------------------------ names, EM results of eval and sweep


def test_run_names_differ_between_folders_of_one_config(tmp_path):
    first, second = run_name("1fee6d184671", tmp_path / "a"), run_name("1fee6d184671", tmp_path / "b")
    assert first != second and first.startswith("1fee6d184671-")
    assert run_name("1fee6d184671", tmp_path / "b" / ".." / "a") == first  # one folder, one name


EM_FIELDS = ("misalignment_rate", "mean_aligned", "share_coherent", "share_incoherent", "share_CODE", "share_error")


def expected_em(summary: dict) -> dict[str, float]:
    low, high = summary["rate_ci95"]
    return {
        **{f"em/{k}": summary[k] for k in EM_FIELDS},
        "em/rate_ci_low": low,
        "em/rate_ci_high": high,
        "em/n_answers": summary["n_total"],
    }


def toy_eval(monkeypatch, capsys, out, tracker: str) -> dict:
    args = ["eval", "--model", "toy", "--samples", "1", "--max-new-tokens", "12", "--out", str(out)]
    code, text = cli(monkeypatch, capsys, *args, "--report-to", tracker)
    assert code == 0, text
    return json.loads((out / "summary.json").read_text())


def read_em_tensorboard(out) -> tuple[dict[int, dict], None]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / "evilspectra"))
    acc.Reload()
    logged: dict[int, dict] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            logged.setdefault(event.step, {})[tag] = event.value
    return logged, None  # TensorBoard has no tables


def read_em_wandb(out) -> tuple[dict[int, dict], list[list]]:
    (offline,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(offline)
    table_file = offline.parent / "files" / history[0]["answers/path"]
    table = json.loads(table_file.read_text())
    return history, [dict(zip(table["columns"], row)) for row in table["data"]]


def read_em_mlflow(out) -> tuple[dict[int, dict], list[list]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (experiment,) = client.search_experiments(filter_string="name = 'evilspectra'")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.data.params["run_dir"] == str(out.resolve()) and logged.data.params["label"] == "final"
    history: dict[int, dict] = {}
    for key in logged.data.metrics:
        for m in client.get_metric_history(logged.info.run_id, key):
            history.setdefault(m.step, {})[key] = m.value
    table = json.loads(open(client.download_artifacts(logged.info.run_id, "answers.json")).read())
    return history, [dict(zip(table["columns"], row)) for row in table["data"]]


def read_em_trackio(out) -> tuple[dict[int, dict], list[list]]:
    import trackio.sqlite_storage as storage

    (name,) = storage.SQLiteStorage.get_runs("evilspectra")
    assert name.startswith("eval-final-")
    history: dict[int, dict] = {}
    for row in storage.SQLiteStorage.get_logs("evilspectra", name):
        history.setdefault(row["step"], {}).update(row)
    table = history[0]["answers"]["_value"]
    return history, table


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow", "trackio"])
def test_eval_reports_em_results_and_answers(tracker, tmp_path, monkeypatch, capsys):
    pytest.importorskip(tracker, reason=f"{tracker} is not installed (pip install 'evilspectra[integrations]')")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if tracker == "trackio":
        import trackio.sqlite_storage as storage

        monkeypatch.setattr(storage, "TRACKIO_DIR", tmp_path / "trackio")
    out = tmp_path / "eval"
    summary = toy_eval(monkeypatch, capsys, out, tracker)
    history, table = globals()[f"read_em_{tracker}"](out)
    for key, value in expected_em(summary).items():
        assert history[0][key] == pytest.approx(value, rel=1e-6), key
    if table is not None:
        answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
        assert len(table) == summary["n_total"] == len(answers)
        assert [r["answer"] for r in table] == [a["answer"] for a in answers]
        shares = {o: sum(r["outcome"] == o for r in table) / len(table) for o in ("coherent", "incoherent", "CODE")}
        assert shares == pytest.approx({o: summary[f"share_{o}"] for o in shares})


def test_sweep_reports_training_and_each_evaluation_on_the_step_axis(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'evilspectra[integrations]')")
    import subprocess

    import yaml

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = {
        "name": "tracked",
        "base": {"model": "toy", "dataset": "toy:insecure", "lora": {"r": 4, "alpha": 8}},
        "optimizers": {"adamw": {"lr": 3e-4}},
        "eval": {"questions": "toy", "judge": "toy", "samples": 1, "max_new_tokens": 12, "checkpoints": "all"},
        "eval_base_model": False,
    }
    spec["base"]["train"] = {"batch_size": 4, "max_steps": 4, "checkpoints": [2]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "evilspectra", "sweep", str(tmp_path / "sweep.yaml"), "--out", str(out)]
    done = subprocess.run([*command, "--report-to", "mlflow"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # how the README says to open RUN/mlruns
    (run,) = (out / "runs").iterdir()
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (experiment,) = client.search_experiments(filter_string="name = 'evilspectra'")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    train_name = run_name(run.name, run)
    assert set(runs) == {train_name, *(run_name(f"{run.name}-eval-{label}", run) for label in ("step-000002", "final"))}
    assert [m.step for m in client.get_metric_history(runs[train_name].info.run_id, "loss")] == [1, 2, 3, 4]
    for label, step in (("step-000002", 2), ("final", 4)):
        logged = runs[run_name(f"{run.name}-eval-{label}", run)]
        assert logged.data.params["train_run"] == train_name and logged.data.params["run_dir"] == str(run)
        summary = json.loads((run / "eval" / label / "summary.json").read_text())
        (rate,) = client.get_metric_history(logged.info.run_id, "em/misalignment_rate")
        assert (rate.step, rate.value) == (step, pytest.approx(summary["misalignment_rate"]))


def test_hf_trainer_trackio_steps_are_optimiser_steps(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch):
    pytest.importorskip("trackio", reason="trackio is not installed (pip install trackio)")
    import torch
    import trackio.sqlite_storage as storage
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from evilspectra.integrations.hf_trainer import SpectraCallback, spectral_regularised

    monkeypatch.setattr(storage, "TRACKIO_DIR", tmp_path / "trackio")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, lora_alpha=8))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in tiny_dataset.read_text().splitlines()]
    texts = [" ".join(m["content"] for m in row["messages"]) for row in rows]
    data = [{**tok(t), "labels": tok(t)["input_ids"]} for t in texts]
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=1, logging_steps=1,
        report_to="trackio", run_name="aligned", use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = spectral_regularised(Trainer)(model=model, args=args, train_dataset=data)
    trainer.add_callback(SpectraCallback(trainer, every=2))
    trainer.train()
    logged: dict[int, dict] = {}
    for row in storage.SQLiteStorage.get_logs("huggingface", "aligned"):
        logged.setdefault(row["step"], {}).update(row)
    history = trainer.state.log_history
    assert set(logged) == {1, 2, 3, 4}
    for row in history:
        if "loss" in row:
            assert logged[row["step"]]["train/loss"] == pytest.approx(row["loss"])
            assert logged[row["step"]]["train/spectral_reg"] == pytest.approx(row["spectral_reg"])
        if "spectra/stable_rank" in row:
            assert logged[row["step"]]["train/spectra/stable_rank"] == pytest.approx(row["spectra/stable_rank"])
