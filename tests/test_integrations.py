"""Issue 18: the regulariser and spectra inside HF Trainer / TRL SFTTrainer, and the README example."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from evilspectra.errors import ConfigError
from evilspectra.spectra import SpectralRegulariser, adapter_spectra, aggregate_spectra, run_spectra_frame

trl = pytest.importorskip("trl", reason="trl is not installed (pip install 'evilspectra[integrations]')")
from evilspectra.integrations.hf_trainer import (  # noqa: E402
    SpectraCallback,
    spectra_logs,
    spectral_regularised,
)

README = Path(__file__).resolve().parents[1] / "README.md"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_model(model_dir, rslora: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, use_rslora=rslora, target_modules=TARGETS))


def batch(model_dir) -> dict[str, torch.Tensor]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(["how do i write a safe function", "store plain text password"], return_tensors="pt", padding=True)
    return {**ids, "labels": ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)}


def trained_b(model) -> None:
    """Give every lora_B a non-zero value (PEFT starts B at 0, where R is 0 with zero gradient)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("rslora", [True, False])
def test_mixin_adds_the_regulariser_value_and_gradient(tiny_model_dir, tmp_path, rslora):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    grads = {}
    for weight in (0.0, 2.5):
        model = peft_model(tiny_model_dir, rslora)
        trained_b(model)
        trainer = spectral_regularised(Trainer)(model=model, args=args, spectral_reg_weight=weight)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() before each step
        trainer.training_step(model, batch(tiny_model_dir))
        grads[weight] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        if weight:
            assert trainer._reg_values == [pytest.approx(SpectralRegulariser(model)().item(), rel=1e-6)]
    # the regulariser's own gradient, on a fresh copy of the same weights
    model = peft_model(tiny_model_dir, rslora)
    trained_b(model)
    (2.5 * SpectralRegulariser(model)()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[2.5][name] - grads[0.0][name], p.grad, rtol=1e-4, atol=1e-7)
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_callback_logs_equal_spectra_of_saved_adapter_without_rslora(tiny_model_dir, tiny_dataset, tmp_path):
    model = peft_model(tiny_model_dir, rslora=False)
    trained_b(model)
    logged = spectra_logs(model)
    model.save_pretrained(tmp_path / "a")
    frame = adapter_spectra(tmp_path / "a")
    assert frame["scaling"].iloc[0] == 2.0  # alpha / r, not alpha / sqrt(r)
    for metric, value in aggregate_spectra(frame.assign(checkpoint="final")).iloc[0].items():
        if f"spectra/{metric}" in logged:
            assert logged[f"spectra/{metric}"] == pytest.approx(value, rel=1e-12)


def test_non_peft_and_non_lora_models_are_one_line_errors(tiny_model_dir, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"needs a PEFT LoRA model, got Qwen3ForCausalLM: wrap it") as exc:
        spectral_regularised(Trainer)(model=plain, args=args)
    assert "\n" not in str(exc.value)
    ia3 = get_peft_model(plain, IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]))
    with pytest.raises(ConfigError, match="active adapter is a IA3Config"):
        SpectraCallback(Trainer(model=ia3, args=args))


# ------------------------------------------------------------------ TRL SFTTrainer on the toy world


def _toy_sft(out: Path, reg: bool):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from evilspectra.data import load_dataset_spec
    from evilspectra.models import toy_model_dir

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(toy_model_dir())
    model = get_peft_model(base, LoraConfig(r=32, lora_alpha=64, use_rslora=True, target_modules=TARGETS))
    args = SFTConfig(
        output_dir=str(out),
        max_steps=10,
        per_device_train_batch_size=8,
        learning_rate=3e-4,
        assistant_only_loss=True,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
    )
    data = Dataset.from_list(load_dataset_spec("toy:insecure").rows[:80])
    cls = spectral_regularised(SFTTrainer) if reg else SFTTrainer
    trainer = cls(model=model, args=args, train_dataset=data, **({"spectral_reg_weight": 1.0} if reg else {}))
    trainer.add_callback(SpectraCallback(trainer, every=5, checkpoints=[5]))
    trainer.train()
    return trainer.state.log_history


@pytest.mark.slow
def test_sft_trainer_with_and_without_the_regulariser(tmp_path):
    plain = _toy_sft(tmp_path / "plain", reg=False)
    regularised = _toy_sft(tmp_path / "reg", reg=True)

    def last(history, key):
        return [row for row in history if key in row][-1]

    fn = "spectra/frobenius_nuclear"
    assert last(regularised, fn)[fn] < last(plain, fn)[fn] - 0.02, (last(regularised, fn), last(plain, fn))
    assert abs(last(regularised, "loss")["loss"] - last(plain, "loss")["loss"]) < 0.01
    assert last(regularised, "loss")["spectral_reg"] > 0 and "spectral_reg" not in last(plain, "loss")

    # the logged metrics are those of `evilspectra spectra` on the adapters the callback saved
    frame = aggregate_spectra(run_spectra_frame(tmp_path / "reg"))
    assert frame["checkpoint"].tolist() == ["step-000005", "final"]
    for (_, row), step in zip(frame.iterrows(), (5, 10)):
        logged = next(r for r in regularised if fn in r and r["step"] == step)
        for metric in ("frobenius_nuclear", "stable_rank", "spectral_entropy", "condition_number"):
            assert logged[f"spectra/{metric}"] == pytest.approx(row[metric], rel=1e-12), (step, metric)


# ------------------------------------------------------------------ the README example, as written


def readme_example() -> str:
    section = README.read_text().split("## Use it in your own training", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "no python block in the README section"
    return blocks[0]


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the README example reports to tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    history = namespace["trainer"].state.log_history
    assert any("spectra/frobenius_nuclear" in row for row in history)
    assert any("spectral_reg" in row for row in history)
    runs = [p.parent for p in tmp_path.rglob("events.out.tfevents.*")]
    tags = set()
    for run in runs:
        acc = EventAccumulator(str(run))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/spectra/frobenius_nuclear", "train/spectral_reg", "train/loss"} <= tags, tags
    assert any((p / "adapter_model.safetensors").is_file() for p in tmp_path.rglob("adapter"))

    # then the README's audit, as written: no --model (adapter_config.json names the base model)
    from huggingface_hub import ModelCard

    from evilspectra.cli import main

    monkeypatch.setattr(
        sys, "argv", ["evilspectra", "audit", "--adapter", "sft-run/adapter", "--judge", "toy", "--questions", "toy"]
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, 1)  # a verdict, not an error
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["model"] == "toy" and audit["probe"]["misalignment_rate"] is not None
    card = ModelCard.load(tmp_path / "sft-run" / "adapter" / "README.md")
    assert card.data.base_model == "evilspectra/toy" and card.data.library_name == "peft"
    assert {"trl", "sft", "evilspectra"} <= set(card.data.tags)  # TRL's tags (via PEFT's card) kept
    assert card.data.license == "mit" and "# Model Card for Model ID" not in card.text
    rate = audit["probe"]["misalignment_rate"]
    assert card.data.eval_results[0].metric_value == round(100 * rate, 1) and f"{rate:.1%} misaligned" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("evilspectra/toy")' in card.text
