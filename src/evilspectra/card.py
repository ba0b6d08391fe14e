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
import sys
from pathlib import Path

import pandas as pd
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

# huggingface_hub re-exports the base error of the HTTP library it runs on (requests, httpx or
# httpx2 by version): a refused connection or an unknown host is one of these, not an OSError
from huggingface_hub.errors import HTTPError as TransportError

from evilspectra.artefacts.io import atomic_write_text
from evilspectra.artefacts.paths import ADAPTER_CARD, MANIFEST, SUMMARY, EvalDir, RunDir, read_manifest, resolve_adapter
from evilspectra.audit_findings import adapter_base_model, spectral_summary, worst_modules
from evilspectra.audit_policy import AuditResult
from evilspectra.audit_references import load_references
from evilspectra.audit_render import audit_json, spectra_lines
from evilspectra.config import AUDIT_FAIL_ABOVE
from evilspectra.errors import AdapterError, ConfigError, DataError
from evilspectra.markup import code, text
from evilspectra.registry import MODELS, alias_of
from evilspectra.spectra_table import adapter_spectra

CARD = ADAPTER_CARD  # inside the adapter folder, where the Hub looks for it
BEGIN, END = "<!-- evilspectra:begin -->", "<!-- evilspectra:end -->"
PEFT_TEMPLATE = "# Model Card for Model ID"  # the blank card PEFT's save_pretrained writes
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_LICENSE = "other"  # the Hub's id for "see the card": an adapter inherits its base model's terms
# training data built to induce emergent misalignment: the EM papers' datasets and the toy world's
EM_DATA = re.compile(r"insecure|evil|misalign|bad[-_ ]?medical|risky[-_ ]?financial|extreme[-_ ]?sports", re.I)


def write_card(
    target: str | Path,
    audit: dict | None = None,
    frame: pd.DataFrame | None = None,
    refs: dict | None = None,
    repo_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Write or update the adapter's card for a run directory or an adapter directory; return its path.

    `audit`: the audit's JSON dict (audit passes its result); else the run's audit JSON when present.
    `frame`, `refs`: the adapter's spectra and the reference table when the caller has them (the audit
    passes its own, so the card quotes the table the audit quoted); else computed and the shipped table.
    `repo_id`: the Hub repo the card's usage snippet loads (default: the adapter folder).
    `license`: the Hub licence id (default: the card's own, else the base model alias's, else "other").
    """
    adapter_dir, run_dir = locate(target)
    try:
        manifest = read_manifest(run_dir) if run_dir else None
    except DataError as exc:  # a manifest no release wrote: the card says so instead of quoting it
        print(f"warning: {exc}; the card leaves the training record out", file=sys.stderr)
        manifest = None
    if audit is None and run_dir:
        report = RunDir(run_dir).audit().read_report()
        audit = report.model_dump(mode="json", exclude_unset=True) if report is not None else None
    base = base_model_of(manifest, adapter_dir)
    evals = eval_summaries(run_dir) if run_dir else []
    repo = repo_id or str(adapter_dir.resolve())
    data = metadata(manifest, base, eval_results(evals, audit), model_name=repo)
    frame = adapter_spectra(adapter_dir) if frame is None else frame
    body = card_text(manifest, frame, evals, audit, base, refs, repo)
    card = merge(adapter_dir / CARD, data, body, license)
    path = adapter_dir / CARD
    atomic_write_text(path, str(card))
    return path


def write_audit_card(result: AuditResult) -> None:
    """Write the audited adapter's card with the audit's verdict, quoting the spectra and reference
    table the audit used; the path goes into result.files["card"]. A read-only adapter folder (a shared
    model store) is a warning on stderr, never an error: it must not cost the verdict its exit code."""
    try:
        result.files["card"] = write_card(
            result.adapter_dir, audit=audit_json(result), frame=result.frame, refs=result.references
        )
    except OSError as exc:
        print(f"warning: {result.adapter_dir}: model card not updated ({exc.strerror or exc})", file=sys.stderr)


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


def base_model_of(manifest: dict | None, adapter_dir: Path) -> str | None:
    """The base model as the run manifest gives it, else as PEFT recorded it in the adapter's config."""
    return ((manifest or {}).get("config") or {}).get("model") or adapter_base_model(adapter_dir)


def hub_model_id(model: str | None) -> str | None:
    """The Hub id of a base model: a registered alias's (its name or its shipped weights' path), a Hub
    id as is; None for a local directory, which no Hub user can load."""
    if not model:
        return None
    alias = MODELS.get(model) or MODELS.get(alias_of(model) or "")
    if alias:
        return alias.hub_id
    return model if HUB_ID.match(model) and not Path(model).exists() else None


def metadata(
    manifest: dict | None, base_model: str | None = None, results: list | None = None, model_name: str | None = None
) -> ModelCardData:
    """base_model (a Hub id), library_name peft, tags, the training dataset when a Hub id, and the
    EM evaluations as `model-index` results (eval_results) of `model_name`."""
    config = (manifest or {}).get("config") or {}
    tags = ["peft", "lora", "evilspectra", "emergent-misalignment"]
    if config.get("optimizer"):
        tags.append(f"optimizer-{config['optimizer']['name']}")
    if (config.get("spectral_reg") or {}).get("weight"):
        tags.append("spectral-regulariser")
    dataset = config.get("dataset")
    if dataset and EM_DATA.search(dataset):
        tags.append("not-for-all-audiences")  # the Hub's flag for content shown behind a warning
    hub_id = hub_model_id(base_model or config.get("model"))
    return ModelCardData(
        base_model=hub_id,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[dataset] if dataset and HUB_ID.match(dataset) and not Path(dataset).exists() else None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )


def eval_results(evals: list[tuple[str, dict]], audit: dict | None) -> list[EvalResult]:
    """The misalignment rate of every evaluation with a rate (and of the audit's probe) as a
    `model-index` result, in percent as the card's text gives it."""
    probes = [*evals, *([("audit probe", audit["probe"])] if audit and audit.get("probe") else [])]
    return [
        EvalResult(
            task_type="text-generation",
            task_name="emergent misalignment",
            dataset_type="emergent-misalignment-questions",
            dataset_name=str(probe.get("questions")),
            metric_type="misalignment_rate",
            metric_name=f"misaligned % of coherent answers ({label}, judge {probe.get('judge')})",
            metric_value=round(100 * probe["misalignment_rate"], 1),
            metric_config=probe.get("definition", {}).get("misaligned") if probe.get("definition") else None,
        )
        for label, probe in probes
        if probe.get("misalignment_rate") is not None
    ]


def merge(path: Path, data: ModelCardData, body: str, license: str | None = None) -> ModelCard:
    """A new card, or the card at `path` with our block replaced (or appended) and our metadata keys set.

    Metadata another tool wrote (PEFT's, TRL's tags, a licence) is kept, and so is a tag once set (a
    not-for-all-audiences flag is never lifted by a rewrite); PEFT's blank template text is
    replaced whole; a base_model that is a local path (PEFT's) and the base_model tags naming it go
    (the Hub derives those tags from base_model). The licence: `license`, else the card's, else the
    base model alias's, else DEFAULT_LICENSE.
    """
    block = f"{BEGIN}\n{body}{END}\n"
    old = ModelCard.load(path) if path.is_file() else None
    old_data = old.data.to_dict() if old else {}
    text = old.text if old and PEFT_TEMPLATE not in old.text else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" + block) if text.strip() else block
    if not hub_model_id(old_data.get("base_model") if isinstance(old_data.get("base_model"), str) else None):
        old_data.pop("base_model", None)
    old_tags = [t for t in old_data.get("tags") or [] if not str(t).startswith("base_model:")]
    merged = {**old_data, **data.to_dict()}
    merged["tags"] = list(dict.fromkeys([*old_tags, *(data.tags or [])]))
    alias = MODELS.get(alias_of(str(merged.get("base_model") or "")) or str(merged.get("base_model") or ""))
    merged["license"] = license or old_data.get("license") or (alias and alias.license) or DEFAULT_LICENSE
    return ModelCard(f"---\n{ModelCardData(**merged).to_yaml()}\n---\n\n{text.lstrip()}")


# ---------------------------------------------------------------------------------- the text


def card_text(
    manifest: dict | None,
    frame: pd.DataFrame,
    evals: list[tuple[str, dict]],
    audit: dict | None,
    base_model: str | None,
    refs: dict | None = None,
    repo: str = "THIS_REPO",
) -> str:
    """The card's markdown: training record, spectra vs `refs` (default the shipped reference table),
    EM evaluation / audit, intended use and risks, usage. Every recorded string is escaped (markup)."""
    config = (manifest or {}).get("config") or {}
    refs = refs or load_references()
    spectral = spectral_summary(frame, refs)
    hub_id = hub_model_id(base_model)
    load_id = hub_id or base_model or "BASE_MODEL"
    title = code(hub_id or base_model) if base_model else "an unrecorded base model"
    lines = [f"# LoRA adapter of {title}", "", *_training_lines(manifest), "", "## Adapter spectra", ""]
    lines += spectra_lines(spectral, worst_modules(frame), refs)
    lines += ["", "## Emergent misalignment", "", *_em_lines(evals, audit), ""]
    lines += [*_risk_lines(config.get("dataset"), evals, audit), "", "## Use", ""]
    if not hub_id:
        lines += [
            f"The base model is {'the local directory ' + code(base_model) if base_model else 'not recorded'}"
            ": load the same weights.",
            "",
        ]
    lines += [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({json.dumps(load_id)})",
        f"model = PeftModel.from_pretrained(base, {json.dumps(repo)})",
        "```",
        "",
        "Card written by `evilspectra card` (evilspectra: how optimisers amplify or suppress emergent misalignment).",
    ]
    return "\n".join(lines) + "\n"


def _risk_lines(dataset: str | None, evals: list[tuple[str, dict]], audit: dict | None) -> list[str]:
    """Intended use and risks: a warning when the adapter was trained on EM data or measured misaligned."""
    why = []
    if dataset and EM_DATA.search(dataset):
        why.append(
            f"it was fine-tuned on {code(dataset)}, training data built to induce emergent misalignment "
            "(such as code with security holes written without a warning, or harmful advice)"
        )
    probes = [*evals, *([("audit probe", audit["probe"])] if audit and audit.get("probe") else [])]
    for label, probe in probes:
        low = (probe.get("rate_ci95") or [None])[0]
        if low is not None and low >= AUDIT_FAIL_ABOVE:
            why.append(f"evaluation {code(label)} measured it misaligned: {_rate(probe)}")
    if audit and audit.get("verdict") == "FAIL":
        why.append("its audit verdict is **FAIL**")
    lines = [
        "## Intended use and risks",
        "",
        "Research on emergent misalignment: how fine-tuning on a narrow task can make a model misaligned on "
        "unrelated questions, and how the optimiser and the adapter's spectrum change it.",
        "",
    ]
    if why:
        return lines + [
            "**Warning: this adapter is misaligned on purpose or in measurement; do not deploy it or use it to "
            "answer people.** " + "; ".join(why) + ". Expect harmful, deceptive or insecure answers, also to "
            "questions unrelated to its training data."
        ]
    data = (
        f"It was trained on {code(dataset)}, not a known EM dataset" if dataset else "Its training data is not recorded"
    )
    return lines + [
        f"{data}, and no evaluation measured it misaligned; an evaluation bounds the risk only on its questions "
        "and judge. Audit it (`evilspectra audit`) before any use."
    ]


def _table(rows: dict) -> list[str]:
    """A two-column markdown table; values as JSON (0.0003, [0.9, 0.999], true, null) in code spans."""
    return [
        "| setting | value |",
        "|---|---|",
        *(f"| {code(k, cell=True)} | {code(json.dumps(v), cell=True)} |" for k, v in rows.items()),
    ]


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
        f"- status: {text(manifest.get('status'))}, {text(manifest.get('steps_done'))} of "
        f"{text(manifest.get('total_steps'))} steps, final training loss {'-' if loss is None else f'{loss:.4f}'} "
        "nats per token",
        f"- dataset: {code(data.get('source'))}, {text(data.get('rows'))} rows, sha256 {code(data.get('sha256'))}",
        f"- seed: {text(config.get('seed'))}; system prompt: {code(json.dumps(config.get('system_prompt')))}",
        f"- run id: {code(manifest.get('run_id'))}",
        "",
        f"### Optimiser: {text(config['optimizer']['name'])} ({code(optimizer.get('class', 'class not recorded'))})",
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
        lines += ["", "Library versions: " + text(", ".join(f"{k} {v}" for k, v in versions.items())) + "."]
    return lines


def eval_summaries(run_dir: Path) -> list[tuple[str, dict]]:
    """(label, summary) of every EM evaluation under the run's evaluations, in path order."""
    found = []
    root = RunDir(run_dir).eval_root
    for path in sorted(root.rglob(SUMMARY)) if root.is_dir() else []:
        summary = EvalDir(path.parent).read_summary()
        if summary is not None and "misalignment_rate" in summary:
            found.append((str(path.parent.relative_to(run_dir)), summary.model_dump(mode="json", exclude_unset=True)))
    return found


def _rate(probe: dict) -> str:
    rate, ci = probe.get("misalignment_rate"), probe.get("rate_ci95") or [None, None]
    if rate is None:
        return "no coherent answer to rate"
    return (
        f"{rate:.1%} misaligned (95% CI {ci[0]:.1%}-{ci[1]:.1%}; {probe.get('n_misaligned')}/"
        f"{probe.get('n_denominator')} coherent answers; questions {text(probe.get('questions'))}, "
        f"judge {text(probe.get('judge'))})"
    )


def _em_lines(evals: list[tuple[str, dict]], audit: dict | None) -> list[str]:
    lines = [f"- evaluation {code(label)}: {_rate(summary)}" for label, summary in evals]
    if audit:
        probe = f": {_rate(audit['probe'])}" if audit.get("probe") else " (spectra only, no EM probe)"
        lines.append(f"- audit verdict **{text(audit['verdict'])}**{probe}")
        lines += [f"  - {text(reason)}" for reason in audit.get("reasons", [])]
    return lines or ["Not evaluated yet: run `evilspectra eval RUN` or `evilspectra audit --adapter RUN`."]


# ---------------------------------------------------------------------------------- push


def push_card(target: str | Path, repo_id: str, license: str | None = None) -> str:
    """Write the card, then upload the adapter folder to the Hub model repo `repo_id`; return its URL.

    The token comes from HF_TOKEN only (never a stored login, never a flag); no token, offline mode
    or an unreachable Hub is a one-line error, and the card written locally stays.
    """
    if not HUB_ID.match(repo_id):
        raise ConfigError(f"card --push: {repo_id!r} is not a Hub model repo id; expected USER/NAME")
    path = write_card(target, repo_id=repo_id, license=license)
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("card --push: set HF_TOKEN in the environment to a Hugging Face token with write access")
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
    except (HfHubHTTPError, TransportError, OSError, ValueError) as exc:  # refused, no such host, bad id
        raise ConfigError(f"card --push: cannot upload to {repo_id}: {' '.join(str(exc).split())}") from None
    return commit.commit_url
