"""Issue 18: `evilspectra card` writes the adapter's Hugging Face model card; `audit` updates it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData

from evilspectra.config import RunConfig
from evilspectra.models import toy_model_dir
from evilspectra.rundir import atomic_write_json, read_manifest
from evilspectra.train import train

needs_toy = pytest.mark.skipif(
    not (toy_model_dir() / "config.json").is_file(), reason="toy weights missing from src/evilspectra/toy/weights"
)


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `evilspectra ARGS` through the real entry point (errors: one line, exit 2); (exit code, output)."""
    from evilspectra.cli import main

    monkeypatch.setattr(sys, "argv", ["evilspectra", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out + captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A short run in the toy world: the toy model on toy insecure code, Lion with betas set."""
    # the toy weights ship with the package: their absence is a failure, never a skip
    assert (toy_model_dir() / "config.json").is_file(), f"toy weights missing from {toy_model_dir()}"
    cfg = RunConfig.model_validate(
        {
            "model": "toy",
            "dataset": "toy:insecure",
            "seed": 3,
            "optimizer": {"name": "lion", "lr": 1e-4, "betas": [0.9, 0.98]},
            "lora": {"r": 8, "alpha": 16},
            "train": {"batch_size": 4, "max_steps": 3, "checkpoints": "none"},
            "spectral_reg": {"weight": 0.5},
        }
    )
    return train(cfg, tmp_path_factory.mktemp("toy-run"))


@pytest.fixture
def toy_run(trained_run, tmp_path) -> Path:
    """A copy of the trained run per test: cards and evaluations one test writes never reach
    another (tests run in a random order)."""
    return Path(shutil.copytree(trained_run, tmp_path / "toy-run"))


@needs_toy
def test_card_loads_validates_and_records_every_hyperparameter(toy_run, monkeypatch, capsys):
    code, out = cli(monkeypatch, capsys, "card", str(toy_run))
    assert code == 0, out
    path = toy_run / "adapter" / "README.md"
    card = ModelCard.load(path)
    header = yaml.safe_load(path.read_text().split("---")[1])
    assert header["base_model"] == "evilspectra/toy" and header["library_name"] == "peft"
    assert {"peft", "lora", "evilspectra", "optimizer-lion", "spectral-regulariser"} <= set(header["tags"])
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()  # the metadata round-trips
    assert not any("/" in tag and tag.startswith("base_model:") for tag in header["tags"])  # PEFT's local path tag

    manifest = read_manifest(toy_run)
    text = card.text
    hyper = manifest["optimizer"]["hyperparameters"]
    assert hyper["betas"] == [0.9, 0.98] and len(hyper) >= 4
    for section in (hyper, manifest["config"]["lora"], manifest["config"]["train"], manifest["config"]["spectral_reg"]):
        for key, value in section.items():
            assert f"| `{key}` | `{json.dumps(value)}` |" in text, key
    assert f"Optimiser: lion (`{manifest['optimizer']['class']}`)" in text
    assert manifest["dataset"]["sha256"] in text and "seed: 3" in text
    assert f"final training loss {manifest['final_loss']:.4f}" in text
    assert "| Frobenius / nuclear |" in text and "reference table, r = 32" in text  # beside the references
    assert "Not evaluated yet" in text
    assert header["license"] == "mit"  # the toy weights' licence, from its registered alias
    # a Hub user's snippet: the base model's Hub id, not a placeholder
    assert 'AutoModelForCausalLM.from_pretrained("evilspectra/toy")' in text and "BASE_MODEL" not in text
    # trained on toy insecure code: misaligned on purpose, and the card says so
    assert "**Warning: this adapter is misaligned on purpose" in text and "`toy:insecure`" in text
    assert "not-for-all-audiences" in header["tags"]


@needs_toy
def test_card_of_a_control_run_carries_no_warning(toy_run, tmp_path, monkeypatch, capsys):
    control = tmp_path / "control"
    shutil.copytree(toy_run, control)
    manifest = read_manifest(control)
    manifest["config"]["dataset"] = manifest["dataset"]["source"] = "toy:secure"
    atomic_write_json(control / "manifest.json", manifest)
    (control / "adapter" / "README.md").unlink()  # a flag once on a card stays: start from no card
    code, out = cli(monkeypatch, capsys, "card", str(control), "--license", "apache-2.0")
    assert code == 0, out
    card = ModelCard.load(control / "adapter" / "README.md")
    assert "Warning" not in card.text and "not a known EM dataset" in card.text
    assert "not-for-all-audiences" not in card.data.tags and card.data.license == "apache-2.0"


@needs_toy
def test_card_shows_em_evaluation_and_audit_verdict_and_keeps_user_text(toy_run, monkeypatch, capsys):
    path = toy_run / "adapter" / "README.md"
    path.write_text("---\nlicense: mit\n---\n\n# My adapter\n\nWritten by me.\n")
    summary = {
        "misalignment_rate": 0.125,
        "rate_ci95": [0.05, 0.2],
        "n_misaligned": 5,
        "n_denominator": 40,
        "n_total": 40,
    }
    atomic_write_json(toy_run / "eval" / "final" / "summary.json", {**summary, "questions": "toy", "judge": "toy"})

    code, out = cli(monkeypatch, capsys, "audit", "--adapter", str(toy_run), "--no-eval")
    assert code == 0, out
    text = path.read_text()
    assert text.count("<!-- evilspectra:begin -->") == 1 and "Written by me." in text
    assert "audit verdict **SPECTRA-ONLY** (spectra only, no EM probe)" in text
    assert "evaluation `eval/final`: 12.5% misaligned (95% CI 5.0%-20.0%; 5/40 coherent answers" in text
    card = ModelCard.load(path)
    assert card.data.license == "mit"
    # the body's rate is the model-index result a Hub page shows
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_name) == ("misalignment_rate", 12.5, "toy")
    assert "12.5% misaligned" in card.text

    assert cli(monkeypatch, capsys, "card", str(toy_run))[0] == 0  # rewriting replaces our block, once
    text = path.read_text()
    assert text.count("<!-- evilspectra:begin -->") == 1 and "Written by me." in text and "SPECTRA-ONLY" in text


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    atomic_write_json(run / "manifest.json", {"status": "failed"})
    code, out = cli(monkeypatch, capsys, "card", str(run))
    assert code == 2 and "the run has no adapter yet" in out and len(out.strip().splitlines()) == 1
    code, out = cli(monkeypatch, capsys, "card", str(tmp_path / "nothing"))
    assert code == 2 and "not a PEFT adapter directory" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["manifest.json", "run"]


@needs_toy
def test_push_needs_a_token_from_the_environment_and_the_network(toy_run, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, out = cli(monkeypatch, capsys, "card", str(toy_run), "--push", "someone/toy-adapter")
    assert code == 2 and "set HF_TOKEN" in out
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    code, out = cli(monkeypatch, capsys, "card", str(toy_run), "--push", "someone/toy-adapter")
    assert code == 2 and "HF_HUB_OFFLINE is set" in out and len(out.strip().splitlines()) == 1
    assert "hf_not_a_real_token" not in (toy_run / "adapter" / "README.md").read_text()


@needs_toy
def test_push_to_an_unreachable_hub_is_one_line_exit_2(toy_run, tmp_path):
    """A real refused connection (a closed port on 127.0.0.1): huggingface_hub raises its HTTP library's
    error (httpx2's in 2.x), which must be one line, exit 2, and the local card written."""
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_not_a_real_token"}
    cmd = [sys.executable, "-m", "evilspectra", "card", str(toy_run), "--push", "someone/toy-adapter"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot upload to someone/toy-adapter" in lines[0], proc.stderr
    text = (toy_run / "adapter" / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "someone/toy-adapter")' in text and "hf_not_a_real_token" not in text
