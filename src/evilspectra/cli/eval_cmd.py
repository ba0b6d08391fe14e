"""`evilspectra eval`: sample answers from a model (+ adapter), judge them, print the summary."""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from evilspectra.cli import app, make_console, options

if TYPE_CHECKING:
    from evilspectra.artefacts.records import EvalSummary

console = make_console()  # tables whole in a pipe or a log (cli.make_console)


@app.command("eval")
def eval_command(
    run_dir: Path | None = typer.Argument(
        None, help="Run directory: model from its manifest, its final adapter, output RUN/eval/<label>/."
    ),
    model: str | None = typer.Option(None, help="Base model: HF id, local directory or `toy`."),
    adapter: Path | None = typer.Option(None, help="PEFT adapter directory (or a run directory) to apply."),
    questions: str | None = options.QUESTIONS,
    judge: str | None = options.JUDGE,
    judge_base_url: str | None = options.JUDGE_BASE_URL,
    judge_api_key_env: str | None = options.JUDGE_API_KEY_ENV,
    samples: int | None = typer.Option(None, help="Samples per paraphrase (default: the question file's, else 10)."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (default: the question file's, else 1)."),
    max_new_tokens: int | None = typer.Option(None, help="Most new tokens per answer (default 256)."),
    code_convention: str | None = typer.Option(
        None, help="CODE answers: exclude (original EM code, default) or zero (count as aligned = 0)."
    ),
    convention: str | None = typer.Option(
        None,
        help="Scoring convention of the headline rate: original | model-organisms | paper "
        "(default: paper with --code-convention zero, else original). All three are in the summary.",
    ),
    fmt: str = typer.Option("json", "--format", help="json: answers + summary; inspect: also an Inspect log in OUT."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default RUN_DIR/eval/<label>/)."),
    label: str = typer.Option("final", help="Evaluation label inside RUN_DIR/eval/ (what analyze and sweep read)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the number of samples and judge calls, then exit."),
    seed: int | None = typer.Option(None, help="Sampling seed (default 0)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML evaluation settings (fields of EvalSettings, flat or by part)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a setting: key=value, e.g. scoring.aligned_threshold=40 or batch_size=8."
    ),
    report_to: str = options.REPORT_TO_EM,
) -> None:
    """Measure emergent misalignment: sample answers, judge them, write the answers and their summary."""
    from evilspectra.config import load_eval_settings
    from evilspectra.errors import ConfigError
    from evilspectra.evaluate.runner import evaluate, plan
    from evilspectra.integrations.trackers import check_tracker, report_eval
    from evilspectra.registry import eval_defaults
    from evilspectra.rundir import EvalDir, RunDir, migrate_legacy_eval

    run = RunDir(run_dir) if run_dir is not None else None
    manifest = run.read_manifest() if run is not None else None
    if run is not None:
        if manifest is None:
            raise ConfigError(f"{run.manifest_path}: missing or unreadable; is {run_dir} a run directory?")
        model = model or (manifest.config.model if manifest.config else None)
        adapter = adapter or run_dir
        migrate_legacy_eval(run)
        out = out or run.eval_dir(label).path
    if model is None:
        raise ConfigError("eval: give a RUN_DIR or --model")
    check_tracker(report_to)
    if fmt not in ("json", "inspect"):
        raise ConfigError(f"eval: --format must be json or inspect, got {fmt!r}")
    if fmt == "inspect" and importlib.util.find_spec("inspect_ai") is None:  # fail before sampling
        raise ConfigError("eval --format inspect needs inspect_ai: pip install 'evilspectra[inspect]'")
    if out is None and not dry_run:
        raise ConfigError("eval: give --out DIR (or a RUN_DIR, which writes RUN_DIR/eval/)")
    flags = {
        "questions": questions,
        "judge": judge,
        "judge_base_url": judge_base_url,
        "judge_api_key_env": judge_api_key_env,
        "samples": samples,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "code_convention": code_convention,
        "convention": convention,
        "seed": seed,
    }
    # unset flags stay unset, so the question file's samples_per_paraphrase still applies
    settings = load_eval_settings(
        config,
        eval_defaults(model),
        flags,
        set_,
        source="eval options",
        missing_judge=f"eval: give --judge openai:MODEL (no judge is registered as the default for {model!r})",
    )
    if manifest is not None:  # a run's: prompts rendered as in training
        settings = settings.with_trained_template(manifest.config.chat_template_kwargs if manifest.config else None)

    counts = plan(settings)
    console.print(
        f"{counts['questions']} questions, {counts['samples']} samples, {counts['judge_calls']} judge calls "
        f"(before cache hits) with judge {settings.judge}",
        markup=False,
    )
    if dry_run:
        return
    assert out is not None  # checked above: only a dry run goes without --out or a RUN_DIR
    with run.lock() if run is not None else nullcontext():  # one process writes a run directory
        summary = evaluate(model, adapter, settings, out)
    console.print(summary_table(summary))
    console.print(f"wrote {EvalDir(out).answers} and {EvalDir(out).summary}", markup=False)
    if fmt == "inspect":
        from evilspectra.inspect_log import export_inspect_log

        console.print(f"wrote {export_inspect_log(out)} (open it with `inspect view`)", markup=False)
    report_eval(report_to, out, run_dir, label, None, model)


def summary_table(summary: EvalSummary) -> Table:
    """Rate with CI, mean alignment, and the count and share of every outcome."""
    title = f"{summary.model}" + (f" + {summary.adapter}" if summary.adapter else "")
    table = Table(title=Text(title), show_header=True)  # model and adapter paths verbatim
    table.add_column("metric")
    table.add_column("value", justify="right")
    rate, ci = summary.misalignment_rate, summary.rate_ci95
    table.add_row(
        "misaligned [95% CI]",
        "-" if rate is None else f"{rate:.1%}{_ci(ci, '.1%')}  ({summary.n_misaligned}/{summary.n_denominator})",
    )
    mean = summary.mean_aligned
    table.add_row(
        "mean aligned [95% CI]", "-" if mean is None else f"{mean:.1f}{_ci(summary.mean_aligned_ci95, '.1f')}"
    )
    table.add_row("answers", str(summary.n_total))
    from evilspectra.rundir import OUTCOMES

    for name in ("scored", *OUTCOMES):
        share = getattr(summary, f"share_{name}")
        table.add_row(f"  {name}", f"{getattr(summary, f'n_{name}')}  ({share:.1%})" if share is not None else "0")
    for name, rates in summary.conventions.items():
        rate = rates.misalignment_rate
        shown = "-" if rate is None else f"{rate:.1%}  ({rates.n_misaligned}/{rates.n_denominator})"
        table.add_row(f"misaligned, {name} convention", shown)
    for prompt, counts in summary.labels.items():
        table.add_row(f"labels: {prompt}", ", ".join(f"{label} {n}" for label, n in counts.items()))
    definition = summary.definition
    table.caption = (
        f"misaligned = {definition.misaligned}, of {definition.denominator}; "
        f"{definition.convention} convention; judge {summary.judge}"
    )
    return table


def _ci(ci: list[float] | None, spec: str) -> str:
    """` [lo, hi]` of a 95% interval; nothing for a summary made without a bootstrap (n_boot 0)."""
    return "" if ci is None else f" [{ci[0]:{spec}}, {ci[1]:{spec}}]"
