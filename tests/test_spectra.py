"""LoRA spectra against dense float64 SVD, metrics, adapter reading, the regulariser."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from evilspectra.errors import AdapterError
from evilspectra.spectra import (
    SpectralRegulariser,
    adapter_spectra,
    aggregate_spectra,
    lora_factor_pairs,
    lora_singular_values,
    plot_normalised_spectra,
    read_spectra_csv,
    run_spectra,
    spectral_metrics,
    spectral_penalty,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def dense_svdvals(A: torch.Tensor, B: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    return torch.linalg.svdvals(scaling * B.double() @ A.double())[..., : A.shape[-2]]


def factors(kind: str, r: int = 8, d_in: int = 96, d_out: int = 64, seed: int = 0):
    """Random, ill-conditioned (singular values spread over 1e-4..1) or rank-deficient factors."""
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    if kind == "ill":
        B = B * torch.logspace(0, -4, r)
    elif kind == "deficient":
        B[:, r // 2 :] = B[:, : r - r // 2] * 2.0  # rank r/2
    return A.double(), B.double()


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm())


# ------------------------------------------------------------------------ singular values


@pytest.mark.parametrize("kind", ["random", "ill", "deficient"])
def test_qr_matches_dense_svd(kind):
    A, B = factors(kind)
    sigma = lora_singular_values(A, B, scaling=2.5)
    ref = dense_svdvals(A, B, 2.5)
    assert sigma.shape == (8,)
    assert rel_err(sigma, ref) <= 1e-5
    # each value, not just the whole vector (the small ones of the ill-conditioned case too)
    assert torch.all((sigma - ref).abs() <= 1e-5 * ref.abs() + 1e-9 * ref[0])
    assert torch.all(sigma[:-1] >= sigma[1:])


def test_cholesky_matches_on_well_conditioned_and_is_graceful_on_rank_deficient():
    A, B = factors("random")
    assert rel_err(lora_singular_values(A, B, method="cholesky"), dense_svdvals(A, B)) <= 1e-4
    A, B = factors("deficient")
    sigma = lora_singular_values(A, B, method="cholesky")  # no exception
    ref = dense_svdvals(A, B)
    # either NaN (factorisation failed) or close on the non-zero part of the spectrum
    assert torch.isnan(sigma).all() or torch.allclose(sigma[:4].double(), ref[:4], rtol=1e-3)


def test_batched_equals_one_by_one_and_zero_B_gives_zeros():
    pairs = [factors(k, seed=i) for i, k in enumerate(["random", "ill", "deficient"])]
    A = torch.stack([a for a, _ in pairs])
    B = torch.stack([b for _, b in pairs])
    B[1] = 0.0
    for method in ("qr", "cholesky"):
        batched = lora_singular_values(A, B, method=method)
        assert batched.shape == (3, 8)
        assert torch.equal(batched[1], torch.zeros(8, dtype=batched.dtype))
    batched = lora_singular_values(A, B)
    for i in (0, 2):
        assert torch.allclose(batched[i], lora_singular_values(A[i], B[i]))


def test_rank_larger_than_a_dimension_is_padded_with_zeros():
    A, B = factors("random", r=8, d_in=5, d_out=64)
    sigma = lora_singular_values(A, B)
    assert sigma.shape == (8,)
    assert rel_err(sigma[:5], torch.linalg.svdvals(B @ A)[:5]) <= 1e-10
    assert torch.all(sigma[5:] == 0)


# ------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("r", [1, 4, 32])
def test_flat_spectrum_metrics(r):
    m = spectral_metrics([0.7] * r)
    assert m["stable_rank"] == pytest.approx(r)
    assert m["spectral_entropy"] == pytest.approx(math.log(r), abs=1e-12)
    assert m["condition_number"] == pytest.approx(1.0)
    assert m["frobenius_nuclear"] == pytest.approx(1 / math.sqrt(r))


def test_metrics_definitions_and_scale_invariance():
    s = [4.0, 2.0, 1.0]
    m = spectral_metrics(s)
    p = [x / 7 for x in s]
    assert m["stable_rank"] == pytest.approx(21 / 16)
    assert m["spectral_entropy"] == pytest.approx(-sum(x * math.log(x) for x in p))
    assert m["condition_number"] == pytest.approx(4.0)
    assert m["frobenius_nuclear"] == pytest.approx(math.sqrt(21) / 7)
    scaled = spectral_metrics([1e-6 * x for x in s[::-1]])  # order and scale do not matter
    for k in m:
        assert scaled[k] == pytest.approx(m[k], rel=1e-12)
    A, B = factors("ill")
    a = spectral_metrics(lora_singular_values(A, B))
    b = spectral_metrics(lora_singular_values(3 * A, 1e-3 * B, scaling=40.0))
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-8)


def test_zero_and_rank_deficient_spectra():
    assert all(math.isnan(v) for v in spectral_metrics([0.0, 0.0]).values())
    m = spectral_metrics([2.0, 0.0])
    assert m["condition_number"] == math.inf
    assert m["stable_rank"] == pytest.approx(1.0)
    assert m["spectral_entropy"] == pytest.approx(0.0)


# ------------------------------------------------------------------------ adapters on disk


def save_peft_adapter(model_dir, out, use_rslora=True, seed=0, **cfg):
    """A real PEFT adapter of the tiny model with random non-zero B; returns the PEFT model."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, use_rslora=use_rslora, target_modules=TARGETS, **cfg)
    )
    with torch.no_grad():
        for _, _, B in lora_factor_pairs(peft_model):
            B.normal_()
    peft_model.save_pretrained(out)
    return peft_model


@pytest.mark.parametrize("use_rslora", [True, False])
def test_peft_adapter_read_back(tiny_model_dir, tmp_path, use_rslora):
    patterns = dict(rank_pattern={"k_proj": 2, "layers.1.mlp.down_proj": 6}, alpha_pattern={"v_proj": 3})
    peft_model = save_peft_adapter(tiny_model_dir, tmp_path / "ad", use_rslora=use_rslora, **patterns)
    df = adapter_spectra(tmp_path / "ad")
    assert len(df) == 2 * 7 and set(df["kind"]) == set(TARGETS) and set(df["layer"]) == {0, 1}
    by_module = df.set_index("module")
    for name, module in peft_model.named_modules():
        if not hasattr(module, "get_delta_weight") or "default" not in getattr(module, "lora_A", {}):
            continue
        row = by_module.loc[name.removeprefix("base_model.model.")]
        assert row["r"] == module.r["default"]
        assert row["scaling"] == pytest.approx(module.scaling["default"])
        with torch.no_grad():
            ref = torch.linalg.svdvals(module.get_delta_weight("default").double())[: row["r"]]
        assert rel_err(torch.tensor(row["sigma"]), ref) <= 1e-5
        assert row["frobenius_nuclear"] == pytest.approx(spectral_metrics(ref)["frobenius_nuclear"])
    assert by_module.loc["model.layers.0.self_attn.k_proj", "r"] == 2
    assert by_module.loc["model.layers.1.mlp.down_proj", "r"] == 6
    assert by_module.loc["model.layers.0.mlp.down_proj", "r"] == 4


def test_corrupt_truncated_and_mismatched_adapters(tiny_model_dir, tmp_path):
    save_peft_adapter(tiny_model_dir, tmp_path / "ad")
    weights = tmp_path / "ad" / "adapter_model.safetensors"
    blob = weights.read_bytes()

    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        adapter_spectra(tmp_path / "ad")
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(AdapterError, match="corrupt"):
        adapter_spectra(tmp_path / "ad")
    weights.unlink()
    with pytest.raises(AdapterError, match="missing"):
        adapter_spectra(tmp_path / "ad")

    weights.write_bytes(blob)
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "r": 5}))
    with pytest.raises(AdapterError, match="rank 5"):
        adapter_spectra(tmp_path / "ad")
    with pytest.raises(AdapterError, match="adapter_config.json"):
        adapter_spectra(tmp_path)


def test_run_dir_to_csv_aggregate_and_plot(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    for i, step in enumerate([10, 20]):
        save_peft_adapter(tiny_model_dir, run / "checkpoints" / f"step-{step:06d}", seed=i)
    save_peft_adapter(tiny_model_dir, run / "adapter", seed=2)
    (run / "manifest.json").write_text(json.dumps({"steps_done": 25}))
    csv = run_spectra(run)
    df = read_spectra_csv(csv)
    assert list(df.columns[:3]) == ["checkpoint", "step", "module"]
    assert list(df["checkpoint"].unique()) == ["step-000010", "step-000020", "final"]
    assert set(df.loc[df["checkpoint"] == "final", "step"]) == {25}
    assert all(len(s) == 4 for s in df["sigma"])
    agg = aggregate_spectra(df)
    assert list(agg["step"]) == [10, 20, 25] and list(agg["n_modules"]) == [14, 14, 14]
    final = df[df["checkpoint"] == "final"]
    assert agg.iloc[-1]["frobenius_nuclear"] == pytest.approx(final["frobenius_nuclear"].mean())
    png = plot_normalised_spectra({"a": df, "b": df}, tmp_path / "s.png")
    assert png.stat().st_size > 1000


def test_cli_on_a_run_and_an_adapter(tiny_model_dir, tmp_path):
    from evilspectra.cli import _register, app

    _register()
    run = tmp_path / "run"
    save_peft_adapter(tiny_model_dir, run / "adapter")
    save_peft_adapter(tiny_model_dir, tmp_path / "ad", seed=1)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["spectra", str(run), str(tmp_path / "ad"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (run / "spectra.csv").is_file() and (out / "spectra.png").is_file()
    assert set(pd.read_csv(out / "spectra.csv")["run"]) == {str(tmp_path / "ad")}
    assert "final" in res.output


# ------------------------------------------------------------------------ regulariser


def reference_reg(pairs, aggregation="mean"):
    """Per-module loop with the dense float64 SVD of B @ A."""
    terms = []
    for A, B in pairs:
        s = torch.linalg.svdvals(B.double() @ A.double())[: A.shape[0]]
        terms.append(0.0 if B.norm() == 0 else float(s.norm() / s.sum() - 1 / math.sqrt(A.shape[0])))
    return sum(terms) / (len(terms) if aggregation == "mean" else 1)


def peft_model(model_dir, zero_b="none", r=4, dtype=torch.float32):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=8, use_rslora=True, target_modules=TARGETS))
    with torch.no_grad():
        for i, (_, _, B) in enumerate(lora_factor_pairs(pm)):
            if zero_b == "none" or (zero_b == "some" and i % 3):
                B.normal_()
    return pm


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_regulariser_batched_equals_per_module_loop(tiny_model_dir, aggregation):
    pm = peft_model(tiny_model_dir, zero_b="some")
    reg = SpectralRegulariser(pm, aggregation=aggregation)
    pairs = [(A.detach(), B.detach()) for _, A, B in lora_factor_pairs(pm)]
    assert reg.n_modules == 14 and len(reg.groups) == 4  # {q,o}, {k,v}, {gate,up}, {down}
    assert float(reg()) == pytest.approx(reference_reg(pairs, aggregation), rel=1e-5)
    for method in ("cholesky", "gram"):
        other = SpectralRegulariser(pm, method=method, aggregation=aggregation)
        assert float(other()) == pytest.approx(reference_reg(pairs, aggregation), rel=1e-4)


@pytest.mark.parametrize("zero_b", ["all", "some"])
def test_regulariser_finite_with_zero_B(tiny_model_dir, zero_b):
    pm = peft_model(tiny_model_dir, zero_b=zero_b)
    for method in ("qr", "cholesky", "gram"):
        loss = SpectralRegulariser(pm, method=method)()
        loss.backward()
        assert torch.isfinite(loss)
        for _, A, B in lora_factor_pairs(pm):
            assert torch.isfinite(A.grad).all() and torch.isfinite(B.grad).all()
            if B.detach().norm() == 0:  # an untrained module gets no push
                assert A.grad.abs().max() == 0 and B.grad.abs().max() == 0
            A.grad = B.grad = None
    if zero_b == "all":
        assert float(loss) == 0.0


def test_regulariser_is_zero_when_flat_positive_otherwise_and_scale_invariant(tiny_model_dir):
    pm = peft_model(tiny_model_dir)
    reg = SpectralRegulariser(pm)
    value = float(reg())
    assert value > 0
    with torch.no_grad():
        for _, _A, B in lora_factor_pairs(pm):
            B.mul_(1e-3)
    assert float(reg()) == pytest.approx(value, rel=1e-4)
    with torch.no_grad():  # orthonormal rows/columns: B A has r equal singular values
        for _, A, B in lora_factor_pairs(pm):
            A.copy_(torch.linalg.qr(torch.randn(A.shape[1], A.shape[0])).Q.T)
            B.copy_(torch.linalg.qr(torch.randn(B.shape[0], B.shape[1])).Q * 0.3)
    assert abs(float(reg())) < 1e-6


def test_penalty_gradcheck():
    """torch.autograd.gradcheck of the batched penalty (3 modules, r = 3) in float64."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    B[1, :, 2] *= 1e-2  # one badly conditioned module
    B.requires_grad_()
    for method in ("qr", "cholesky", "gram"):
        assert torch.autograd.gradcheck(lambda A, B: spectral_penalty(A, B, method), (A, B), atol=1e-6)
