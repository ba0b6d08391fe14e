"""The report's page: the claims section, the sweep's settings, the judges compared, the sections'
frame (title, judge, how to read it), and the self-contained HTML page with its style."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

from evilspectra import claims
from evilspectra.analysis_table import definition_text
from evilspectra.artefacts.analysis_record import Analysis, Claim
from evilspectra.artefacts.paths import SweepDir
from evilspectra.errors import DataError
from evilspectra.evaluate import agreement
from evilspectra.evaluate.rejudge import paired_evals
from evilspectra.report_figures import figure
from evilspectra.report_tables import ci_num, corr_text, num, pct, signed_pp, table

VERDICT_STYLE = {
    claims.REPRODUCED: "ok",
    claims.NOT_REPRODUCED: "no",
    claims.CONTRADICTED: "no",
    claims.UNDERPOWERED: "maybe",
    claims.INCONCLUSIVE: "maybe",
    claims.FRAGILE: "maybe",
    claims.NOT_ESTIMABLE: "maybe",
}


def stability_text(row: Claim) -> str:
    """Leave-one-seed-out verdicts that differ, and the seed resamples' agreement."""
    st = row.stability
    if not st:  # absent, or an empty record (a record is falsy when its file held no field)
        return "not checked"
    base = row.verdict_unperturbed or row.verdict
    moved = {s: v for s, v in st.leave_one_seed_out.items() if v != base}
    loo = "same without any one seed" if not moved else "; ".join(f"without seed {s}: {v}" for s, v in moved.items())
    agree = st.resample_agreement
    return f"{loo}; {agree:.0%} of {st.n_resamples} seed resamples agree" if agree is not None else loo


def claim_row(r: Claim) -> str:
    """One claim as a table row: the claim, this sweep's figure, the verdict coloured, its stability."""
    cells = (
        r.claim,
        r.paper,
        num(r.estimate, 3),
        ci_num(r.ci, 3),
        r.quantity or r.measured_as or "",  # `measured_as`: the name in analyses of earlier releases
        f"{num(r.p_holm, 3)} / {num(r.power, 2)}",
    )
    return (
        "<tr>"
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
        + f'<td class="{VERDICT_STYLE.get(r.verdict, "maybe")}">{html.escape(r.verdict)} '
        f"({html.escape(r.reason)})</td><td>{html.escape(stability_text(r))}</td></tr>"
    )


def claims_section(analysis: Analysis) -> str:
    """The study's claims, this sweep's figure with its interval and the verdict of the rule in
    evilspectra.claims; a plain sentence for every claim this world contradicts."""
    rows = analysis.claims
    if not rows:
        return ""
    body = "".join(claim_row(r) for r in rows)
    head = "".join(
        f"<th>{h}</th>"
        for h in ("claim", "paper", "this sweep", "95% CI", "quantity", "Holm p / power", "verdict", "stability")
    )
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICT_STYLE}
    counts = {v: n for v, n in counts.items() if n}
    disagree = [r.claim for r in rows if r.verdict in (claims.NOT_REPRODUCED, claims.CONTRADICTED)]
    note = (
        "<p>Where this world disagrees with the paper: " + "; ".join(html.escape(d) for d in disagree) + ".</p>"
        if disagree
        else ""
    )
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    return (
        f'<section><h2>The study\'s claims, checked</h2><p class="judge">{html.escape(judge_note(analysis))}</p>'
        f'<p class="how">{summary}. A verdict is computed from the '
        "interval and its Holm-adjusted p (Holm over the confirmatory rows) by the rules in evilspectra.claims: "
        "reproduced (the paper's direction, and a size compatible with its band), not reproduced (the direction, not "
        "the size), contradicted (the interval excludes the paper's band and direction), underpowered (the interval "
        "is wider than the question), inconclusive, not estimable; a verdict that changes when one seed is left out, "
        "or in more than half of 200 seed resamples, is fragile. Power: at the paper's effect, this sweep's SD and "
        "n.</p>"
        f'{note}<div class="scroll"><table class="claims"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div></section>"
    )


def config_section(sweep_dir: Path, analysis: Analysis) -> str:
    """The sweep's spec as it was run (its main keys) and the runs by status."""
    spec = SweepDir(sweep_dir).read_spec()  # {} for runs analysed by hand
    rows = [
        [key, json.dumps(spec[key], sort_keys=True)]
        for key in ("name", "base", "grid", "optimizers", "variants", "eval")
        if key in spec
    ]
    rows.append(["runs by status", ", ".join(f"{k}: {v}" for k, v in analysis.runs.items())])
    return section("Sweep", "", "", table(["setting", "value"], rows, cls="kv"))


def section(title: str, figure: str, how_to_read: str, tables: str, judge: str = "") -> str:
    """A section of the page: title, the judge of its numbers, figure, how to read it, tables."""
    read = f'<p class="how">How to read this: {html.escape(how_to_read)}</p>' if how_to_read else ""
    who = f'<p class="judge">{html.escape(judge)}</p>' if judge else ""
    return f"<section><h2>{html.escape(title)}</h2>{who}{figure}{read}{tables}</section>"


def judge_name(analysis: Analysis) -> str:
    """The judge of an analysis as its evaluation summaries record it ("?" for an analysis written
    before analyses named their judge)."""
    return analysis.judge_name()


def judge_note(analysis: Analysis) -> str:
    """One line naming the judge whose scores a figure or table shows."""
    label = analysis.judge_label()
    which = f"re-judgement {label}" if label else "the first judgement"
    return f"Judge: {judge_name(analysis)} ({which})."


# ----------------------------------------------------------------------------- judges compared


def judges_section(sweep_dir: Path, first: Analysis, rejudged: dict[str, Analysis], runs: dict | None) -> str:
    """Each claim under every judge, then per re-judgement its agreement with the first judge on
    the same answers (empty when the sweep was judged once)."""
    if not rejudged:
        return ""
    parts = [claims_by_judge(first, rejudged)]
    for label, other in rejudged.items():
        parts.append(agreement_part(sweep_dir, label, runs, judge_name(first), judge_name(other)))
    return section(
        "Judges compared",
        "",
        "The same sampled answers scored by each judge (evilspectra rejudge), each judge's scores analysed "
        "alone. A claim whose verdict changes with the judge rests on the judge as much as on the sweep. "
        "Scatter: one point per answer, the first judge on x; on the dashed line the judges agree. Kappa and "
        "raw agreement are over the classes misaligned / aligned / incoherent / CODE / REFUSAL.",
        "".join(parts),
    )


def claims_by_judge(first: Analysis, rejudged: dict[str, Analysis]) -> str:
    """One row per claim: this sweep's estimate with its interval and the verdict, under each judge."""
    analyses = [first, *rejudged.values()]
    header = ["claim", "paper"]
    for a in analyses:
        header += [f"{judge_name(a)}: this sweep (95% CI)", f"{judge_name(a)}: verdict"]
    by_id = [{c.id: c for c in a.claims} for a in analyses]
    rows = []
    for c in first.claims:
        row, verdicts = [c.claim, c.paper], set()
        for claims_of in by_id:
            other = claims_of.get(c.id)
            verdicts.add(other.verdict if other else None)
            row += [f"{num(other.estimate, 3)} ({ci_num(other.ci, 3)})", other.verdict] if other else ["-"] * 2
        rows.append([*row, "yes" if len(verdicts) == 1 else "no"])
    return table([*header, "same verdict"], rows, "The study's claims under each judge", cls="claims")


def agreement_part(sweep_dir: Path, label: str, runs: dict | None, name_a: str, name_b: str) -> str:
    """Score against score and the agreement statistics of the first judge (A) and re-judgement
    `label` (B), pooled over every evaluation of the results table that was re-judged."""
    pairs = paired_evals(sweep_dir, label, runs)
    first = pairs[0][1]
    summary = first.read_summary()
    if summary is None:  # its answers are in the results table, so a summary was written: gone since
        raise DataError(f"{first.summary}: missing or unreadable (the first judgement's thresholds are read from it)")
    definition = summary.definition  # re-judgements keep the first's thresholds
    result, paired = agreement.compare(
        agreement.read_answers([(unit, a) for unit, a, _ in pairs]),
        agreement.read_answers([(unit, b) for unit, _, b in pairs]),
        definition.aligned_threshold,
        definition.coherent_threshold,
    )
    m, ci = result["misalignment"], result["misalignment"]["ci95"]
    rows = [
        ["answers (evaluations)", f"{result['n_answers']} ({len(pairs)})"],
        ["aligned: Pearson / Spearman (n)", corr_text(result["aligned"])],
        ["coherent: Pearson / Spearman (n)", corr_text(result["coherent"])],
        ["Cohen's kappa (classes)", num(result["kappa"], 3)],
        ["raw agreement", pct(result["raw_agreement"])],
        [f"misaligned: {name_a} / {name_b}", f"{pct(m['rate_a'])} / {pct(m['rate_b'])}"],
        ["B - A (95% paired CI)", f"{signed_pp(m['difference'])} ({signed_pp(ci[0])} to {signed_pp(ci[1])})"],
    ]
    title = f"{name_a} (A) vs {name_b} (B), re-judgement {label}"
    return (
        f"<h3>{html.escape(title)}</h3>"
        + figure(agreement.figure(paired, (name_a, name_b)))
        + table(["statistic", "value"], rows, f"Answer by answer; B - A: {m['method']}", cls="kv")
    )


# --------------------------------------------------------------------------------------- the page


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.how { color: #555; font-size: 0.92em; max-width: 60em; }
.empty { color: #a33; font-style: italic; }
.judge { font-size: 0.92em; font-weight: 600; margin: 0.3em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.8em; }
caption { text-align: left; color: #555; padding-bottom: 0.3em; caption-side: top; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.kv td { text-align: left; white-space: normal; max-width: 60em; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
table.claims td { white-space: normal; text-align: left; max-width: 30em; }
td.ok { background: #e3f4e1; } td.no { background: #f9e0e0; } td.maybe { background: #f6f0d8; }
"""


IMAGE_CHECK = """window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesOk = ok + '/' + imgs.length;
});"""


def page(analysis: Analysis, sections: list[str]) -> str:
    """The whole page: title, what was analysed and what `misaligned` meant, then the sections."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>evilspectra report</title>
<style>{CSS}</style><script>{IMAGE_CHECK}</script></head>
<body><h1>Emergent misalignment by optimiser</h1>
<p class="how">Sweep {html.escape(analysis.sweep_dir)}, report written {when} by evilspectra.
{html.escape(definition_text(analysis.definitions))} Rates are of the coherent answers, and the
denominators are shown beside every rate.</p>
{"".join(sections)}
</body></html>
"""
