"""What an audit finds in an adapter: where its run's record is, how it was trained, how concentrated
its spectrum is against the reference table, and its most concentrated modules."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from evilspectra.artefacts.paths import CHECKPOINTS, MANIFEST, AdapterDir, RunDir, read_manifest, resolve_adapter
from evilspectra.audit_references import concentration_threshold, load_references, nearest_reference
from evilspectra.errors import ConfigError, DataError
from evilspectra.registry import alias_of

WORST_MODULES = 5


def locate(adapter: str | Path) -> tuple[Path, Path | None, dict | None, str]:
    """(adapter dir, run dir, manifest, note) for a bare adapter, RUN/adapter, RUN/checkpoints/step-N or RUN.

    The manifest is only looked for where the training stage writes it, so an adapter copied out of
    its run directory counts as undocumented rather than borrowing an unrelated manifest.
    """
    adapter_dir = resolve_adapter(adapter)
    candidates = [adapter_dir.parent]
    if adapter_dir.parent.name == CHECKPOINTS:
        candidates.append(adapter_dir.parent.parent)
    for run_dir in candidates:
        path = RunDir(run_dir).manifest_path
        if not path.is_file():
            continue
        try:
            manifest = read_manifest(run_dir)
        except DataError as exc:
            return adapter_dir, run_dir, None, f"{path} is unreadable ({exc})"
        if manifest is None:
            return adapter_dir, run_dir, None, f"{path} is unreadable (not JSON)"
        return adapter_dir, run_dir, manifest, f"from {path}"
    return adapter_dir, None, None, f"no {MANIFEST} beside {adapter_dir} (a bare PEFT adapter)"


def adapter_base_model(adapter_dir: Path) -> str | None:
    """The base model PEFT recorded in the adapter's config (any PEFT adapter: TRL's, the HF Trainer's,
    ours), as the alias that ships it when it is one (the toy world's weights), else as written."""
    base = AdapterDir(adapter_dir).base_model()
    return None if base is None else alias_of(base) or base


def training_record(manifest: dict | None) -> dict | None:
    """The recorded training configuration, or None when the manifest does not name the optimiser."""
    if manifest is None:
        return None
    config = manifest.get("config") or {}
    if not config.get("optimizer"):
        return None
    resolved = manifest.get("optimizer") or {}  # written when the run finished
    return {
        "optimizer": config["optimizer"].get("name"),
        "optimizer_class": resolved.get("class"),
        "hyperparameters": resolved.get("hyperparameters")
        or {k: v for k, v in config["optimizer"].items() if k != "name"},
        "lora": config.get("lora"),
        "spectral_reg": config.get("spectral_reg"),
        "train": config.get("train"),
        "dataset": manifest.get("dataset") or {"source": config.get("dataset")},
        "seed": config.get("seed"),
        "status": manifest.get("status"),
        "steps_done": manifest.get("steps_done"),
        "final_loss": manifest.get("final_loss"),
    }


def spectral_summary(frame: pd.DataFrame, refs: dict | None = None) -> dict:
    """Means over the trained modules of the four metrics, the flat-spectrum values, the F/N on the
    reference table's rank scale and the reference row it falls in (or is nearest to).

    F/N lies in [1/sqrt(r), 1]; to compare an adapter of another rank with the r = 32 references, each
    module's F/N keeps its relative position between flat (1/sqrt(r)) and rank one (1). Only a heuristic.
    """
    trained = frame.dropna(subset=["frobenius_nuclear"])
    if trained.empty:
        raise ConfigError("audit: every LoRA module of the adapter is zero (B = 0): nothing was trained")
    flat = 1 / trained["r"].astype(float).pow(0.5)
    refs = refs or load_references()
    ref_rank = (refs.get("lora_r") or [32])[0]
    flat32 = 1 / math.sqrt(ref_rank)
    fn32 = flat32 + (trained["frobenius_nuclear"] - flat) / (1 - flat) * (1 - flat32)
    ranks = sorted(trained["r"].unique().tolist())
    summary = {
        "n_modules": len(frame),
        "n_untrained": len(frame) - len(trained),
        # MoE: one row per expert and projection, each counted as one module in the means below
        "n_expert_rows": int(frame["expert"].notna().sum()) if "expert" in frame.columns else 0,
        "ranks": ranks,
        "frobenius_nuclear": float(trained["frobenius_nuclear"].mean()),
        "frobenius_nuclear_flat": float(flat.mean()),
        "frobenius_nuclear_r32": float(fn32.mean()),
        "stable_rank": float(trained["stable_rank"].mean()),
        "stable_rank_flat": float(trained["r"].mean()),
        "spectral_entropy": float(trained["spectral_entropy"].mean()),
        "spectral_entropy_flat": float(trained["r"].astype(float).map(math.log).mean()),
        "condition_number_median": float(trained["condition_number"].median()),
        "reference_rank": ref_rank,
    }
    summary["reference"] = nearest_reference(summary["frobenius_nuclear_r32"], refs)
    threshold, why = concentration_threshold(refs)
    summary["concentrated_threshold"], summary["concentrated_rule"] = threshold, why
    summary["concentrated"] = threshold is not None and summary["frobenius_nuclear_r32"] >= threshold
    return summary


def worst_modules(frame: pd.DataFrame, k: int = WORST_MODULES) -> list[dict]:
    """The k modules with the most concentrated spectra (highest F/N)."""
    cols = ["module", "r", "frobenius_nuclear", "stable_rank", "condition_number"]
    return frame.dropna(subset=["frobenius_nuclear"]).nlargest(k, "frobenius_nuclear")[cols].to_dict("records")
