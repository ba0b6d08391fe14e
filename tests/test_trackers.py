"""Issue 18: `evilspectra train --report-to` writes tracker logs (offline, inside the run directory)."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys

import pytest

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
        assert scalars[key] == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in rows}, key

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
            assert history[row["step"]][key] == pytest.approx(row[key], rel=1e-6), (row["step"], key)
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
        assert history(key) == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in read_metrics(run)}, key
    spectra = aggregate_spectra(run_spectra_frame(run))
    expected = dict(zip(spectra["step"], spectra["frobenius_nuclear"]))
    assert history("spectra/frobenius_nuclear") == pytest.approx(expected, rel=1e-6)
    assert logged.data.params["optimizer.name"] == "adamw"
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
            assert logs[row["step"]][key] == pytest.approx(row[key], rel=1e-6), (row["step"], key)
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
