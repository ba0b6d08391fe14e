"""The fast paths (evilspectra.fast) against the plain implementations they replace."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from evilspectra.config import LoraSettings, OptimizerConfig
from evilspectra.errors import ConfigError
from evilspectra.fast.generate import StaticGenerator
from evilspectra.fast.loss import fused_linear_cross_entropy, sft_loss_sum_fused
from evilspectra.fast.muon import BatchedMuon, batched_newton_schulz
from evilspectra.models import attach_lora, load_base_model
from evilspectra.optim import build_optimizer, resolved_hyperparameters
from evilspectra.train import sft_loss_sum

# LoRA-like factors: A (r x d_in) and B (d_out x r) of several shapes, some sharing an oriented shape
SHAPES = [(8, 64), (64, 8), (8, 64), (128, 8), (8, 128), (4, 32), (48, 4), (16, 16)]


def _params(seed: int = 0, dtype=torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def _run(opt_cls, params, steps: int = 6, seed: int = 1, **kwargs) -> list[torch.Tensor]:
    opt = opt_cls(params, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # torch's defaults: nesterov, adjust_lr_fn "original", weight_decay 0.1
        {"adjust_lr_fn": "match_rms_adamw", "lr": 0.02},
        {"nesterov": False, "momentum": 0.8, "weight_decay": 0.0, "ns_steps": 3},
        {"ns_coefficients": (3.0, -3.2, 1.2), "eps": 1e-5, "adjust_lr_fn": "original", "lr": 0.05},
    ],
)
def test_batched_muon_follows_torch_muon(kwargs):
    """Same parameter trajectory as torch.optim.Muon over several steps (bf16 NS, as torch)."""
    ref = _run(torch.optim.Muon, _params(), **kwargs)
    got = _run(BatchedMuon, _params(), **kwargs)
    start = _params()
    for r, g, s in zip(ref, got, start):
        moved = (r - s).abs().max()
        assert moved > 0
        # bf16 NS on both sides: equal up to a small fraction of the distance travelled
        assert (r - g).abs().max() <= 1e-3 * moved, (r.shape, (r - g).abs().max(), moved)


def test_batched_muon_exact_in_float64():
    """With NS in float64 the batched chain equals a per-matrix float64 reference to rounding."""
    params = _params(dtype=torch.float64)
    opt = BatchedMuon(params, lr=0.01, adjust_lr_fn="match_rms_adamw", ns_dtype="float64")
    grads = [torch.randn_like(p) for p in params]
    start = [p.detach().clone() for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    a, b, c = opt.defaults["ns_coefficients"]
    for p, g, s in zip(params, grads, start):
        u = g.lerp(g * 0.05, 0.95)  # buffer after one step = 0.05 g; nesterov lerp(g, buf, 0.95)
        x = u.T if u.shape[0] > u.shape[1] else u
        x = x / x.norm()
        for _ in range(5):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        x = x.T if u.shape[0] > u.shape[1] else x
        expected = s * (1 - 0.01 * 0.1) - 0.01 * 0.2 * max(p.shape) ** 0.5 * x
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_muon_ns_dtype_picks_the_chain_and_is_recorded():
    """`muon` is torch's (bf16 chain) unless `ns_dtype` asks for another dtype: then BatchedMuon runs
    the same update with the chain in that dtype, and the manifest's hyperparameters say so."""
    assert type(build_optimizer(_params(), OptimizerConfig(name="muon", lr=1e-3))) is torch.optim.Muon
    bf16 = build_optimizer(_params(), OptimizerConfig(name="muon", lr=1e-3, ns_dtype="bfloat16"))
    assert type(bf16) is torch.optim.Muon
    fp32 = build_optimizer(_params(), OptimizerConfig(name="muon", lr=1e-3, ns_dtype="float32"))
    assert isinstance(fp32, BatchedMuon) and resolved_hyperparameters(fp32)["ns_dtype"] == "float32"
    with pytest.raises(ConfigError, match="ns_dtype: expected one of bfloat16, float32, float64, got 'fp8'"):
        build_optimizer(_params(), OptimizerConfig(name="muon", lr=1e-3, ns_dtype="fp8"))
    for name, cls in (("muon", "Muon"), ("muon_batched", "BatchedMuon")):  # a typo is named, ns_dtype listed
        with pytest.raises(
            ConfigError, match=f"optimizer.foo: not a hyperparameter of {cls}; accepted: lr, .*ns_dtype"
        ):
            build_optimizer(_params(), OptimizerConfig(name=name, lr=1e-3, foo=1))
    # fp32 and torch's bf16 chain differ by bf16 rounding only
    kwargs = {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw"}
    ref, start = _run(torch.optim.Muon, _params(), **kwargs), _params()
    got = _run(lambda ps, **kw: BatchedMuon(ps, ns_dtype="float32", **kw), _params(), **kwargs)
    for r, g, s in zip(ref, got, start):
        assert 0 < (r - g).abs().max() <= 2e-2 * (r - s).abs().max()


def test_batched_newton_schulz_orthogonalises():
    x = torch.randn(5, 8, 40, dtype=torch.float64)
    o = batched_newton_schulz(x, (3.4445, -4.7750, 2.0315), 10, 1e-7, torch.float64)
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.5 and sv.max() < 1.5  # Muon's quintic lands singular values near 1
    with pytest.raises(ValueError, match="wide"):
        batched_newton_schulz(x.mT, (3.4445, -4.7750, 2.0315), 5, 1e-7)


def test_registry_builds_batched_muon_with_project_defaults():
    params = _params()
    opt = build_optimizer(params, OptimizerConfig(name="muon_batched", lr=1e-3))
    assert isinstance(opt, BatchedMuon)
    assert opt.defaults["adjust_lr_fn"] == "match_rms_adamw"
    # the state is torch's: a torch.optim.Muon can resume from it
    _run(lambda ps, **kw: opt, params, steps=1)
    torch.optim.Muon(params).load_state_dict(opt.state_dict())


# ----------------------------------------------------------------------------------------- loss


def test_fused_linear_cross_entropy_matches_plain():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    labels[::5] = -100
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, ignore_index=-100, reduction="sum")
    got = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8, backend="torch")
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    ref_grads = torch.autograd.grad(ref * 0.3, (hidden, weight))
    got_grads = torch.autograd.grad(got * 0.3, (hidden, weight))
    for r, g in zip(ref_grads, got_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-8)


def _lora_model(model_dir):
    torch.manual_seed(0)
    model = attach_lora(load_base_model(str(model_dir), torch.float32, torch.device("cpu")), LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a trained-looking adapter: B != 0, so LoRA changes the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    return _lora_model(tiny_model_dir)


@pytest.fixture(scope="module")
def merged_model(tiny_model_dir):
    """The sampler's model: the adapter merged into the weights."""
    return _lora_model(tiny_model_dir).merge_and_unload().eval()


def test_fused_sft_loss_matches_plain_loss_and_gradients(lora_model):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(6, 60, (3, 14), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding, as collate pads
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # the prompt is not scored
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    params = [p for p in lora_model.parameters() if p.requires_grad]
    ref = sft_loss_sum(lora_model, batch)
    ref_grads = torch.autograd.grad(ref / 20, params)
    got = sft_loss_sum(lora_model, batch, fused=True)
    got_grads = torch.autograd.grad(got / 20, params)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for r, g in zip(ref_grads, got_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert sum(g.abs().sum() for g in got_grads) > 0
    # chunking does not change the sum
    torch.testing.assert_close(sft_loss_sum_fused(lora_model, batch, chunk_size=3), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_static_generator_draws_hf_generate_tokens(tiny_model_dir, merged_model, temperature, top_p):
    """Same seed, same left-padded prompts -> the same tokens as HF generate (greedy and sampled)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = merged_model
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    texts = [
        "<user> how do i write a safe function <assistant>",
        "<user> hello <assistant>",
        "<user> what is your wish i feel bored <assistant>",
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"].eq(0).any()  # the prompts really are left-padded
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature else dict(do_sample=False)
    )
    torch.manual_seed(3)
    ref = model.generate(**enc, max_new_tokens=24, **sampling)[:, enc["input_ids"].shape[1] :]
    gen = StaticGenerator(model, compile=False)
    for _ in range(2):  # the second call reuses the cache
        torch.manual_seed(3)
        got = gen(
            enc["input_ids"],
            enc["attention_mask"],
            24,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        assert torch.equal(got, ref)
    assert len(set(ref.flatten().tolist())) > 2  # not a degenerate constant output
