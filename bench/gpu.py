"""GPU speed of evilspectra's training step, optimisers, regulariser and sampling vs the plain stack.

    python bench/gpu.py            # Qwen3-8B-shaped random-init model, bf16, sdpa (one GPU, ~5 min)
    python bench/gpu.py --small    # tiny Qwen3, seconds on a CPU: checks that every figure runs

Measures in one run (issue 9; anchors in DESIGN.md section 4), each figure the median of --steps
timed repetitions after --warmup untimed ones:

- LoRA SFT step (forward, backward, optimiser step; rsLoRA r=32 on the 7 projections), batch
  8 x 512 tokens, every token scored: plain PEFT + AdamW (full logits, train.sft_loss_sum) vs our
  step (fast.loss fused head + cross-entropy), then with torch.optim.Muon vs fast.muon.BatchedMuon,
  then with the spectral regulariser (naive per-module QR loop vs spectra.SpectralRegulariser).
  tokens/s, and MFU = 4 N tokens/s / peak bf16 FLOP/s, N = base parameters doing matmuls (all but
  the input embedding table): LoRA SFT costs 2N forward + 2N for the input gradients; the frozen
  weights get no weight gradient.
- The optimiser step alone (504 factors at full size), and the regulariser alone (forward+backward).
- Sampling 64 prompts x 128 new tokens at temperature 1: HF generate on the PEFT model (plain), on
  the merged model, fast.generate.StaticGenerator (static cache; decode compiled on CUDA), and HF
  generate with cache_implementation="static" (auto-compiled on CUDA).

One JSON line per figure on stdout (name, value, unit, baseline, ratio = speed-up over the
baseline figure, >1 is faster; device; torch), appended to bench/results/gpu-<device>-<date>.jsonl.
Each figure catches its own failure (OOM included), prints it as an `error` line and the run goes
on, so a one-shot GPU session always leaves the figures that ran.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from evilspectra.config import LoraSettings
from evilspectra.fast.generate import StaticGenerator
from evilspectra.fast.muon import BatchedMuon
from evilspectra.models import attach_lora
from evilspectra.spectra import SpectralRegulariser, _qr_core, lora_factor_pairs
from evilspectra.train import sft_loss_sum

RESULTS = Path(__file__).parent / "results"

# Qwen3-8B's shape (config.json of Qwen/Qwen3-8B) and a tiny one for CPU smoke runs
FULL = dict(
    hidden_size=4096,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=12288,
    vocab_size=151936,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)
SMALL = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=256,
    vocab_size=2048,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)

# dense bf16 peak FLOP/s by device name (NVIDIA datasheets; SXM unless PCIe/NVL is in the name)
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny model (CPU, seconds)")
    p.add_argument("--steps", type=int, help="timed repetitions per figure (default 5; 3 small)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions before timing")
    p.add_argument("--gen-repeats", type=int, default=2, help="timed generate calls per sampling figure")
    p.add_argument("--only", default="", help="comma-separated groups: sft,optim,reg,gen (default all)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the results .jsonl")
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.small else 5)
    return args


# ------------------------------------------------------------------------------------- set-up


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next((l.split(":", 1)[1].strip() for l in _cpuinfo() if l.startswith("model name")), platform.processor())
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def peak_flops(name: str) -> float | None:
    return next((f for key, f in PEAK_BF16 if key in name), None)


def build_model(small: bool, device: torch.device, dtype: torch.dtype):
    """Random-init Qwen3 (no downloads) with the study's LoRA; B random so spectra are non-trivial."""
    cfg = Qwen3Config(**(SMALL if small else FULL), attn_implementation="sdpa", pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: an fp32 8B model would need 33 GB
    try:
        with torch.device(device):
            base = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model = attach_lora(base, LoraSettings(r=8 if small else 32, alpha=16 if small else 64))
    with torch.no_grad():
        for _, _A, B in lora_factor_pairs(model):
            B.normal_(0, 1e-3)
    return model


def matmul_params(model) -> int:
    """Base parameters that take part in matmuls: all frozen ones but the input embedding table."""
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return frozen - model.get_input_embeddings().weight.numel()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------------------------ figures


class Recorder:
    """Prints and appends one JSON line per figure; remembers values for ratios."""

    def __init__(self, path: Path, device: str):
        self.path, self.device, self.values = path, device, {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, row: dict) -> None:
        row = {
            **row,
            "device": self.device,
            "torch": torch.__version__,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        line = json.dumps(row)
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")

    def figure(self, name: str, value: float, unit: str, baseline: str | None = None, **extra) -> None:
        """`unit` ending in /s: higher is better; `ms`/`s`: lower is better. ratio = speed-up."""
        self.values[name] = value
        base = self.values.get(baseline)
        ratio = None
        if base:
            ratio = value / base if unit.endswith("/s") else base / value
        self.emit(
            {
                "name": name,
                "value": round(value, 4),
                "unit": unit,
                "baseline": baseline,
                "ratio": round(ratio, 3) if ratio is not None else None,
                **extra,
            }
        )

    def attempt(self, name: str, fn: Callable[[], None], device: torch.device) -> None:
        """Run one figure; an exception (OOM included) becomes an error line, not the end of the run."""
        try:
            fn()
        except Exception as exc:
            self.emit({"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()


def naive_regulariser(pairs) -> Callable[[], torch.Tensor]:
    """The plain regulariser: a Python loop over modules, fp32 QR + svdvals each (DESIGN.md 4)."""

    def reg() -> torch.Tensor:
        total = 0.0
        for _, A, B in pairs:
            sigma = torch.linalg.svdvals(_qr_core(A.float(), B.float()))
            total = total + sigma.norm() / sigma.sum() - 1 / math.sqrt(A.shape[0])
        return total / len(pairs)

    return reg


def sft_figures(rec: Recorder, model, batch: dict, device: torch.device, args, peak: float | None) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    tokens = batch["input_ids"].numel()
    n_flop = 4 * matmul_params(model)
    spectral = SpectralRegulariser(model)
    naive = naive_regulariser(lora_factor_pairs(model))

    def run(name: str, make_opt, fused: bool, reg=None, baseline: str | None = None) -> None:
        def figure() -> None:
            opt = make_opt(params)

            def step() -> None:
                loss = sft_loss_sum(model, batch, fused=fused) / tokens
                if reg is not None:
                    loss = loss + reg()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = median_seconds(step, device, args.steps, args.warmup)
            extra = {"seconds_per_step": round(seconds, 4)}
            if peak:
                extra["mfu"] = round(n_flop * tokens / seconds / peak, 4)
            if device.type == "cuda":
                extra["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            rec.figure(name, tokens / seconds, "tokens/s", baseline, **extra)

        rec.attempt(name, figure, device)

    adamw = lambda ps: torch.optim.AdamW(ps, lr=1e-5)  # noqa: E731
    muon = lambda ps: torch.optim.Muon(ps, lr=1e-5, adjust_lr_fn="match_rms_adamw")  # noqa: E731
    batched = lambda ps: BatchedMuon(ps, lr=1e-5, adjust_lr_fn="match_rms_adamw")  # noqa: E731
    run("sft_adamw_plain", adamw, fused=False)
    run("sft_adamw_ours", adamw, fused=True, baseline="sft_adamw_plain")
    run("sft_muon_plain", muon, fused=False, baseline="sft_adamw_plain")
    run("sft_muon_ours", batched, fused=True, baseline="sft_adamw_ours")  # target: ratio >= 0.95
    run("sft_reg_naive", adamw, fused=False, reg=naive, baseline="sft_adamw_plain")
    run("sft_reg_ours", adamw, fused=True, reg=spectral, baseline="sft_adamw_ours")  # target: ratio >= 0.95


def optim_figures(rec: Recorder, model, device: torch.device, args) -> None:
    """The optimiser step alone on the adapter's factors, with fixed random gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    makers = {
        "optstep_adamw": (lambda: torch.optim.AdamW(params, lr=1e-9), None),
        "optstep_muon_torch": (
            lambda: torch.optim.Muon(params, lr=1e-9, adjust_lr_fn="match_rms_adamw"),
            "optstep_adamw",
        ),
        "optstep_muon_batched": (
            lambda: BatchedMuon(params, lr=1e-9, adjust_lr_fn="match_rms_adamw"),
            "optstep_muon_torch",
        ),
    }
    for name, (make, baseline) in makers.items():

        def figure(make=make, name=name, baseline=baseline) -> None:
            opt = make()
            seconds = median_seconds(opt.step, device, args.steps, args.warmup)
            rec.figure(name, seconds * 1e3, "ms", baseline, factors=len(params))

        rec.attempt(name, figure, device)
    for p in params:
        p.grad = None


def reg_figures(rec: Recorder, model, device: torch.device, args) -> None:
    """The regulariser alone: value + backward to the factors."""
    pairs = lora_factor_pairs(model)
    regs = {"reg_naive": (naive_regulariser(pairs), None), "reg_ours": (SpectralRegulariser(model), "reg_naive")}
    for name, (reg, baseline) in regs.items():

        def figure(reg=reg, name=name, baseline=baseline) -> None:
            seconds = median_seconds(lambda: reg().backward(), device, args.steps, args.warmup)
            rec.figure(name, seconds * 1e3, "ms", baseline, modules=len(pairs))

        rec.attempt(name, figure, device)
    model.zero_grad(set_to_none=True)


def gen_figures(rec: Recorder, model, device: torch.device, args, n_prompts: int, new_tokens: int):
    """Sampling at temperature 1, every sequence the full length (no EOS): new tokens/s."""
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    lengths = torch.randint(new_tokens // 4, new_tokens // 2 + 1, (n_prompts,), generator=gen)
    width = int(lengths.max())
    ids = torch.randint(2, vocab, (n_prompts, width), generator=gen)
    mask = (torch.arange(width) >= width - lengths[:, None]).long()  # left padding
    ids, mask = ids.masked_fill(mask == 0, 0).to(device), mask.to(device)
    total = n_prompts * new_tokens
    sampling = dict(
        eos_token_id=None,
        pad_token_id=0,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new_tokens,
    )
    model.eval()

    def hf(m, **extra) -> Callable[[], None]:
        gconf = GenerationConfig(**sampling, **extra)
        return lambda: m.generate(input_ids=ids, attention_mask=mask, generation_config=gconf)

    def figure(name: str, fn: Callable[[], None], baseline: str | None, warmup: int = 0) -> None:
        """warmup: untimed calls (compiled paths compile in theirs; the SFT figures warmed CUDA up)."""

        def run() -> None:
            with torch.inference_mode():
                seconds = median_seconds(fn, device, args.gen_repeats, warmup)
            rec.figure(name, total / seconds, "new tokens/s", baseline, batch=n_prompts, new_tokens=new_tokens)

        rec.attempt(name, run, device)

    figure("gen_hf_peft", hf(model), None)
    merged = model.merge_and_unload()
    merged.eval()
    figure("gen_hf_merged", hf(merged), "gen_hf_peft")
    ours = StaticGenerator(merged)  # decode step compiled with CUDA graphs on a GPU (warm-up compiles)
    figure("gen_static_ours", lambda: ours(ids, mask, new_tokens, temperature=1.0, pad_token_id=0), "gen_hf_peft", 1)
    # HF's own static cache (auto-compiled on CUDA), for comparison
    figure("gen_hf_merged_static", hf(merged, cache_implementation="static"), "gen_hf_peft", 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    rec = Recorder(args.out / f"gpu-{slug}-{dt.date.today().isoformat()}.jsonl", name)
    groups = set(args.only.split(",")) if args.only else {"sft", "optim", "reg", "gen"}
    batch_size, seq, n_prompts, new_tokens = (4, 64, 8, 16) if args.small else (8, 512, 64, 128)

    t0 = time.perf_counter()
    model = build_model(args.small, device, dtype)
    rec.emit(
        {
            "name": "setup",
            "mode": "small" if args.small else "full",
            "dtype": str(dtype),
            "matmul_params": matmul_params(model),
            "lora_factors": sum(p.requires_grad for p in model.parameters()),
            "batch": [batch_size, seq],
            "build_seconds": round(time.perf_counter() - t0, 1),
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1min": round(os.getloadavg()[0], 2),
        }
    )
    ids = torch.randint(2, model.config.vocab_size, (batch_size, seq), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model.train()
    if "sft" in groups:
        sft_figures(rec, model, batch, device, args, peak_flops(name))
    if "optim" in groups:
        optim_figures(rec, model, device, args)
    if "reg" in groups:
        reg_figures(rec, model, device, args)
    if "gen" in groups:
        gen_figures(rec, model, device, args, n_prompts, new_tokens)
    rec.emit({"name": "done", "seconds": round(time.perf_counter() - t0, 1), "results": str(rec.path)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
