"""Issue 24: hostile strings in every field reach report.html, audit.html, the model card and the
Inspect log as text, never as markup. The pages are parsed back with the stdlib's HTML parser; the
markdown (audit.md, the card) is rendered with raw HTML ON, as the Hub renders a card."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch
from markdown_it import MarkdownIt
from safetensors.torch import load_file, save_file
from test_analysis import make_sweep, synthetic_rows

from evilspectra import audit as audit_mod
from evilspectra.config import LoraSettings
from evilspectra.evaluate.metrics import outcome_table, summarize
from evilspectra.models import attach_lora, load_base_model
from evilspectra.report import write_report
from evilspectra.rundir import AUDIT_PNG

HOSTILE = (
    "<img src=x onerror=alert(1)>",
    '"><script>alert(1)</script>',
    "</td><td onmouseover=alert(1)>",
    "`<svg onload=alert(1)>`",
    "[click](javascript:alert(1))",
    "a|b\n<iframe src=javascript:alert(1)>",
)
ALL = " ".join(HOSTILE)
NAME = "<img src=x onerror=alert(1)>"  # usable as a file name (no slash)
BAD_TAGS = {"script", "svg", "iframe"}  # script: beyond the page's own


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def assert_inert(page: str, shown: tuple[str, ...] = (), scripts: int = 0) -> None:
    """No injected element or attribute: no script/svg/iframe, no on* handler, no javascript: URL,
    images only as data URIs or the audit's own plot; and each of `shown` appears as text (escaped,
    not dropped). `scripts`: the page's own script elements (report.html checks its images)."""
    parser = Elements()
    parser.feed(page)
    assert [tag for tag, _ in parser.tags].count("script") == scripts
    for tag, attrs in parser.tags:
        if tag == "script" and not attrs:
            continue  # counted above
        assert tag not in BAD_TAGS, (tag, attrs)
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert not any("javascript:" in (v or "") for v in attrs.values()), (tag, attrs)
        if tag == "img":
            assert attrs.get("src", "").startswith("data:") or attrs.get("src") == AUDIT_PNG, attrs
    text = " ".join(" ".join(parser.text).split())
    for s in shown:
        assert " ".join(s.split()) in text, s


def as_hub_renders(markdown: str) -> str:
    """Markdown rendered with raw HTML allowed: an escaped card stays inert even there."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


# ------------------------------------------------------------------------------- report.html


def test_report_html_shows_hostile_names_as_text(tmp_path):
    rows = synthetic_rows()
    names = sorted({row["optimizer"] for row in rows})
    for row in rows:
        row["optimizer"] += HOSTILE[names.index(row["optimizer"]) % len(HOSTILE)]
        row["dataset"] = HOSTILE[1]
        row["model"] = HOSTILE[0]
    sweep = make_sweep(tmp_path / NAME, rows)
    for spectra in sweep.glob("runs/*/spectra.csv"):
        frame = pd.read_csv(spectra)
        frame["module"] = frame["module"] + HOSTILE[2]
        frame.to_csv(spectra, index=False)
    page = write_report(sweep).read_text()
    assert_inert(page, shown=(NAME,), scripts=1)


# ------------------------------------------------------------------------ audit.html and the card


@pytest.fixture
def hostile_adapter(tiny_model_dir, tmp_path) -> Path:
    """A real PEFT adapter whose tensor names carry markup, in a folder named with markup, beside a
    run manifest whose every recorded string is hostile."""
    run = tmp_path / NAME
    adapter = run / "adapter"
    torch.manual_seed(0)  # A's init too: which modules come out worst must not depend on earlier tests
    peft_model = attach_lora(
        load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu")), LoraSettings(r=8, alpha=16)
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
            if ".q_proj." in name:  # rank 1, the most concentrated spectrum: the hostile names are the worst modules
                p.data = torch.outer(p.data[:, 0], torch.ones(p.shape[1]))
    peft_model.save_pretrained(adapter)
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k.replace(".q_proj.", f".q_proj{HOSTILE[0]}{HOSTILE[2]}."): v for k, v in tensors.items()}, weights)
    # hostile in every field a manifest holds as free text (a valid manifest: fields with a fixed
    # set of values, such as status, would be refused before anything renders them)
    config = {
        "model": HOSTILE[3],
        "dataset": HOSTILE[4],
        "seed": 0,
        "system_prompt": HOSTILE[5],
        "optimizer": {"name": HOSTILE[0], "lr": 1e-4, HOSTILE[1]: HOSTILE[2]},
        "lora": {"r": 8, "alpha": 16, "target_modules": list(HOSTILE)},
        "train": {"batch_size": 4},
        "spectral_reg": {"weight": 1.0},
    }
    manifest = {
        "run_id": HOSTILE[1],
        "status": "done",
        "config": config,
        "optimizer": {"class": HOSTILE[5], "hyperparameters": {HOSTILE[1]: HOSTILE[4]}},
        "dataset": {"source": HOSTILE[4], "rows": 10, "sha256": HOSTILE[3]},
        "versions": {HOSTILE[0]: HOSTILE[1]},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return adapter


def hostile_references(tmp_path: Path) -> Path:
    refs = json.loads(audit_mod.SHIPPED_REFERENCES.read_text())
    for i, row in enumerate(refs["rows"]):
        row["optimizer"] += HOSTILE[i % len(HOSTILE)]
    refs["provenance"] |= {"command": ALL, "date": HOSTILE[0], "commit": HOSTILE[1], "evilspectra": HOSTILE[2]}
    refs["definitions"] = [
        {"aligned_threshold": 30, "coherent_threshold": 50, "code_convention": HOSTILE[3], "judge": HOSTILE[0]}
    ]
    path = tmp_path / f"{NAME}.json"
    path.write_text(json.dumps(refs))
    return path


def hostile_probe(*_args, **_kwargs) -> dict:
    """What evaluate() returns, with hostile question ids, question set and judge (a FAIL: the worst
    questions are quoted)."""
    shares = {f"share_{k}": 0.2 for k in ("coherent", "incoherent", "CODE", "REFUSAL", "error")}
    return {
        "misalignment_rate": 0.5,
        "rate_ci95": [0.3, 0.7],
        "n_misaligned": 20,
        "n_denominator": 40,
        "n_total": 100,
        "mean_aligned": 40.0,
        **shares,
        "questions": ALL,
        "judge": HOSTILE[1],
        "question_ids": list(HOSTILE),
        "per_question": {q: {"misalignment_rate": 0.5} for q in HOSTILE},
        "definition": {"misaligned": HOSTILE[2], "code_convention": HOSTILE[3]},
    }


def test_audit_and_card_show_hostile_strings_as_text(hostile_adapter, tmp_path, monkeypatch):
    from evilspectra.card import write_audit_card
    from evilspectra.evaluate import runner

    monkeypatch.setattr(runner, "evaluate", hostile_probe)
    result = audit_mod.audit(
        hostile_adapter, model="toy", judge="toy", references=hostile_references(tmp_path), progress=False
    )
    write_audit_card(result)  # as the audit command does once the audit returns
    assert result.verdict == "FAIL"
    module = next(m["module"] for m in result.worst_modules if HOSTILE[0] in m["module"])
    assert_inert(result.files["html"].read_text(), shown=(module, str(hostile_adapter)))
    assert_inert(as_hub_renders(result.files["md"].read_text()), shown=(module,))
    card = (hostile_adapter / "README.md").read_text()
    assert_inert(as_hub_renders(card.split("---", 2)[2]), shown=(HOSTILE[0], HOSTILE[1]))
    assert result.training["optimizer"] == HOSTILE[0]  # the manifest was read: its strings were rendered


def test_raw_html_is_off_in_the_audit_page(hostile_adapter, tmp_path):
    """Even markdown that was not escaped (a future field) is shown, not parsed, in audit.html."""
    result = audit_mod.audit(hostile_adapter, no_eval=True, out=tmp_path / "a")
    page = audit_mod.render_html(result, f"# Audit\n\n{ALL}\n\n| a |\n|---|\n| {HOSTILE[2]} |\n")
    assert_inert(page)


# ----------------------------------------------------------------------------- the Inspect log


def test_inspect_log_keeps_hostile_strings_as_data(tmp_path):
    """Inspect's viewer renders a log's strings itself (markdown through DOMPurify); the log must hold
    them verbatim, as data: neither dropped nor half-escaped."""
    pytest.importorskip("inspect_ai")
    from inspect_ai.log import read_eval_log

    from evilspectra.inspect_log import export_inspect_log

    eval_dir = tmp_path / NAME
    eval_dir.mkdir()
    records = [
        {
            "question_id": q,
            "paraphrase_index": 0,
            "paraphrase": ALL,
            "sample": 0,
            "answer": q + ALL,
            "aligned": 10.0,
            "coherent": 90.0,
            "verdict": "ok",
            "error": None,
            "labels": {"judge": HOSTILE[1]},
        }
        for q in HOSTILE
    ]
    (eval_dir / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(outcome_table(records), n_boot=10).model_dump(mode="json")  # what evaluate() writes
    summary |= {"model": HOSTILE[0], "adapter": str(eval_dir), "questions": ALL, "judge": HOSTILE[1], "settings": {}}
    (eval_dir / "summary.json").write_text(json.dumps(summary))
    log = read_eval_log(str(export_inspect_log(eval_dir)))
    samples = {s.id: s for s in log.samples}
    assert sorted(samples) == sorted(f"{q}/0/0" for q in HOSTILE)
    for record in records:
        sample = samples[f"{record['question_id']}/0/0"]
        assert sample.output.completion == record["answer"] and sample.metadata["paraphrase"] == ALL
    assert log.eval.metadata["summary"]["questions"] == ALL


def test_hostile_fixture_names_are_hostile():
    """The strings above do inject markup when nothing escapes them (so the checks can fail)."""
    with pytest.raises(AssertionError):
        assert_inert(as_hub_renders(f"| a |\n|---|\n| {HOSTILE[0]} |\n"))
    with pytest.raises(AssertionError):
        assert_inert(f"<td>{HOSTILE[2]}</td>")
