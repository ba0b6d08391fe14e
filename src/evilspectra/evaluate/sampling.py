"""Sample answers to questions from a base model plus an optional PEFT LoRA adapter.

HF backend: batched `generate` with left padding (so every prompt ends at the same position and
the new tokens start at one column), the tokenizer's chat template with an explicit system prompt
(the question's, else no system turn) and the resolved `chat_template_kwargs` (Qwen3: no thinking;
see evilspectra.chat_template), bf16 on a GPU, fp32 on a CPU (seeded -> reproducible). Every
sample records the exact prompt text the model was given and the template variables used.
The adapter is merged into the weights for speed, after checking that the merged model's logits
match PEFT's own forward pass; vLLM (optional) is checked the same way against PEFT.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from evilspectra.artefacts.paths import AdapterDir, resolve_adapter
from evilspectra.chat_template import render_prompt, resolve_kwargs
from evilspectra.config import EvalSettings
from evilspectra.errors import AdapterError, ConfigError
from evilspectra.evaluate.schema import Question
from evilspectra.evaluate.selection import samples_for as samples_for  # public names kept (moved)
from evilspectra.evaluate.selection import temperature_for as temperature_for
from evilspectra.fast import CUDA_VERIFIED
from evilspectra.models import load_adapter, load_base_model, load_tokenizer, pick_device, pick_dtype, resolve_model
from evilspectra.progress import LineProgress, on_terminal


@dataclass
class Sample:
    """One sampled answer: which question, which paraphrase (index and text), which sample, and the
    exact prompt text given to the model with the chat-template variables that rendered it."""

    question_id: str
    paraphrase_index: int
    paraphrase: str
    sample: int
    answer: str
    prompt: str | None = None  # None only in samples saved before prompts were recorded
    chat_template_kwargs: dict | None = None


@dataclass
class _Job:
    question: Question
    paraphrase_index: int
    sample: int
    temperature: float


def chat_messages(question: Question, paraphrase: str) -> list[dict]:
    """The chat sent to the model: an explicit system turn only when the question has one."""
    system = [{"role": "system", "content": question.system}] if question.system else []
    return system + [{"role": "user", "content": paraphrase}]


def sample_answers(
    model: str,
    adapter: str | Path | None,
    questions: list[Question],
    settings: EvalSettings,
    progress: bool = True,
) -> list[Sample]:
    """Sample `samples_for(q)` answers to every paraphrase of every question, in question order."""
    jobs = [
        _Job(q, p, s, temperature_for(q, settings))
        for q in questions
        for p in range(len(q.paraphrases))
        for s in range(samples_for(q, settings))
    ]
    if not jobs:
        raise ConfigError("eval: nothing to sample (no questions selected)")
    adapter_dir = resolve_adapter(adapter) if adapter is not None else None
    if settings.backend == "vllm":
        return _sample_vllm(model, adapter_dir, jobs, settings)
    if settings.backend != "hf":
        raise ConfigError(f"eval.backend: expected 'hf' or 'vllm', got {settings.backend!r}")
    return _sample_hf(model, adapter_dir, jobs, settings, progress)


# ----------------------------------------------------------------------------------- HF backend


def _sample_hf(
    model_name: str, adapter_dir: Path | None, jobs: list[_Job], settings: EvalSettings, progress: bool
) -> list[Sample]:
    device = pick_device()
    dtype = pick_dtype("auto", device)
    tok = load_tokenizer(model_name, padding_side="left")
    kwargs = resolve_kwargs(tok, settings.chat_template_kwargs)
    model = load_base_model(model_name, dtype, device, settings.device_map)
    device = model.device  # device_map="auto": inputs go to the first layer's GPU
    if adapter_dir is not None:
        model = merge_checked(model, adapter_dir, _encode(tok, [_probe(tok, jobs, kwargs)], device))
    model.eval()
    # Sampling must be exactly what the settings say: drop the checkpoint's own defaults
    # (Qwen3 ships top_k=20, top_p=0.95, temperature=0.6), keep only its special tokens.
    old = model.generation_config
    model.generation_config = GenerationConfig(
        eos_token_id=old.eos_token_id if old.eos_token_id is not None else tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=old.bos_token_id,
    )
    # the static KV cache is compiled for one device: a model spread by device_map uses HF generate
    choice = "hf" if settings.device_map and settings.generator == "auto" else settings.generator
    static = resolve_generator(choice, device) == "static"
    generate = _static_generate(model) if static else model.generate
    torch.manual_seed(settings.seed)
    samples: list[Sample] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("sampling", total=len(jobs))
        for batch in _batches(jobs, settings.batch_size):
            samples += _generate(generate, tok, batch, settings, kwargs, device, pad_to=32 if static else None)
            bar.advance(task, len(batch))
    return samples


def _batches(jobs: list[_Job], size: int) -> Iterator[list[_Job]]:
    """Consecutive batches of at most `size` jobs sharing one temperature (one `generate` call)."""
    batch: list[_Job] = []
    for job in jobs:
        if batch and (len(batch) == size or job.temperature != batch[0].temperature):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


def _prompt(tok: PreTrainedTokenizerBase, question: Question, paraphrase: str, kwargs: dict | None = None) -> str:
    """The exact prompt text: the chat, the generation prompt and what the template adds (kwargs
    over the family defaults, evilspectra.chat_template)."""
    return render_prompt(tok, chat_messages(question, paraphrase), resolve_kwargs(tok, kwargs))


def _job_prompt(tok: PreTrainedTokenizerBase, job: _Job, kwargs: dict) -> str:
    return _prompt(tok, job.question, job.question.paraphrases[job.paraphrase_index], kwargs)


def _probe(tok: PreTrainedTokenizerBase, jobs: list[_Job], kwargs: dict) -> str:
    """The prompt the adapter check runs on: the first question's first paraphrase, as sampled."""
    return _prompt(tok, jobs[0].question, jobs[0].question.paraphrases[0], kwargs)


def _sample(job: _Job, prompt: str, answer: str, kwargs: dict) -> Sample:
    paraphrase = job.question.paraphrases[job.paraphrase_index]
    return Sample(job.question.id, job.paraphrase_index, paraphrase, job.sample, answer.strip(), prompt, kwargs)


def _encode(tok: PreTrainedTokenizerBase, texts: list[str], device: torch.device, pad_to: int | None = None) -> dict:
    # the chat template already holds every special token the model expects; `pad_to` rounds the
    # (left-padded) width up so a compiled decoder sees few distinct shapes
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False, pad_to_multiple_of=pad_to).to(device)


def resolve_generator(choice: str, device: torch.device) -> str:
    """The generator an `eval.generator` setting runs on `device`: "hf" or "static".

    `auto` takes the static-cache generator only on CUDA and only once a committed GPU result has
    verified it (`evilspectra.fast.CUDA_VERIFIED`); until then it is HF `generate` everywhere.
    """
    if choice == "auto":
        return "static" if device.type == "cuda" and "static_generator" in CUDA_VERIFIED else "hf"
    return choice


def _static_generate(model):
    """`generate`-compatible call over evilspectra.fast's static-cache generator (same tokens, tested)."""
    from evilspectra.fast.generate import StaticGenerator

    generator = StaticGenerator(model)
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id

    def generate(input_ids, attention_mask, max_new_tokens, do_sample=False, temperature=0.0, top_p=1.0, top_k=0):
        new = generator(
            input_ids,
            attention_mask,
            max_new_tokens,
            temperature if do_sample else 0.0,
            top_p,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        return torch.cat([input_ids, new], dim=1)  # HF's layout: prompt, then the new tokens

    return generate


@torch.inference_mode()
def _generate(
    generate,
    tok,
    batch: list[_Job],
    settings: EvalSettings,
    kwargs: dict,
    device: torch.device,
    pad_to: int | None = None,
) -> list[Sample]:
    texts = [_job_prompt(tok, j, kwargs) for j in batch]
    enc = _encode(tok, texts, device, pad_to)
    temperature = batch[0].temperature
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=settings.top_p, top_k=0)
        if temperature > 0
        else dict(do_sample=False)
    )
    out = generate(**enc, max_new_tokens=settings.max_new_tokens, **sampling)
    new = out[:, enc["input_ids"].shape[1] :]  # left padding: new tokens start at the same column
    answers = tok.batch_decode(new, skip_special_tokens=True)
    return [_sample(j, text, a, kwargs) for j, text, a in zip(batch, texts, answers)]


# ------------------------------------------------------------------------- adapter logit check


def merge_checked(base, adapter_dir: Path, probe: dict, name: str = "merged weights"):
    """Load the adapter with PEFT, merge it into `base` and check the merged model's logits on
    `probe` against PEFT's own (unmerged) forward. Returns the merged plain model."""
    peft_model = load_adapter(base, adapter_dir)
    with torch.inference_mode():
        reference = peft_model(**probe).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(**probe).logits
    merged = peft_model.merge_and_unload()
    with torch.inference_mode():
        logits = merged(**probe).logits
    check_logits(logits, reference, base_logits, name, adapter_dir)
    return merged


def check_logits(
    logits: torch.Tensor, reference: torch.Tensor, base: torch.Tensor, name: str, adapter_dir: Path, rtol: float = 0.2
) -> None:
    """Raise AdapterError unless `logits` (the sampler's) match `reference` (PEFT's forward).

    All three are logits of shape (batch, seq, vocab), compared as next-token distributions by
    total variation distance (in [0, 1]; robust to noise on improbable tokens). Allowed: a floor
    for the dtype's rounding (fp32 1e-4, bf16/fp16 0.02) plus `rtol` times the adapter's own effect
    max TV(reference, base). A lost rsLoRA scaling (alpha/r instead of alpha/sqrt(r)) shrinks the
    adapter's effect sqrt(r)-fold and fails the check.
    """
    p, ref, base_p = (torch.softmax(x.float(), dim=-1) for x in (logits, reference, base))
    floor = 1e-4 if logits.dtype == torch.float32 else 0.02
    error = 0.5 * (p - ref).abs().sum(-1).max().item()
    effect = 0.5 * (ref - base_p).abs().sum(-1).max().item()
    _assert_close(error, effect, floor, rtol, name, adapter_dir)


def _assert_close(error: float, effect: float, floor: float, rtol: float, name: str, adapter_dir: Path) -> None:
    if not error <= floor + rtol * effect:  # `not <=` also catches NaN
        raise AdapterError(
            f"{adapter_dir}: the {name} do not reproduce PEFT's forward pass (distance {error:.4g}, "
            f"adapter effect {effect:.4g}); is the LoRA scaling (rsLoRA) honoured?"
        )


# ---------------------------------------------------------------------------------- vLLM backend


def _sample_vllm(model_name: str, adapter_dir: Path | None, jobs: list[_Job], settings: EvalSettings) -> list[Sample]:
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise ConfigError(
            "eval.backend: 'vllm' needs the vllm package (pip install 'evilspectra[vllm]'); use backend 'hf'"
        ) from None
    path = resolve_model(model_name)
    tok = load_tokenizer(model_name, padding_side="left")
    kwargs = resolve_kwargs(tok, settings.chat_template_kwargs)
    lora, reference = None, None
    engine_args: dict = {
        "model": path,
        "seed": settings.seed,
        "dtype": "bfloat16",
        "tensor_parallel_size": settings.tensor_parallel_size,
    }
    if adapter_dir is not None:
        config = AdapterDir(adapter_dir).read_config()
        engine_args.update(enable_lora=True, max_lora_rank=_vllm_rank(config))
        lora = LoRARequest("adapter", 1, str(adapter_dir))
        device_map = "auto" if settings.tensor_parallel_size > 1 else settings.device_map  # too big for one GPU
        reference = _peft_prompt_logprobs(model_name, adapter_dir, tok, _probe(tok, jobs, kwargs), device_map)
    llm = vllm.LLM(**engine_args)
    if adapter_dir is not None and reference is not None:  # an adapter: its PEFT reference was taken
        _check_vllm(llm, lora, tok, reference, adapter_dir)
    texts = [_job_prompt(tok, j, kwargs) for j in jobs]
    # token ids, as the HF path encodes them: vLLM would add a second BOS to a rendered Llama/Gemma prompt
    prompts = [{"prompt_token_ids": ids} for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    params = [
        vllm.SamplingParams(
            temperature=j.temperature, top_p=settings.top_p, max_tokens=settings.max_new_tokens, seed=settings.seed + i
        )
        for i, j in enumerate(jobs)
    ]
    outputs = llm.generate(prompts, params, lora_request=lora)
    return [_sample(j, text, o.outputs[0].text, kwargs) for j, text, o in zip(jobs, texts, outputs)]


def _vllm_rank(adapter_config: dict) -> int:
    """vLLM's max_lora_rank: the adapter's largest rank, rounded up to a size vLLM accepts."""
    rank = max([adapter_config["r"], *adapter_config.get("rank_pattern", {}).values()])
    return next((s for s in (8, 16, 32, 64, 128, 256, 320, 512) if s >= rank), rank)


def _peft_prompt_logprobs(
    model_name: str, adapter_dir: Path, tok, probe_text: str, device_map: str | None = None
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(probe token ids, PEFT log-probs of each next probe token, base log-probs), on the GPU(s) in bf16."""
    device = pick_device()
    base = load_base_model(model_name, pick_dtype("auto", device), device, device_map)
    probe = _encode(tok, [probe_text], base.device)
    ids = probe["input_ids"][0]
    peft_model = load_adapter(base, adapter_dir)
    with torch.inference_mode():
        ref = torch.log_softmax(peft_model(**probe).logits[0, :-1].float(), -1)
        with peft_model.disable_adapter():
            base_lp = torch.log_softmax(base(**probe).logits[0, :-1].float(), -1)
    take = ids[1:].unsqueeze(-1)
    result = ids.tolist(), ref.gather(-1, take).squeeze(-1).cpu(), base_lp.gather(-1, take).squeeze(-1).cpu()
    del peft_model, base
    torch.cuda.empty_cache()
    return result


def _check_vllm(llm, lora, tok, reference, adapter_dir: Path) -> None:
    import vllm

    ids, ref, base = reference
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0)
    out = llm.generate([{"prompt_token_ids": ids}], params, lora_request=lora)[0]
    # vLLM gives the log-prob of each actual next prompt token: compare those probabilities
    got = torch.tensor([lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], ids[1:])])
    error = (got.exp() - ref.exp()).abs().max().item()
    effect = (ref.exp() - base.exp()).abs().max().item()
    _assert_close(error, effect, 0.02, 0.2, "vLLM log-probs", adapter_dir)


# --------------------------------------------------------------------------------------- helpers


def progress_bar(enabled: bool = True) -> Progress | LineProgress:
    """A rich progress bar (description, bar, done/total, time left), plain lines off a terminal;
    silent when not enabled."""
    if enabled and not on_terminal():
        return LineProgress()
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled
    )


def samples_to_jsonl(samples: list[Sample]) -> str:
    return "".join(json.dumps(asdict(s)) + "\n" for s in samples)
