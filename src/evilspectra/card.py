"""Hugging Face model cards for LoRA adapters: the optimiser is documented with the model.

    run manifest  -> optimiser (name, class, every hyperparameter), LoRA, training settings,
                     dataset + sha256, seed, training loss, library versions
    the adapter   -> spectral metrics beside the flat spectrum and the audit's reference table
    the run's evaluation summaries and audit (when present) -> misalignment rate with its 95% CI,
                     the audit verdict
    -> the adapter's card (rundir.ADAPTER_CARD): YAML metadata (base_model, library_name: peft, tags)
       + the card text

The card's text sits between two HTML comments, so rewriting it (after an `audit`, say) keeps what a
user wrote around it; PEFT's blank template is replaced whole. `push_card` uploads the adapter
folder with huggingface_hub, the token read from HF_TOKEN only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
from huggingface_hub import ModelCard, ModelCardData

from evilspectra.audit import load_references, spectra_lines, spectral_summary, worst_modules
from evilspectra.errors import AdapterError, ConfigError
from evilspectra.registry import MODELS
from evilspectra.rundir import (
    ADAPTER_CARD,
    AUDIT_JSON,
    MANIFEST,
    SUMMARY,
    RunDir,
    atomic_write_text,
    read_json,
    resolve_adapter,
)
from evilspectra.spectra import adapter_spectra

CARD = ADAPTER_CARD  # inside the adapter folder, where the Hub looks for it
BEGIN, END = "<!-- evilspectra:begin -->", "<!-- evilspectra:end -->"
PEFT_TEMPLATE = "# Model Card for Model ID"  # the blank card PEFT's save_pretrained writes
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def write_card(
    target: str | Path, audit: dict | None = None, frame: pd.DataFrame | None = None, refs: dict | None = None
) -> Path:
    """Write or update the adapter's card for a run directory or an adapter directory; return its path.

    `audit`: the audit's JSON dict (audit passes its result); else the run's audit JSON when present.
    `frame`, `refs`: the adapter's spectra and the reference table when the caller has them (the audit
    passes its own, so the card quotes the table the audit quoted); else computed and the shipped table.
    """
    adapter_dir, run_dir = locate(target)
    manifest = read_json(run_dir / MANIFEST) if run_dir else None
    if audit is None and run_dir:
        audit = read_json(RunDir(run_dir).audit_dir / AUDIT_JSON)
    data = metadata(manifest)
    evals = eval_summaries(run_dir) if run_dir else []
    frame = adapter_spectra(adapter_dir) if frame is None else frame
    body = card_text(manifest, frame, evals, audit, data.base_model or "BASE_MODEL", refs)
    card = merge(adapter_dir / CARD, data, body)
    path = adapter_dir / CARD
    atomic_write_text(path, str(card))
    return path


def locate(target: str | Path) -> tuple[Path, Path | None]:
    """(adapter dir, run dir or None): RUN means RUN/adapter; an adapter's run is its parent with a manifest."""
    path = Path(target)
    if RunDir(path).is_run() and not RunDir(path).adapter.is_dir():
        raise AdapterError(f"{path}: the run has no adapter yet (unfinished or failed: see {path / MANIFEST})")
    adapter_dir = resolve_adapter(path)
    parent = adapter_dir.parent
    run_dir = parent if (parent / MANIFEST).is_file() else None
    return adapter_dir, run_dir


# ---------------------------------------------------------------------------------- metadata


def metadata(manifest: dict | None) -> ModelCardData:
    """base_model (a Hub id, or the hub id a registered model alias declares), library_name peft, tags."""
    config = (manifest or {}).get("config") or {}
    model = config.get("model")
    alias = MODELS.get(model) if model else None
    base_model = alias.hub_id if alias else model if model and HUB_ID.match(model) else None
    tags = ["peft", "lora", "evilspectra", "emergent-misalignment"]
    if config.get("optimizer"):
        tags.append(f"optimizer-{config['optimizer']['name']}")
    if (config.get("spectral_reg") or {}).get("weight"):
        tags.append("spectral-regulariser")
    dataset = config.get("dataset")
    return ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[dataset] if dataset and HUB_ID.match(dataset) else None,
    )


def merge(path: Path, data: ModelCardData, body: str) -> ModelCard:
    """A new card, or the card at `path` with our block replaced (or appended) and our metadata keys set.

    No card yet or PEFT's blank one (whose metadata names a local path): ours alone.
    """
    block = f"{BEGIN}\n{body}{END}\n"
    old = ModelCard.load(path) if path.is_file() else None
    if old is None or PEFT_TEMPLATE in old.text:
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{block}")
    text = old.text
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    merged = {**old.data.to_dict(), **data.to_dict()}
    merged["tags"] = list(dict.fromkeys([*(old.data.tags or []), *(data.tags or [])]))
    return ModelCard(f"---\n{ModelCardData(**merged).to_yaml()}\n---\n\n{text.lstrip()}")


# ---------------------------------------------------------------------------------- the text


def card_text(
    manifest: dict | None,
    frame: pd.DataFrame,
    evals: list[tuple[str, dict]],
    audit: dict | None,
    base_model: str,
    refs: dict | None = None,
) -> str:
    """The card's markdown: training record, spectra vs `refs` (default the shipped reference table),
    EM evaluation / audit, usage."""
    config = (manifest or {}).get("config") or {}
    refs = refs or load_references()
    spectral = spectral_summary(frame, refs)
    title = f"LoRA adapter of `{config.get('model', 'an unrecorded base model')}`"
    lines = [f"# {title}", "", *_training_lines(manifest), "", "## Adapter spectra", ""]
    lines += spectra_lines(spectral, worst_modules(frame), refs)
    lines += ["", "## Emergent misalignment", "", *_em_lines(evals, audit), "", "## Use", ""]
    lines += [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("BASE_MODEL"), "THIS_REPO")',
        "```",
        "",
        "Card written by `evilspectra card` (evilspectra: how optimisers amplify or suppress emergent misalignment).",
    ]
    return "\n".join(lines) + "\n"


def _table(rows: dict) -> list[str]:
    """A two-column markdown table; values as JSON (0.0003, [0.9, 0.999], true, null)."""
    return ["| setting | value |", "|---|---|", *(f"| {k} | {json.dumps(v)} |" for k, v in rows.items())]


def _training_lines(manifest: dict | None) -> list[str]:
    if not manifest or not (manifest.get("config") or {}).get("optimizer"):
        return [
            "## Training",
            "",
            "**The optimiser configuration is undocumented**: no run manifest beside the adapter.",
        ]
    config, optimizer = manifest["config"], manifest.get("optimizer") or {}
    data = manifest.get("dataset") or {"source": config.get("dataset")}
    loss = manifest.get("final_loss")
    lines = [
        "## Training",
        "",
        f"- status: {manifest.get('status')}, {manifest.get('steps_done')} of {manifest.get('total_steps')} steps, "
        f"final training loss {'-' if loss is None else f'{loss:.4f}'} nats per token",
        f"- dataset: `{data.get('source')}`, {data.get('rows')} rows, sha256 `{data.get('sha256')}`",
        f"- seed: {config.get('seed')}; system prompt: {json.dumps(config.get('system_prompt'))}",
        f"- run id: `{manifest.get('run_id')}`",
        "",
        f"### Optimiser: {config['optimizer']['name']} (`{optimizer.get('class', 'class not recorded')}`)",
        "",
        *_table(optimizer.get("hyperparameters") or {k: v for k, v in config["optimizer"].items() if k != "name"}),
        "",
        "### LoRA",
        "",
        *_table(config.get("lora", {})),
        "",
        "As applied (PEFT's resolved targets, trainable parameters, untouched towers):",
        "",
        *_table(manifest.get("lora") or {}),
        "",
        "### Training settings",
        "",
        *_table(config.get("train", {})),
        "",
        "### Spectral regulariser",
        "",
        *_table(config.get("spectral_reg", {})),
    ]
    versions = manifest.get("versions") or {}
    if versions:
        lines += ["", "Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
    return lines


def eval_summaries(run_dir: Path) -> list[tuple[str, dict]]:
    """(label, summary) of every EM evaluation under the run's evaluations, in path order."""
    found = []
    root = RunDir(run_dir).eval_root
    for path in sorted(root.rglob(SUMMARY)) if root.is_dir() else []:
        summary = read_json(path)
        if summary and "misalignment_rate" in summary:
            found.append((str(path.parent.relative_to(run_dir)), summary))
    return found


def _rate(probe: dict) -> str:
    rate, ci = probe.get("misalignment_rate"), probe.get("rate_ci95") or [None, None]
    if rate is None:
        return "no coherent answer to rate"
    return (
        f"{rate:.1%} misaligned (95% CI {ci[0]:.1%}-{ci[1]:.1%}; {probe.get('n_misaligned')}/"
        f"{probe.get('n_denominator')} coherent answers; questions {probe.get('questions')}, judge {probe.get('judge')})"
    )


def _em_lines(evals: list[tuple[str, dict]], audit: dict | None) -> list[str]:
    lines = [f"- evaluation `{label}`: {_rate(summary)}" for label, summary in evals]
    if audit:
        probe = f": {_rate(audit['probe'])}" if audit.get("probe") else " (spectra only, no EM probe)"
        lines.append(f"- audit verdict **{audit['verdict']}**{probe}")
        lines += [f"  - {reason}" for reason in audit.get("reasons", [])]
    return lines or ["Not evaluated yet: run `evilspectra eval RUN` or `evilspectra audit --adapter RUN`."]


# ---------------------------------------------------------------------------------- push


def push_card(target: str | Path, repo_id: str) -> str:
    """Write the card, then upload the adapter folder to the Hub model repo `repo_id`; return its URL.

    The token comes from HF_TOKEN only (never a stored login, never a flag); no token, offline mode
    or an unreachable Hub is a one-line error, and the card written locally stays.
    """
    path = write_card(target)
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("card --push: set HF_TOKEN in the environment to a Hugging Face token with write access")
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(
            folder_path=path.parent, repo_id=repo_id, commit_message="evilspectra adapter + card"
        )
    except OfflineModeIsEnabled:
        raise ConfigError(
            "card --push: HF_HUB_OFFLINE is set; unset it to upload (the card is written locally)"
        ) from None
    except (HfHubHTTPError, httpx.HTTPError, OSError) as exc:  # refused, no network, no such host
        raise ConfigError(f"card --push: cannot upload to {repo_id}: {' '.join(str(exc).split())}") from None
    return commit.commit_url
