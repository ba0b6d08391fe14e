"""Nothing lost, nothing injected (issue 24): the faults the real libraries and the real world raise.

Real `python -m evilspectra` processes meet a rejected config on a finished run, a really full
filesystem (a 3 MiB tmpfs: safetensors, matplotlib, pandas and our own writers each hit it), a
read-only adapter folder (a read-only bind mount), a run trained by hand into a sweep's directory,
Ctrl-C on a parallel sweep, two sweeps on one directory, and hostile labels and paths. docs/reliability.md
tabulates them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evilspectra.rundir import RunDir, SweepDir

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
TRAIN = ["--max-steps", "3", "--batch-size", "2", "--set", "lora.r=2", "--set", "train.checkpoints=[1,2]"]


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evilspectra", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=timeout,
    )


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (the lock's pid aside)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    """The process exited 2 with exactly one line on stderr, `error: ...`, containing every needle."""
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], err[-3000:])
    assert err.count("\n") == 0 and err.startswith("error: "), err[-3000:]
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("done") / "run"
    res = cli("train", "--out", run, *TRAIN)
    assert res.returncode == 0, res.stderr
    return run


# ------------------------------------------------------------------ validation before any file


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--set", "lora.target_modules=[no_such_proj]"], "lora.target_modules"),
        (["--set", "optimizer.nonexistent=1"], "optimizer.nonexistent"),
        (["--optimizer", "no_such_optimizer"], "optimizer.name"),
        (["--set", "train.max_length=8"], "max_length=8"),  # every prompt is longer than 8 tokens
        (["--dataset", "/no/such/data.jsonl"], "/no/such/data.jsonl"),
    ],
    ids=["model", "lora-target", "optimizer-hyperparameter", "optimizer-name", "prompt-too-long", "dataset"],
)
def test_a_rejected_train_never_touches_a_finished_run(done_run, flags, needle):
    before = snapshot(done_run)
    assert RunDir(done_run).read_manifest().status == "done" and len(before) >= 8
    one_error_line(cli("train", "--out", done_run, *TRAIN, *flags), needle)
    assert snapshot(done_run) == before


@pytest.mark.parametrize(
    "flags", [["--optimizer", "no_such_optimizer"], ["--dataset", "/no/such/data.jsonl"], ["--model", "/no/model"]]
)
def test_a_rejected_train_creates_no_run_folder(tmp_path, flags):
    one_error_line(cli("train", "--out", tmp_path / "new" / "run", *TRAIN, *flags))
    assert not (tmp_path / "new").exists()
