"""`evilspectra audit`: check one LoRA fine-tune before shipping it; the exit status gates CI.

Exit status: 0 PASS or SPECTRA-ONLY, 1 FAIL, 2 on any error (bad input, missing judge key, a crash):
a pipeline must never read a broken audit as a verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.text import Text

from evilspectra.cli import app, error_message, make_console, options, print_error
from evilspectra.config import AUDIT_FAIL_ABOVE as DEFAULT_FAIL_ABOVE
from evilspectra.config import AUDIT_SAMPLES as DEFAULT_SAMPLES
from evilspectra.errors import ConfigError

console = make_console()  # tables whole in a pipe or a log (cli.make_console)
COLOURS = {"PASS": "bold green", "FAIL": "bold red", "SPECTRA-ONLY": "bold"}


@app.command("audit")
def audit_command(
    adapter: Path = typer.Option(..., help="PEFT adapter directory, RUN/adapter, or a run directory RUN."),
    model: str | None = typer.Option(
        None, help="Base model: HF id, local directory or `toy` (default: the run manifest's)."
    ),
    questions: str | None = options.QUESTIONS,
    judge: str | None = options.JUDGE,
    judge_base_url: str | None = options.JUDGE_BASE_URL,
    judge_api_key_env: str | None = options.JUDGE_API_KEY_ENV,
    samples: int | None = typer.Option(
        None, min=1, help=f"Samples per paraphrase of the quick EM probe (default {DEFAULT_SAMPLES})."
    ),
    max_new_tokens: int | None = typer.Option(
        None, min=1, help="Most new tokens per answer (default: 32 for the toy model, else 256)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report directory (default: RUN/audit, else ./audit)."),
    fail_above: float = typer.Option(
        DEFAULT_FAIL_ABOVE,
        help="Fail (exit 1) when the misalignment rate's 95% CI lower bound is at or above this rate "
        "(default 0.05: the study's best optimiser, Muon, misaligned 5.3%).",
    ),
    fail_spectral_above: float | None = typer.Option(
        None,
        help="Also fail when the mean Frobenius/nuclear ratio is at or above this (the only failure "
        "possible with --no-eval; flat = 1/sqrt(r); the report lists the reference table's values).",
    ),
    no_eval: bool = typer.Option(
        False, "--no-eval", help="Spectra only: no model, no judge, seconds; verdict SPECTRA-ONLY."
    ),
    seed: int | None = typer.Option(None, help="Sampling seed of the probe (default 0)."),
    references: Path | None = typer.Option(
        None, help="Reference table to quote: a sweep's reference table (default: the shipped toy-optimisers demo)."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML settings of the probe (fields of EvalSettings, flat or by part)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a probe setting: key=value, e.g. scoring.aligned_threshold=40."
    ),
) -> None:
    """Audit a fine-tune: spectra + a quick EM probe -> markdown + HTML report, exit 0 pass, 1 fail, 2 error."""
    from evilspectra.audit import audit
    from evilspectra.card import write_audit_card

    for flag, value in (("--fail-above", fail_above), ("--fail-spectral-above", fail_spectral_above)):
        if value is not None and not math.isfinite(value):  # NaN compares false: the gate would never fail
            raise ConfigError(f"{flag}: expected a finite number, got {value}")
    try:
        result = audit(
            adapter,
            model=model,
            questions=questions,
            judge=judge,
            judge_base_url=judge_base_url,
            judge_api_key_env=judge_api_key_env,
            samples=samples,
            max_new_tokens=max_new_tokens,
            out=out,
            fail_above=fail_above,
            fail_spectral_above=fail_spectral_above,
            no_eval=no_eval,
            seed=seed,
            config=config,
            overrides=set_,
            references=references,
        )
        write_audit_card(result)  # the adapter's model card records the verdict (after the audit, not inside it)
    except Exception as exc:  # any failure, a crash included, is exit 2: never read as a verdict
        print_error(error_message(exc))
        raise typer.Exit(2) from None

    console.print(Text(f"audit: {result.verdict}", style=COLOURS[result.verdict]))
    for reason in result.reasons:  # user strings (paths, names) printed verbatim, never read as markup
        console.print(f"  {reason}", markup=False)
    for rec in result.recommendations:
        console.print(f"  - {rec.action}", markup=False)
    console.print(f"wrote {result.files['md']} and {result.files['html']}", markup=False)
    raise typer.Exit(result.exit_code)
