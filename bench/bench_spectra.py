"""Benchmark of evilspectra.spectra on the CPU (issue 5).

(1) Spectra of all 252 modules of a Qwen3-8B-shaped rank-32 adapter (36 layers x q, k, v, o, gate,
    up, down; random non-zero factors), read from a PEFT-format directory: median of several runs,
    qr vs cholesky, and the speed-up over a dense SVD of B @ A measured on one module of each
    distinct shape and extrapolated to all 252. Wall and CPU time (robust on a shared machine).
(2) Step-time overhead of the spectral regulariser on the toy model: LoRA SFT steps (forward,
    backward, AdamW step) with and without it, alternated step by step in one process, medians.

Prints one JSON line per figure and writes them to bench/results/spectra-cpu.jsonl.
Run: python bench/bench_spectra.py [--repeats 5] [--steps 60] [--threads N] [--only adapter|regulariser]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from evilspectra.spectra import SpectralRegulariser, adapter_spectra, lora_singular_values

RESULTS = Path(__file__).parent / "results" / "spectra-cpu.jsonl"
QWEN3_8B = {  # kind: (d_in, d_out)
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 1024),
    "self_attn.v_proj": (4096, 1024),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (4096, 12288),
    "mlp.up_proj": (4096, 12288),
    "mlp.down_proj": (12288, 4096),
}
LAYERS, RANK = 36, 32


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def emit(rows: list, figure: str, **fields) -> None:
    row = {"figure": figure, **fields, "machine": machine()}
    rows.append(row)
    print(json.dumps(row), flush=True)


def timed(fn, repeats: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) of each of `repeats` calls."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def medians(times: list[tuple[float, float]]) -> dict:
    return {
        "wall_s_median": round(statistics.median(t[0] for t in times), 3),
        "cpu_s_median": round(statistics.median(t[1] for t in times), 3),
    }


def write_qwen3_8b_adapter(out: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A PEFT-format rsLoRA r=32 alpha=64 adapter with Qwen3-8B shapes and random non-zero factors."""
    gen = torch.Generator().manual_seed(0)
    tensors, modules = {}, {}
    for layer in range(LAYERS):
        for kind, (d_in, d_out) in QWEN3_8B.items():
            name = f"model.layers.{layer}.{kind}"
            A = torch.randn(RANK, d_in, generator=gen) / math.sqrt(d_in)
            B = torch.randn(d_out, RANK, generator=gen) * 0.02
            tensors[f"base_model.model.{name}.lora_A.weight"] = A
            tensors[f"base_model.model.{name}.lora_B.weight"] = B
            modules[name] = (A, B)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 64,
        "use_rslora": True,
        "target_modules": [k.split(".")[-1] for k in QWEN3_8B],
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return modules


def bench_adapter(rows: list, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        modules = write_qwen3_8b_adapter(Path(tmp) / "adapter")
        adapter_spectra(Path(tmp) / "adapter")  # warm-up: MKL, page cache
        ours = {}
        for method in ("qr", "cholesky"):
            times = timed(lambda: adapter_spectra(Path(tmp) / "adapter", method), repeats)
            ours[method] = medians(times)
            emit(
                rows,
                f"adapter_spectra_252_modules_{method}",
                **ours[method],
                repeats=repeats,
                target_seconds=2.0,
                note="end to end: read safetensors, singular values, metrics, DataFrame",
            )

    # Dense baseline: svdvals of the formed d_out x d_in float32 matrix, one module of each distinct
    # shape (q=o, k=v, gate=up, down), extrapolated to all 252 modules by shape counts.
    dense, worst_err = {}, 0.0
    shapes: dict[tuple, list[str]] = {}
    for kind, shape in QWEN3_8B.items():
        shapes.setdefault(shape, []).append(kind)
    for kinds in shapes.values():
        A, B = modules[f"model.layers.0.{kinds[0]}"]
        wall, cpu = time.perf_counter(), time.process_time()
        ref = torch.linalg.svdvals(B @ A)[:RANK].double()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        dense[kinds[0]] = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "modules_of_this_shape": LAYERS * len(kinds),
        }
        worst_err = max(worst_err, float((lora_singular_values(A, B) - ref).norm() / ref.norm()))
    extrapolated = {c: sum(d[f"{c}_s"] * d["modules_of_this_shape"] for d in dense.values()) for c in ("wall", "cpu")}
    emit(
        rows,
        "dense_svd_per_shape",
        per_shape=dense,
        extrapolated_252_wall_s=round(extrapolated["wall"], 1),
        extrapolated_252_cpu_s=round(extrapolated["cpu"], 1),
        max_relative_error_qr_vs_dense_float32=worst_err,
    )
    emit(
        rows,
        "speedup_qr_vs_dense_svd",
        speedup_cpu=round(extrapolated["cpu"] / ours["qr"]["cpu_s_median"], 1),
        speedup_wall=round(extrapolated["wall"] / ours["qr"]["wall_s_median"], 1),
        note="extrapolated dense SVD time for 252 modules / median adapter_spectra time (qr)",
    )


def toy_shaped_model():
    """The shipped toy model, or (weights not built yet) a random model of the toy's shape."""
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

    from evilspectra.errors import ConfigError
    from evilspectra.models import resolve_model
    from evilspectra.toy.build import toy_config
    from evilspectra.toy.tokenizer import build_tokenizer

    try:
        return AutoModelForCausalLM.from_pretrained(resolve_model("toy")), "toy weights"
    except ConfigError:
        torch.manual_seed(0)
        return Qwen3ForCausalLM(
            toy_config(build_tokenizer())
        ), "random model of the toy's shape (toy weights not built)"


def bench_regulariser(rows: list, steps: int, batch: int, seq: int) -> None:
    from peft import LoraConfig, get_peft_model

    from evilspectra.train import sft_loss_sum

    model, which = toy_shaped_model()
    model = get_peft_model(
        model,
        LoraConfig(
            r=32,
            lora_alpha=64,
            use_rslora=True,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4)
    reg = SpectralRegulariser(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size, (batch, seq), generator=gen)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def step(with_reg: bool) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one optimiser step."""
        wall, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = sft_loss_sum(model, data) / (batch * (seq - 1))
        if with_reg:
            loss = loss + 1.0 * reg()
        loss.backward()
        opt.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    for _ in range(5):  # warm-up; also moves B away from 0 so the regulariser does real work
        step(True)
    plain, with_reg = [], []
    for _ in range(steps):  # alternate, so load from other processes hits both arms alike
        plain.append(step(False))
        with_reg.append(step(True))
    # CPU time is the robust figure on a shared machine; wall time is what a user waits
    for clock, i in (("cpu", 1), ("wall", 0)):
        p = statistics.median(t[i] for t in plain)
        w = statistics.median(t[i] for t in with_reg)
        emit(
            rows,
            f"regulariser_step_overhead_toy_{clock}",
            model=which,
            batch=batch,
            seq=seq,
            lora="rsLoRA r=32 alpha=64, 7 targets",
            method=reg.method,
            modules=reg.n_modules,
            shape_groups=len(reg.groups),
            steps_per_arm=steps,
            step_ms_median_plain=round(1e3 * p, 2),
            step_ms_median_with_reg=round(1e3 * w, 2),
            overhead_percent=round(100 * (w / p - 1), 1),
            target_percent=15,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per arm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--only", choices=["adapter", "regulariser"])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list = []
    if args.only != "regulariser":
        bench_adapter(rows, args.repeats)
    if args.only != "adapter":
        bench_regulariser(rows, args.steps, args.batch, args.seq)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
