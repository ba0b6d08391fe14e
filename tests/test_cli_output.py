"""Issue 26: output complete when piped (a cluster log, `| tee`), --version, shell completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_analysis import make_sweep, synthetic_rows

from evilspectra import __version__
from evilspectra.cli.analysis_cmd import _ci, _num, _pct


def evilspectra(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The real entry point in a fresh process, stdout and stderr pipes (not a terminal)."""
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
    return subprocess.run(
        [sys.executable, "-m", "evilspectra", *args], capture_output=True, text=True, env=environ, timeout=600
    )


def test_piped_analyze_prints_every_value_of_the_per_optimiser_table(tmp_path):
    rows = synthetic_rows()
    for row in rows:  # names as long as real configurations get
        row["optimizer"] = f"{row['optimizer']}-with-a-long-hyperparameter-suffix"
    sweep = make_sweep(tmp_path / "sweep", rows)
    proc = evilspectra("analyze", str(sweep))
    assert proc.returncode == 0, proc.stderr
    table = json.loads((sweep / "analysis.json").read_text())["per_optimizer"]
    assert table
    out = proc.stdout
    assert "…" not in out  # nothing cut to the width of a terminal that is not there
    for row in table:
        for value in (
            row["optimizer"],
            _pct(row["rate"]),
            _ci(row["ci_low"], row["ci_high"]),
            _ci(row["ci_runs_low"], row["ci_runs_high"]),
            f"{row['n_misaligned']}/{row['n_denominator']}",
            _pct(row["share_incoherent"]),
            _pct(row["share_CODE"]),
            _num(row["mean_aligned"]),
        ):
            assert value in out, (value, out)
    # COLUMNS still sets the width where a user asks for one
    narrow = evilspectra("analyze", str(sweep), COLUMNS="60")
    assert narrow.returncode == 0 and "…" in narrow.stdout


def test_version_and_shell_completion():
    proc = evilspectra("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"evilspectra {__version__}"
    # typer guesses the shell from the parent process (sh under make) unless told to take its name
    proc = evilspectra("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert proc.returncode == 0 and "complete" in proc.stdout and "evilspectra" in proc.stdout.lower()
