"""`evilspectra judges compare A B`: how two judges agree on the same answers."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from evilspectra.cli import app

console = Console()
judges_app = typer.Typer(help="Judges as measured instruments: compare two judgements of the same answers.")
app.add_typer(judges_app, name="judges")


@judges_app.command("compare")
def compare_command(
    a: Path = typer.Argument(..., help="First judgement: an evaluation directory, a run or a sweep."),
    b: Path = typer.Argument(..., help="Second judgement of the same answers (e.g. written by `rejudge`)."),
    label_a: str = typer.Option("final", help="Evaluation label read in A when A is a run or a sweep."),
    label_b: str | None = typer.Option(None, help="Evaluation label read in B (default: --label-a)."),
    out: Path = typer.Option(
        Path("judge-agreement"), "--out", "-o", help="Directory for the agreement table (JSON) and figure (PNG)."
    ),
) -> None:
    """Answer-by-answer agreement: correlations, Cohen's kappa, confusion table, paired rate difference."""
    from evilspectra.evaluate.agreement import compare, plot, read_answers
    from evilspectra.rundir import AGREEMENT_JSON, AGREEMENT_PNG, atomic_write_json, read_json

    evals_a, evals_b = resolve(a, label_a), resolve(b, label_b or label_a)
    first = read_json(evals_a[0][1].summary) or {}
    definition = first.get("definition") or {}
    result, paired = compare(
        read_answers(evals_a),
        read_answers(evals_b),
        aligned_threshold=definition.get("aligned_threshold", 30.0),
        coherent_threshold=definition.get("coherent_threshold", 50.0),
    )
    names = (judge_of(evals_a), judge_of(evals_b))
    result = {"a": {"path": str(a), "judge": names[0]}, "b": {"path": str(b), "judge": names[1]}, **result}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / AGREEMENT_JSON, result)
    plot(paired, names, out / AGREEMENT_PNG)
    console.print(agreement_table(result))
    console.print(f"wrote {out / AGREEMENT_JSON} and {out / AGREEMENT_PNG}", markup=False, soft_wrap=True)


def resolve(path: Path, label: str) -> list:
    """(unit, EvalDir) pairs: an eval directory itself, a run's eval/<label>, or every run's in a sweep."""
    from evilspectra.errors import ConfigError
    from evilspectra.rundir import EvalDir, RunDir, SweepDir

    if EvalDir(path).summary.is_file():
        return [(".", EvalDir(path))]
    runs = sorted(SweepDir(path).runs_root.glob("*")) if SweepDir(path).runs_root.is_dir() else [path]
    found = [
        (RunDir(r).path.name, RunDir(r).eval_dir(label)) for r in runs if RunDir(r).eval_dir(label).summary.is_file()
    ]
    if not found:
        raise ConfigError(f"{path}: no evaluation labelled {label!r} (expected an eval directory, a run or a sweep)")
    return found


def judge_of(evals: list) -> str:
    """The judge named in the evaluations' summaries (several joined with ' + ')."""
    from evilspectra.rundir import read_json

    names = sorted({(read_json(e.summary) or {}).get("judge") or "?" for _, e in evals})
    return " + ".join(names)


def agreement_table(result: dict) -> Table:
    """The headline numbers of `judges compare` as a rich table."""

    def num(x: float | None, fmt: str = ".3f") -> str:
        return "-" if x is None else format(x, fmt)

    table = Table(title=f"{result['a']['judge']} (A) vs {result['b']['judge']} (B)", show_header=True)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for metric in ("aligned", "coherent"):
        c = result[metric]
        table.add_row(f"{metric}: Pearson / Spearman (n)", f"{num(c['pearson'])} / {num(c['spearman'])} ({c['n']})")
    table.add_row("Cohen's kappa (classes)", num(result["kappa"]))
    table.add_row("raw agreement", num(result["raw_agreement"], ".1%"))
    m = result["misalignment"]
    ci = m["ci95"]
    table.add_row("misaligned A / B", f"{num(m['rate_a'], '.1%')} / {num(m['rate_b'], '.1%')}")
    table.add_row(
        "B - A [95% paired CI]", f"{num(m['difference'], '+.1%')} [{num(ci[0], '+.1%')}, {num(ci[1], '+.1%')}]"
    )
    table.caption = json.dumps(dict(zip(result["classes"], result["confusion"])))  # rows A, columns B
    return table
