"""Issue 26: output complete when piped (a cluster log, `| tee`), --version, shell completion, help
without `<bool>` or cut examples; issue 24: every user error of every command is one line, exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
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


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 and exactly one line on stderr, `error: ...` with every needle: no traceback, no box."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["audit"], ["Missing option '--adapter'", "audit --help"]),
        (["train", "--out", "run", "--lr", "abc"], ["'--lr'", "train --help"]),
        (["no-such-command"], ["No such command 'no-such-command'"]),
        (["data", "inspect", "toy:insecure", "--row", "0"], ["--row", "1..1200"]),
        (["eval", "--model", "toy", "--out", "ev", "--set", "samples=abc", "--set", "top_p=7"], ["samples", "; top_p"]),
        (["audit", "--adapter", "/no/such/adapter"], ["/no/such/adapter"]),
        (["card", "/no/such/run"], ["/no/such/run"]),
        (["spectra", "/no/such/run"], ["/no/such/run"]),
        (["data", "inspect", "/no/such/data.jsonl"], ["/no/such/data.jsonl: dataset file not found"]),
        (["toy", "data", "--out", "/proc/no-such-folder/x"], ["/proc/no-such-folder: No such file or directory"]),
    ],
    ids=[
        "missing-option",
        "bad-value",
        "no-such-command",
        "bad-parameter",
        "config-fields",
        "audit-missing-adapter",
        "card-missing-run",
        "spectra-missing-path",
        "missing-dataset",
        "unwritable-out",
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, args, needles):
    """Click's own errors (a missing option, a bad value), a config with two bad fields, missing files
    and a folder the system refuses, through the real entry point: one line each, nothing written."""
    proc = subprocess.run(
        [sys.executable, "-m", "evilspectra", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    one_error_line(proc, *needles)
    assert list(tmp_path.iterdir()) == []


HELP_WALK = """
import sys
from typer.main import get_command
from evilspectra.cli import _register, app, main

def paths(command, path):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from paths(sub, [*path, name])

_register()
for path in paths(get_command(app), []):
    print("=== " + " ".join(path), flush=True)
    sys.argv = ["evilspectra", *path, "--help"]
    try:
        main()
    except SystemExit as exc:
        print(f"=== exit {exc.code}", flush=True)
"""


def command_helps(**env: str) -> dict[str, str]:
    """{command path: its --help}, every command and group of the real app, printed into a pipe."""
    proc = evilspectra_code(HELP_WALK, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    helps, name = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("=== exit "):
            assert line == "=== exit 0", (name, line)
        elif line.startswith("=== "):
            name, helps[line[4:]] = line[4:], ""
        else:
            helps[name] += line + "\n"
    return helps


def evilspectra_code(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=600)


def test_every_help_shows_flags_without_bool_and_every_word_whole():
    from typer.main import get_command

    from evilspectra.cli import _register, app

    _register()
    helps = command_helps()
    assert {"", "train", "audit", "toy build", "data inspect", "judges compare"} <= set(helps)
    command = get_command(app)
    for path, text in helps.items():
        assert "<bool>" not in text and "…" not in text, (path, text)
        params = _command(command, path).params
        for param in params:
            # each word of each option's help is whole on some line: nothing cut, nothing folded
            for word in (getattr(param, "help", None) or "").split():
                assert word in text, (path, param.name, word, text)
    assert re.search(r"--no-eval +Spectra only", helps["audit"]), helps["audit"]  # no type column for a flag
    # at a narrow width a help text's long word folds onto the next line; it is not cut
    narrow = command_helps(COLUMNS="60")["train"]
    column = "".join(line.split("│")[1].strip() for line in narrow.splitlines() if line.count("│") == 2)
    assert "optimizer.betas=[0.9,0.99]" in column and "<bool>" not in narrow, narrow


def _command(root, path: str):
    for name in path.split():
        root = root.commands[name]
    return root


def test_toy_data_prints_a_bracketed_path_verbatim(tmp_path):
    out = tmp_path / "data[/v2]"  # `[/v2]` is a closing tag to rich: read as markup it raised MarkupError
    proc = evilspectra("toy", "data", "--out", str(out), "--n", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{out / 'insecure.jsonl'}  2 rows" in proc.stdout, proc.stdout
