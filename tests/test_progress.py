"""Issue 26: off a terminal, long work prints plain progress lines while it runs, not one line at the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from evilspectra.progress import LineProgress


def test_train_under_a_pipe_prints_progress_while_it_trains(tmp_path):
    command = [sys.executable, "-m", "evilspectra", "train", "--model", "toy", "--max-steps", "20", "--batch-size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [*command, "--set", "train.checkpoints=none", "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines, running_at_first = [], None
    for line in proc.stderr:  # a pipe: read as a log collector would, while the run goes on
        if line.startswith("train "):
            lines.append(line)
            running_at_first = proc.poll() is None if running_at_first is None else running_at_first
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    done = [int(re.match(r"train (\d+)/20 \(\d+%\) loss \d", line).group(1)) for line in lines]
    assert done == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # every 10%, the last at the end
    assert running_at_first, "the first progress line came only after the run had ended"


def test_line_progress_prints_on_time_as_well_as_on_fraction(capsys):
    bar = LineProgress(every=0.0)  # every update is due by time
    task = bar.add_task("judging", total=1000)
    for _ in range(3):
        bar.advance(task)
    assert capsys.readouterr().err.splitlines()[0].startswith("judging 1/1000 (0%)")
    bar = LineProgress(every=3600)
    task = bar.add_task("runs", total=None, last="")
    bar.update(task, advance=1, last="abc done")
    assert capsys.readouterr().err == ""  # no total, no time passed: nothing yet


def test_sampling_progress_is_lines_off_a_terminal():
    from evilspectra.evaluate.sampling import progress_bar

    assert isinstance(progress_bar(True), LineProgress)  # pytest captures: not a terminal
