"""The audit's report in three forms: one page of markdown, the same as self-contained HTML, and the
machine-readable AuditReport (AuditDir.report), written with the spectra plot and table into the audit folder."""

from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import UTC, datetime

import pandas as pd

from evilspectra import __version__
from evilspectra.artefacts.io import atomic_write_text
from evilspectra.artefacts.paths import AuditDir
from evilspectra.artefacts.records import HEADLINE, AuditRecommendation, AuditReport, EvalSummary
from evilspectra.audit_policy import AuditResult
from evilspectra.audit_references import load_references, reference_label, reference_origin
from evilspectra.fmt import rate_ci
from evilspectra.markup import code, text, to_html
from evilspectra.spectra_plot import plot_normalised_spectra
from evilspectra.spectra_table import write_spectra_csv


def write_reports(result: AuditResult, frame: pd.DataFrame) -> None:
    """Markdown, HTML (plot embedded), JSON, the spectra plot and the spectra table, into OUT (AuditDir)."""
    out = AuditDir(result.out)
    out.path.mkdir(parents=True, exist_ok=True)
    png = plot_normalised_spectra({result.adapter_dir.name: frame}, out.plot)
    result.files = {
        "md": out.markdown,
        "html": out.html,
        "json": out.report,
        "png": png,
        "spectra": write_spectra_csv(frame, out.spectra),
    }
    atomic_write_text(result.files["md"], render_markdown(result, png.name))
    data_uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    atomic_write_text(result.files["html"], render_html(result, render_markdown(result, data_uri)))
    out.write_report(audit_report(result))


def audit_report(result: AuditResult) -> AuditReport:
    """The machine-readable audit (for CI pipelines): verdict, reasons, findings, recommendations."""
    probe = result.probe
    keep = (*HEADLINE, "judge", "questions")
    return AuditReport(
        verdict=result.verdict,
        exit_code=result.exit_code,
        reasons=result.reasons,
        adapter=str(result.adapter_dir),
        run_dir=str(result.run_dir) if result.run_dir else None,
        model=result.model,
        training=result.training,
        training_note=result.training_note,
        spectral=result.spectral,
        worst_modules=result.worst_modules,
        probe={k: probe.get(k) for k in keep} if probe else None,
        recommendations=[AuditRecommendation(**asdict(r)) for r in result.recommendations],
    )


def audit_json(result: AuditResult) -> dict:
    """audit_report(result) as the dict its file (AuditDir.report) holds."""
    return audit_report(result).model_dump(mode="json", exclude_unset=True)


def render_markdown(result: AuditResult, image_src: str) -> str:
    """The one-page report: verdict, EM probe, spectra vs references, training record, recommendations."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Audit: {result.verdict}",
        "",
        f"Adapter {code(result.adapter_dir)} on model {code(result.model or 'not given')}; "
        f"evilspectra {__version__}, {when}.",
        "",
        *[f"- {text(reason)}" for reason in result.reasons],
        "",
        "## EM probe",
        "",
        *_probe_lines(result.probe, result.references),
        "",
        "## Spectra",
        "",
        *spectra_lines(result.spectral, result.worst_modules, result.references),
        "",
        f"![normalised spectra]({image_src})",
        "",
        "## Training configuration",
        "",
        *_training_lines(result.training, result.training_note),
        "",
        "## Recommendations",
        "",
    ]
    for i, rec in enumerate(result.recommendations, 1):
        lines.append(f"{i}. **{text(rec.action)}**")
        lines += [f"   - evidence: {text(e)}" for e in rec.evidence]
    if not result.recommendations:
        lines.append("None: nothing in this audit points at a change.")
    lines += [
        "",
        "## Limits",
        "",
        "Spectral metrics are a risk indicator, not proof of EM or of its absence. The probe is quick (few "
        "samples per question) and only as good as its judge and question set. The references come from "
        f"{reference_origin(result.references)}; they hold for that sweep's model, data and judge only.",
    ]
    return "\n".join(lines) + "\n"


def _probe_lines(probe: EvalSummary | None, refs: dict) -> list[str]:
    if probe is None:
        return ["Not run (--no-eval)."]
    rate, ci = probe["misalignment_rate"], probe["rate_ci95"]
    rate_text = (
        "- (no coherent answer)"
        if rate is None
        else f"{rate:.1%} [{ci[0]:.1%}, {ci[1]:.1%}] ({probe['n_misaligned']}/{probe['n_denominator']} coherent answers)"
    )
    mean = probe["mean_aligned"]
    shares = ", ".join(
        f"{name} {probe[f'share_{name}']:.1%}" for name in ("coherent", "incoherent", "CODE", "REFUSAL", "error")
    )
    return [
        "| measure | value |",
        "|---|---|",
        f"| misaligned, 95% CI | {rate_text} |",
        f"| mean aligned (0-100) | {'-' if mean is None else f'{mean:.1f}'} |",
        f"| answers | {probe['n_total']}: {shares} |",
        f"| questions / judge | {text(probe['questions'])}, {len(probe['question_ids'])} questions / "
        f"{text(probe['judge'])} |",
        "",
        f"Misaligned: {text(probe['definition']['misaligned'])} (CODE answers: "
        f"{text(probe['definition']['code_convention'])}), as recorded in the probe's summary. Reference rates: "
        + ", ".join(
            f"{text(reference_label(r))} {r['rate']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]"
            for r in refs["rows"]
            if r.get("rate") is not None
        )
        + f" ({_reference_definition(refs)}).",
    ]


def _reference_definition(refs: dict) -> str:
    defs = refs.get("definitions") or []
    return (
        "; ".join(
            f"aligned < {d['aligned_threshold']:g} and coherent > {d['coherent_threshold']:g}, "
            f"CODE {text(d['code_convention'])}, judge {text(d['judge'])}"
            for d in defs
        )
        or "definition not recorded"
    )


def spectra_lines(s: dict, worst: list[dict], refs: dict | None = None) -> list[str]:
    """Markdown: the adapter's spectral metrics beside the flat spectrum and the reference table."""
    refs = refs or load_references()
    rank = s["reference_rank"]
    bands = ", ".join(f"{text(reference_label(r))} {r['fn_low']:.2f}-{r['fn_high']:.2f}" for r in refs["rows"])
    ranks = ", ".join(map(str, s["ranks"]))
    untrained = f", {s['n_untrained']} untrained (B = 0) left out" if s["n_untrained"] else ""
    fn_r32 = "" if s["ranks"] == [rank] else f" ({s['frobenius_nuclear_r32']:.3f} at r = {rank})"
    ref = s["reference"]
    lines = [
        f"Mean over {s['n_modules'] - s['n_untrained']} LoRA modules (rank {ranks}{untrained}) of the singular-value "
        "metrics of scaling * B A:",
        "",
        "| metric | this adapter | flat spectrum | references |",
        "|---|---|---|---|",
        f"| Frobenius / nuclear | {s['frobenius_nuclear']:.3f}{fn_r32} | {s['frobenius_nuclear_flat']:.3f} | reference table, r = {rank}: {bands} |",
        f"| stable rank | {s['stable_rank']:.2f} | {s['stable_rank_flat']:.0f} | higher = flatter |",
        f"| spectral entropy (nats) | {s['spectral_entropy']:.3f} | {s['spectral_entropy_flat']:.3f} | higher = flatter |",
        f"| condition number (median) | {s['condition_number_median']:.3g} | 1 | lower = flatter |",
        "",
        f"Closest reference: **{text(ref['label'])}** (F/N {ref['fn_range'][0]:.3f}-{ref['fn_range'][1]:.3f} over "
        f"{ref['n_runs']} runs; misaligned {rate_ci(ref['rate'], ref['rate_ci95'])}). "
        f"Spectrum {'concentrated' if s['concentrated'] else 'not concentrated'} "
        + (
            f"(threshold F/N {s['concentrated_threshold']:.3f} at r = {rank}: {text(s['concentrated_rule'])})."
            if s["concentrated_threshold"] is not None
            else f"({text(s['concentrated_rule'])})."
        ),
        "",
        "Most concentrated modules (highest F/N):",
        "",
        "| module | r | F/N | stable rank | condition number |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {code(m['module'], cell=True)} | {m['r']} | {m['frobenius_nuclear']:.3f} | {m['stable_rank']:.2f} | {m['condition_number']:.3g} |"
        for m in worst
    ]
    return lines


def _training_lines(training: dict | None, note: str) -> list[str]:
    if training is None:
        return [f"**The optimiser configuration is undocumented**: {text(note)}."]
    hyper = ", ".join(f"{k}={v}" for k, v in training["hyperparameters"].items())
    lora = training["lora"] or {}
    reg = training["spectral_reg"] or {}
    train = training["train"] or {}
    data = training["dataset"] or {}
    loss = training["final_loss"]
    return [
        f"Recorded {text(note)}.",
        "",
        f"- optimiser: **{text(training['optimizer'])}** ({text(training['optimizer_class'] or 'class not recorded')}): "
        f"{text(hyper)}",
        f"- LoRA: r={text(lora.get('r'))}, alpha={text(lora.get('alpha'))}, rsLoRA={text(lora.get('use_rslora'))}, "
        f"targets {text(', '.join(map(str, lora.get('target_modules') or [])))}",
        f"- spectral regulariser: weight {text(reg.get('weight', 0))}"
        + (f" ({text(reg.get('method'))}, {text(reg.get('aggregation'))})" if reg.get("weight") else " (off)"),
        f"- training: batch {text(train.get('batch_size'))} x {text(train.get('grad_accum'))}, "
        f"{text(training['steps_done'])} steps, final loss {'-' if loss is None else f'{loss:.3f}'}, "
        f"seed {text(training['seed'])}, status {text(training['status'])}",
        f"- dataset: {text(data.get('source'))}"
        + (f", {text(data['rows'])} rows, sha256 {text(data['sha256'][:12])}" if data.get("sha256") else ""),
    ]


CSS = """body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
h1{padding:.3em .6em;border-radius:6px;color:#fff}h1.PASS{background:#2e7d32}h1.FAIL{background:#c62828}
h1.SPECTRA-ONLY{background:#6d6d6d}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}code{font-size:90%}
img{max-width:32em}"""


def render_html(result: AuditResult, markdown: str) -> str:
    """A self-contained HTML page (inline CSS, plot as a data URI) from the report's markdown."""
    body = to_html(markdown)
    body = body.replace("<h1>", f'<h1 class="{result.verdict}">', 1)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>evilspectra audit: {result.verdict}</title>'
        f"<style>{CSS}</style></head>\n<body>\n{body}</body></html>\n"
    )
