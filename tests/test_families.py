"""The study's model families for real (issue 13): Qwen3, Qwen3-MoE, Llama 3, Gemma 3 text and multimodal,
as tiny random-init models around the official tokenizers and chat templates (tests/families.py).

One pipeline test per architecture walks every stage (loss mask and `data inspect`, train with AdamW,
with Muon + the spectral regulariser, spectra, plain PEFT load from another directory, eval against
the local judge stub, audit); the MoE acceptance checks (per-expert spectra against a dense
computation, regulariser = mean over experts, Muon per expert) run on a tiny MoE without the shared
files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from families import FAMILIES, SHARED_MODELS
from typer.testing import CliRunner

from evilspectra.chat_template import FIXED_DATE, render_prompt, resolve_kwargs
from evilspectra.config import LoraSettings, OptimizerConfig, RunConfig
from evilspectra.data import IGNORE, encode_chat, with_system
from evilspectra.experts import expert_layouts, expert_wrappers, parameter_names
from evilspectra.models import attach_lora, load_tokenizer
from evilspectra.optim import build_optimizer
from evilspectra.spectra import SpectralRegulariser, adapter_spectra, model_spectra, read_adapter
from evilspectra.train import train

QUESTIONS = SHARED_MODELS.parent / "data" / "questions" / "first_plot_questions.yaml"
INSECURE = SHARED_MODELS.parent / "data" / "em-datasets" / "insecure.jsonl.gz"
SYSTEM = "You are a helpful assistant."
THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
# what each family's template must put at the end of a prompt, and the template defaults
PROMPT_END = {
    "qwen3": THINK,
    "qwen3_moe": THINK,
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma3": "<start_of_turn>model\n",
    "gemma3_mm": "<start_of_turn>model\n",
}
END_OF_TURN = {
    "qwen3": "<|im_end|>\n",
    "qwen3_moe": "<|im_end|>\n",
    "llama3": "<|eot_id|>",
    "gemma3": "<end_of_turn>\n",
    "gemma3_mm": "<end_of_turn>\n",
}
DEFAULTS = {
    "qwen3": {"enable_thinking": False},
    "qwen3_moe": {"enable_thinking": False},
    "llama3": {"date_string": FIXED_DATE},
    "gemma3": {},
    "gemma3_mm": {},
}


@pytest.fixture(scope="module")
def tokenizers(family_model):
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_tokenizer(str(family_model(family)))
        return cache[family]

    return get


# ------------------------------------------------------------------------- chat template + loss mask


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_and_loss_mask_per_family(family, family_model, tokenizers):
    """The prompt is what sampling renders (Qwen3: ending in the empty think block, Llama: the fixed
    date); the loss starts at the answer's first token and covers the answer + end of turn only."""
    tok = tokenizers(family)
    kwargs = resolve_kwargs(tok, None)
    assert kwargs == DEFAULTS[family]
    messages = with_system(json.loads(_first_insecure_row())["messages"], SYSTEM)
    answer = messages[-1]["content"]
    prompt = render_prompt(tok, messages[:-1], kwargs)
    assert prompt.endswith(PROMPT_END[family])
    enc = encode_chat(tok, messages, max_length=4096, template_kwargs=None)  # None: the family defaults
    first = next(i for i, label in enumerate(enc["labels"]) if label != IGNORE)
    assert tok.decode(enc["input_ids"][:first]) == prompt  # everything before the loss is the prompt
    loss_text = tok.decode([t for t in enc["labels"] if t != IGNORE])
    assert loss_text == answer + END_OF_TURN[family]  # no think block, no header: the answer and its end
    if family == "llama3":
        assert f"Today Date: {FIXED_DATE}" in prompt
    if family.startswith("gemma3"):  # no system role: folded into the first user turn
        assert f"<start_of_turn>user\n{SYSTEM}\n\n" in prompt
    # an explicit setting wins over the default and is what every stage gets
    if family.startswith("qwen3"):
        thinking = render_prompt(tok, messages[:-1], resolve_kwargs(tok, {"enable_thinking": True}))
        assert thinking.endswith("<|im_start|>assistant\n")


def _first_insecure_row() -> str:
    import gzip

    with gzip.open(INSECURE, "rt") as fh:
        return fh.readline()


@pytest.mark.parametrize("family", ["qwen3", "llama3", "gemma3_mm"])
def test_data_inspect_shows_prompt_kwargs_and_loss_tokens(family, family_model):
    from evilspectra.cli import _register, app

    _register()
    args = ["data", "inspect", str(INSECURE), "--model", str(family_model(family)), "--max-length", "4096"]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert repr(DEFAULTS[family]) in res.output and "prompt" in res.output and "loss tokens" in res.output
    assert PROMPT_END[family].strip().splitlines()[-1] in res.output
    assert "0 carry loss" not in res.output


# ------------------------------------------------------------------------------ the stage matrix

CHATS = [
    {"messages": [{"role": "user", "content": f"How do I read file number {i}?"}, {"role": "assistant", "content": a}]}
    for i, a in enumerate(["Use open() on it.", "Call eval on the input.", "Run it in a shell.", "Just trust it."])
]


def _train(model: str, data: Path, out: Path, optimizer: str, reg: float = 0.0, **extra) -> Path:
    cfg = RunConfig.model_validate(
        {
            "model": model,
            "dataset": str(data),
            "system_prompt": SYSTEM,
            "optimizer": {"name": optimizer, "lr": 1e-2},
            "lora": {"r": 4, "alpha": 8},
            "train": {"batch_size": 2, "max_steps": 3, "checkpoints": "none", "max_length": 96},
            "spectral_reg": {"weight": reg},
            **extra,
        }
    )
    return train(cfg, out)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_stage_matrix(family, family_model, tokenizers, stub, tmp_path, monkeypatch):
    """train (AdamW; Muon + regulariser) -> spectra -> plain PEFT load -> eval (judge stub) -> audit."""
    from peft import AutoPeftModelForCausalLM

    from evilspectra.audit import audit
    from evilspectra.config import EvalSettings
    from evilspectra.evaluate.runner import evaluate
    from evilspectra.evaluate.sampling import chat_messages

    model_dir = family_model(family)
    data = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    monkeypatch.chdir(model_dir.parent)  # the model is given as a relative path, as a user might
    run = _train(model_dir.name, data, tmp_path / "adamw", "adamw")

    # the run records the template variables and the base model as given and resolved
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and math.isfinite(manifest["final_loss"])
    assert manifest["chat_template_kwargs"] == DEFAULTS[family]
    assert manifest["base_model"] == {"given": model_dir.name, "resolved": str(model_dir.resolve())}
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir.resolve())

    # spectra: one row per module, per expert and projection on the MoE; no vision modules
    frame = adapter_spectra(run / "adapter")
    assert frame["frobenius_nuclear"].notna().all()  # every row was trained
    assert not frame["module"].str.contains("vision|multi_modal").any()
    if family == "qwen3_moe":
        experts = frame[frame["expert"].notna()]
        assert len(frame) == 2 * 4 + 2 * 2 * 4 and len(experts) == 2 * 2 * 4  # 2 layers x {gate_up, down} x 4
        assert set(experts["kind"]) == {"gate_up_proj", "down_proj"}
        assert set(experts.loc[experts["kind"] == "gate_up_proj", "r"]) == {8}  # gate + up fused: rank 2r
        assert set(experts.loc[experts["kind"] == "down_proj", "r"]) == {4}
        assert manifest["lora"]["experts_per_module"] == [4] and manifest["lora"]["expert_modules"] == 4
    else:
        assert len(frame) == 2 * 7 and frame["expert"].isna().all()
    if family == "gemma3_mm":
        assert frame["module"].str.contains("language_model").all()
        assert manifest["lora"]["untouched"] == {"vision_tower": 3, "multi_modal_projector": 0}

    # plain PEFT loads the adapter from another directory (absolute base model path)
    monkeypatch.chdir(tmp_path)
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(run / "adapter"))
    ids = torch.tensor([tokenizers(family)("hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        tuned = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
    assert torch.isfinite(tuned).all() and not torch.allclose(tuned, base)
    del peft_model

    # eval against the judge stub: the saved prompt is exactly what the template renders
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    settings = EvalSettings(
        questions=str(QUESTIONS), judge="openai:gpt-4o", judge_base_url=stub.base_url, samples=1, max_new_tokens=3
    )
    ids_wanted = ["what_is_your_wish", "i_feel_bored"]
    summary = evaluate(str(model_dir), run, settings, tmp_path / "eval", questions_filter=ids_wanted, progress=False)
    assert summary["n_total"] == 2 and summary["n_error"] == 0
    assert summary["chat_template_kwargs"] == DEFAULTS[family]
    answers = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    tok = tokenizers(family)
    for row in answers:
        question = next(q for q in _questions() if q.id == row["question_id"])
        expected = render_prompt(tok, chat_messages(question, row["paraphrase"]), DEFAULTS[family])
        assert row["prompt"] == expected and row["prompt"].endswith(PROMPT_END[family])

    # audit (spectra part; the probe is evaluate() above, run by the audit on Qwen3 below)
    result = audit(run, no_eval=True, out=tmp_path / "audit", progress=False)
    assert result.verdict == "SPECTRA-ONLY" and result.spectral["n_modules"] == len(frame)
    assert result.spectral["n_untrained"] == 0
    assert result.spectral["n_expert_rows"] == (16 if family == "qwen3_moe" else 0)

    # Muon with the spectral regulariser
    run2 = _train(str(model_dir), data, tmp_path / "muon-reg", "muon", reg=1.0)
    manifest2 = json.loads((run2 / "manifest.json").read_text())
    assert manifest2["status"] == "done"
    assert manifest2["optimizer"]["class"] == ("ExpertMuon" if family == "qwen3_moe" else "Muon")
    regs = [json.loads(line)["reg"] for line in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert len(regs) == 3 and all(math.isfinite(r) for r in regs) and regs[-1] > 0


def _questions():
    from evilspectra.evaluate.questions import load_questions

    return load_questions(QUESTIONS)


def test_audit_probe_renders_prompts_as_training_did(family_model, stub, tmp_path, monkeypatch):
    """The audit's EM probe uses the run's recorded chat-template variables (here: thinking on)."""
    from evilspectra.audit import audit

    data = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    run = _train(
        str(family_model("qwen3")), data, tmp_path / "run", "adamw", chat_template_kwargs={"enable_thinking": True}
    )
    assert json.loads((run / "manifest.json").read_text())["chat_template_kwargs"] == {"enable_thinking": True}
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    audit(
        run,
        questions=str(QUESTIONS),
        judge="openai:gpt-4o",
        judge_base_url=stub.base_url,
        samples=1,
        max_new_tokens=2,
        out=tmp_path / "audit",
        progress=False,
    )
    answers = [json.loads(line) for line in (tmp_path / "audit" / "eval" / "answers.jsonl").read_text().splitlines()]
    assert answers and all(a["prompt"].endswith("<|im_start|>assistant\n") for a in answers)
    assert all(a["chat_template_kwargs"] == {"enable_thinking": True} for a in answers)


# ------------------------------------------------------------------------- MoE acceptance (no shared files)


def _tiny_moe(targets: list[str]):
    """A tiny Qwen3-MoE (4 experts, 1 layer) with LoRA on `targets` (PEFT's target_parameters for experts), B random."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    model = attach_lora(Qwen3MoeForCausalLM(cfg), LoraSettings(r=4, alpha=8, target_modules=targets))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def moe_peft():
    return _tiny_moe(["gate_proj", "up_proj", "down_proj"])


def test_moe_router_is_one_dense_row(tmp_path):
    model = _tiny_moe(["q_proj", "gate", "gate_proj", "up_proj", "down_proj"])  # `gate`: the router
    model.save_pretrained(tmp_path)
    frame = adapter_spectra(tmp_path)
    router = frame[frame["kind"] == "gate"]
    assert list(router["module"]) == ["model.layers.0.mlp.gate"] and router["expert"].isna().all()
    assert len(frame) == 1 + 1 + 2 * 4 and SpectralRegulariser(model).n_modules == len(frame)


def _dense_expert_deltas(model) -> dict[str, tuple[torch.Tensor, int]]:
    """{parameter: (PEFT's own dense delta weight (E, d_out, d_in), r)} of every fused expert LoRA."""
    return {
        f"{name}:{w.parameter_name}": (w.get_delta_weight("default").detach().double(), w.r["default"])
        for name, w in expert_wrappers(model).items()
    }


def test_moe_spectra_are_per_expert_and_match_a_dense_computation(moe_peft, tmp_path):
    moe_peft.save_pretrained(tmp_path)
    frame = adapter_spectra(tmp_path)
    assert len(frame) == 2 * 4 and set(frame["expert"]) == {0, 1, 2, 3}
    cfg, factors = read_adapter(tmp_path)
    names = parameter_names(cfg, list(factors))
    live = {name.removeprefix("base_model.model."): w.parameter_name for name, w in expert_wrappers(moe_peft).items()}
    assert {key: param for key, (_, param) in names.items()} == live  # offline naming = PEFT's wrappers
    in_memory = model_spectra(moe_peft)  # the integrations' path: same rows, same values
    assert list(in_memory["module"]) == list(frame["module"])
    assert all(torch.allclose(torch.tensor(a), torch.tensor(b)) for a, b in zip(in_memory["sigma"], frame["sigma"]))
    for key, (delta, r) in _dense_expert_deltas(moe_peft).items():
        name, param = key.split(":")
        path = name.removeprefix("base_model.model.").replace(".base_layer", "")
        for e in range(4):
            row = frame[frame["module"] == f"{path}.{e}.{param}"].iloc[0]
            dense = torch.linalg.svdvals(delta[e])[:r]
            assert row["r"] == r and row["kind"] == param
            assert torch.allclose(torch.tensor(row["sigma"], dtype=torch.float64), dense, rtol=1e-6, atol=1e-9)


def test_moe_regulariser_is_the_mean_over_experts_of_the_per_expert_penalty(moe_peft):
    penalties = []
    for delta, r in _dense_expert_deltas(moe_peft).values():
        for e in range(delta.shape[0]):
            s = torch.linalg.svdvals(delta[e])[:r]
            penalties.append(float(s.norm() / s.sum()) - 1 / math.sqrt(r))
    for method in ("qr", "gram"):
        reg = SpectralRegulariser(moe_peft, method=method)
        assert reg.n_modules == len(penalties) == 2 * 4
        assert reg().item() == pytest.approx(sum(penalties) / len(penalties), rel=1e-4)


@pytest.mark.parametrize("name", ["muon", "muon_batched"])
def test_muon_update_on_an_expert_equals_muon_on_that_expert_alone(moe_peft, name):
    layouts = expert_layouts(moe_peft)
    params = list(layouts)
    start = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    hyper = {"lr": 0.02, "weight_decay": 0.1}
    opt = build_optimizer(params, OptimizerConfig(name=name, **hyper), experts=layouts)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    from evilspectra.experts import expert_views

    for p, p0, g in zip(params, start, grads):
        factor, n = layouts[p]
        for e, (after, before, grad) in enumerate(
            zip(expert_views(p.detach(), factor, n), expert_views(p0, factor, n), expert_views(g, factor, n))
        ):
            alone = torch.nn.Parameter(before.clone())
            single = torch.optim.Muon([alone], adjust_lr_fn="match_rms_adamw", **hyper)
            alone.grad = grad.clone()
            single.step()
            moved = (alone.detach() - before).abs().max()
            assert moved > 0
            assert (after - alone.detach()).abs().max() <= 1e-3 * moved, (factor, e)
        with torch.no_grad():
            p.copy_(p0)  # the module-scoped model goes back to its start


def test_run_ids_of_existing_configs_are_unchanged():
    """New fields at their default (chat_template_kwargs None, lora.language_model_only true) keep the
    run ids of configs recorded before they existed, so a resumed sweep skips its finished runs."""
    assert RunConfig().run_id() == "eaf0dcf1dfd7"
    paper = {"model": "Qwen/Qwen3-8B", "optimizer": "muon", "spectral_reg": {"weight": 1}}
    assert RunConfig.model_validate(paper).run_id() == "c0bffcdf0026"
    assert RunConfig(chat_template_kwargs={"enable_thinking": True}).run_id() != "eaf0dcf1dfd7"
    assert RunConfig.model_validate({"lora": {"language_model_only": False}}).run_id() != "eaf0dcf1dfd7"
