"""Nothing lost, nothing injected (issue 24): the faults the real libraries and the real world raise.

Real `python -m evilspectra` processes meet a rejected config on a finished run, a really full
filesystem (a 3 MiB tmpfs: safetensors, matplotlib, pandas and our own writers each hit it), a
read-only adapter folder (a read-only bind mount), a run trained by hand into a sweep's directory,
Ctrl-C on a parallel sweep, two sweeps on one directory, and hostile labels and paths. docs/reliability.md
tabulates them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from evilspectra.rundir import RunDir, SweepDir

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
TRAIN = ["--max-steps", "3", "--batch-size", "2", "--set", "lora.r=2", "--set", "train.checkpoints=[1,2]"]


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evilspectra", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=timeout,
        preexec_fn=lambda: os.umask(umask),
    )


def snapshot(root: Path, lock: bool = False) -> dict[str, str]:
    """relative path -> sha256 of every file under root; the lock (which holds the pid of the last
    writer) only with `lock`, for commands that must not even lock the run."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (lock or p.name != ".lock")
    }


def one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    """The process exited 2 with exactly one `error: ...` line, the last on stderr, containing every
    needle; no traceback (progress lines may come before it: off a terminal they go to stderr)."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-3000:])
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("done") / "run"
    res = cli("train", "--out", run, *TRAIN, umask=0o027)  # a group may read, others not
    assert res.returncode == 0, res.stderr
    return run


def test_files_follow_the_umask(done_run):
    modes = {str(p.relative_to(done_run)): oct(p.stat().st_mode & 0o777) for p in done_run.rglob("*") if p.is_file()}
    assert "adapter/adapter_model.safetensors" in modes and "manifest.json" in modes
    assert {m for name, m in modes.items() if name != ".lock"} == {oct(0o640)}, modes


# ------------------------------------------------------------------ validation before any file


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--set", "lora.target_modules=[no_such_proj]"], "lora.target_modules"),
        (["--set", "optimizer.nonexistent=1"], "optimizer.nonexistent"),
        (["--optimizer", "no_such_optimizer"], "optimizer.name"),
        (["--set", "train.max_length=8"], "toy:insecure: row 1: the prompt"),  # every prompt is over 8 tokens
        (["--dataset", "/no/such/data.jsonl"], "/no/such/data.jsonl"),
    ],
    ids=["model", "lora-target", "optimizer-hyperparameter", "optimizer-name", "prompt-too-long", "dataset"],
)
@pytest.mark.parametrize("processes", [1, 2])
def test_a_rejected_train_never_touches_a_finished_run(done_run, flags, needle, processes):
    # with --num-processes 2 the launcher checks before it creates or locks the run (evilspectra.launch)
    before = snapshot(done_run, lock=True)
    assert RunDir(done_run).read_manifest().status == "done" and len(before) >= 8
    one_error_line(cli("train", "--out", done_run, *TRAIN, *flags, "--num-processes", processes), needle)
    assert snapshot(done_run, lock=True) == before


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize(
    "flags", [["--optimizer", "no_such_optimizer"], ["--dataset", "/no/such/data.jsonl"], ["--model", "/no/model"]]
)
def test_a_rejected_train_creates_no_run_folder(tmp_path, flags, processes):
    one_error_line(cli("train", "--out", tmp_path / "new" / "run", *TRAIN, *flags, "--num-processes", processes))
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------- a really full disk


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A real 3 MiB filesystem (tmpfs) that the tests fill up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"needs a real small filesystem; mounting a tmpfs is not allowed here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "--lazy", str(mnt)], check=False)


def fill(fs: Path, free_kib: int) -> Path:
    """Fill `fs` with one file so that about `free_kib` KiB stay free; returns the filler."""
    st = os.statvfs(fs)
    filler = fs / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - free_kib * 1024))
    return filler


def temporaries(root: Path) -> list[Path]:
    """Half-written files and folders a writer left behind (`.NAME.tmp`, `.NAME.XXXX.tmp`)."""
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("free_kib, full_at", [(60, "step-000001"), (150, "step-000002")])
@pytest.mark.slow
def test_train_on_a_full_disk_fails_in_one_line_removes_temporaries_and_resumes(small_fs, free_kib, full_at):
    # one checkpoint is ~92 KiB, ~85 of them the safetensors file: with 60 KiB free safetensors'
    # SafetensorError (not an OSError) is what the first checkpoint meets, with 150 the second's
    filler = fill(small_fs, free_kib)
    run = RunDir(small_fs / "run")
    one_error_line(cli("train", "--out", run.path, *TRAIN), f"{full_at}: disk full")
    assert temporaries(run.path) == []
    assert run.read_manifest().status in ("running", "failed")  # never `done`: the next train redoes it
    if full_at == "step-000002":  # the checkpoint written before the disk filled is whole
        assert (run.checkpoint(1) / "adapter_model.safetensors").stat().st_size > 80_000
    filler.unlink()
    assert cli("train", "--out", run.path, *TRAIN).returncode == 0
    assert run.read_manifest().status == "done" and (run.adapter / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_spectra_and_audit_on_a_full_disk_name_the_file_and_leave_no_empty_plot(small_fs, done_run, tmp_path):
    adapter = tmp_path / "adapter"  # a copy: the audit writes the model card into the adapter folder
    subprocess.run(["cp", "-r", str(RunDir(done_run).adapter), str(adapter)], check=True)
    fill(small_fs, 8)  # the spectra table (6 KiB) fits, the plot does not
    one_error_line(cli("spectra", adapter, "--out", small_fs), "spectra.png: disk full")
    one_error_line(cli("audit", "--adapter", adapter, "--no-eval", "--out", small_fs / "audit"), "disk full")
    assert temporaries(small_fs) == []
    assert not [p for p in small_fs.rglob("*") if p.is_file() and p.stat().st_size == 0]


def test_toy_data_on_a_full_disk_names_the_file_and_leaves_no_half_file(small_fs):
    fill(small_fs, 4)  # the first dataset (~50 KiB for 50 rows) does not fit
    one_error_line(cli("toy", "data", "--out", small_fs / "data", "--n", "50"), "insecure.jsonl: disk full")
    assert temporaries(small_fs) == [] and list((small_fs / "data").iterdir()) == []


def test_summary_and_results_writers_on_a_full_disk(small_fs):
    import pandas as pd

    from evilspectra.rundir import DiskFullError, EvalDir
    from evilspectra.sweep import write_results

    out = EvalDir(small_fs / "eval")
    out.write_summary({"n_total": 1})
    fill(small_fs, 0)
    with pytest.raises(DiskFullError) as err:
        out.write_summary({"n_total": 2, "pad": "x" * 10_000})
    assert str(err.value).count("\n") == 0 and "summary.json: disk full" in str(err.value)
    assert json.loads(out.summary.read_text()) == {"n_total": 1}  # the earlier file is intact
    big = pd.DataFrame({"run_id": [f"run-{i}" for i in range(20_000)]})
    with pytest.raises(DiskFullError, match=r"results\.(csv|parquet): disk full"):
        write_results(big, small_fs)
    assert temporaries(small_fs) == []


# ---------------------------------------------------------------------- hostile names and values


@pytest.mark.parametrize("label", ["../../escaped", "/tmp/evilspectra-absolute-label", "", ".", "a/b"])
def test_eval_labels_are_plain_names(done_run, label):
    before = snapshot(done_run.parent)
    one_error_line(cli("eval", done_run, "--label", label, "--samples", "1"), "--label")
    assert snapshot(done_run.parent) == before
    assert not Path("/tmp/evilspectra-absolute-label").exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty sweep file"),
        ("grid:\n  optimizer.lr: []\n", "grid.optimizer.lr"),
        ("optimizers:\n  sgd: {lr: []}\n", "optimizers.sgd.lr"),
    ],
    ids=["empty-file", "empty-grid-axis", "empty-optimizer-axis"],
)
def test_empty_sweep_inputs_are_errors(tmp_path, text, needle):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(text)
    one_error_line(cli("sweep", spec, "--out", tmp_path / "sweep"), str(spec), needle)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_paths_with_brackets_are_printed_verbatim(tmp_path, done_run):
    data = tmp_path / "ok[v2].jsonl"
    row = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "i wish money"}]}
    data.write_text(json.dumps(row) + "\n")
    run = tmp_path / "run[/lr]"  # `[/lr]` is a closing tag to rich: it crashed the last line with MarkupError
    res = cli("train", "--dataset", data, "--out", run, "--max-steps", "1", "--batch-size", "1", "--set", "lora.r=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok[v2].jsonl" in res.stdout and f"-> {run}" in res.stdout, res.stdout
    res = cli("spectra", run)
    assert res.returncode == 0 and f"wrote {run / 'spectra.csv'}" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize(
    "flags",
    [["--fail-spectral-above", "nan"], ["--fail-spectral-above", "inf"], ["--fail-above", "nan"]],
    ids=["spectral-nan", "spectral-inf", "rate-nan"],
)
def test_nan_and_infinite_thresholds_are_refused(done_run, flags):
    one_error_line(cli("audit", "--adapter", done_run, "--no-eval", *flags), flags[0], "finite")


@pytest.mark.parametrize(
    "setting", ["scoring.aligned_threshold=nan", "coherent_threshold=inf", "coherent_threshold=-inf"]
)
def test_nan_and_infinite_scoring_thresholds_are_refused(tmp_path, setting):
    done = cli("eval", "--model", "toy", "--out", tmp_path / "eval", "--set", setting)
    one_error_line(done, setting.split("=")[0].split(".")[-1], "finite")
    assert not (tmp_path / "eval").exists()


@contextmanager
def read_only_copy(source: Path, view: Path) -> Iterator[Path]:
    """A copy of `source` seen at `view` through a read-only bind mount (EROFS: root cannot write it either)."""
    copy = view.with_name(view.name + "-src")
    subprocess.run(["cp", "-r", str(source), str(copy)], check=True)
    view.mkdir()
    res = subprocess.run(["mount", "--bind", str(copy), str(view)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"needs a read-only bind mount; mounting is not allowed here: {res.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True, capture_output=True)
        yield view
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=False)


@pytest.fixture
def read_only_adapter(tmp_path, done_run) -> Iterator[Path]:
    with read_only_copy(RunDir(done_run).adapter, tmp_path / "adapter") as view:
        yield view


@pytest.fixture
def read_only_run(tmp_path, done_run) -> Iterator[Path]:
    with read_only_copy(done_run, tmp_path / "run") as view:
        yield view


def test_a_refused_write_names_the_file_being_written_not_its_temporary(tmp_path):
    """On a read-only folder the writers' temporaries (`.x.json.ab12.tmp`) fail first; the error the
    user reads names the file being written."""
    from evilspectra.rundir import atomic_write_file, atomic_write_text

    (tmp_path / "folder").mkdir()
    with read_only_copy(tmp_path / "folder", tmp_path / "view") as view:
        for write in (
            lambda p: atomic_write_text(p, "{}"),
            lambda p: atomic_write_file(p, lambda tmp: tmp.write_text("a,b")),
        ):
            with pytest.raises(OSError) as caught:
                write(view / "results.csv")
            assert caught.value.filename == str(view / "results.csv"), caught.value
            assert caught.value.errno == errno.EROFS and ".tmp" not in str(caught.value)
        assert list(view.iterdir()) == []


def test_audit_of_a_read_only_adapter_keeps_the_verdicts_exit_code(read_only_adapter, tmp_path):
    out = tmp_path / "audit"
    before = snapshot(read_only_adapter)
    # F/N is at least 1/sqrt(r): a threshold of 0 must FAIL (exit 1), the card cannot be written
    res = cli("audit", "--adapter", read_only_adapter, "--no-eval", "--fail-spectral-above", "0", "--out", out)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr[-3000:])
    assert "audit: FAIL" in res.stdout
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and str(read_only_adapter) in warning[0], res.stderr
    assert json.loads((out / "audit.json").read_text())["verdict"] == "FAIL"
    assert snapshot(read_only_adapter) == before


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--no-eval"], ["audit: Read-only file system"]),  # the report goes to RUN/audit by default
        (["--no-eval", "--out", "audit2"], ["audit2: Read-only file system"]),
        (["--set", "samples=abc", "--set", "top_p=7"], ["invalid config; samples:", "; top_p:"]),
        (["--no-eval", "--references", "/no/such/references.json"], ["/no/such/references.json"]),
        (["--config", "/no/such/probe.yaml"], ["/no/such/probe.yaml: config file not found"]),
    ],
    ids=["read-only-run", "read-only-out", "config-fields", "missing-references", "missing-config"],
)
def test_audit_user_errors_are_one_line(read_only_run, args, needles):
    """Auditing a run on a read-only folder, and bad probe settings or files: one line, exit 2, no
    traceback; a pydantic error's field lines are joined on that line."""
    args = [a if a != "audit2" else str(read_only_run / "audit2") for a in args]
    before = snapshot(read_only_run)
    line = one_error_line(cli("audit", "--adapter", read_only_run, *args), *needles)
    assert str(read_only_run) in line or "/no/such" in line or "invalid config" in line, line
    assert snapshot(read_only_run) == before


# ------------------------------------------------------------------------ sweeps and other writers

SWEEP = {
    "name": "issue24",
    "base": {"model": "toy", "dataset": "toy:insecure", "lora": {"r": 2}, "train": {"batch_size": 2, "max_steps": 2}},
    "grid": {"optimizer.lr": [0.0003]},
    "eval": {"questions": "toy", "judge": "toy", "samples": 1, "max_new_tokens": 4},
    "eval_base_model": False,
}


def sweep_file(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


@pytest.mark.slow
def test_a_run_of_another_config_in_the_sweeps_directory_is_reported_not_folded_in(tmp_path):
    from evilspectra.sweep import expand, load_sweep

    spec = sweep_file(tmp_path / "sweep.yaml")
    (cfg,) = expand(load_sweep(spec))
    run = SweepDir(tmp_path / "sweep").run(cfg.run_id())
    # trained by hand into the lr 0.0003 run's directory, with lr 0.03
    res = cli("train", "--out", run.path, "--lr", "0.03", "--max-steps", "2", "--batch-size", "2", "--set", "lora.r=2")
    assert res.returncode == 0, res.stderr[-3000:]
    before = snapshot(run.path)
    res = cli("sweep", spec, "--out", tmp_path / "sweep")
    assert res.returncode == 1, (res.stdout, res.stderr[-3000:])
    reported = [line for line in res.stdout.splitlines() if str(run.manifest_path) in line]
    assert len(reported) == 1 and "not run" in reported[0] and "error.json" not in reported[0], res.stdout
    assert snapshot(run.path) == before  # neither retrained nor marked
    import pandas as pd

    (row,) = pd.read_csv(SweepDir(tmp_path / "sweep").results).to_dict("records")
    assert row["run_id"] == cfg.run_id() and row["lr"] == 0.0003 and row["status"] == "mismatch"
    assert all(pd.isna(row.get(c)) for c in ("final_loss", "initial_loss", "loss"))  # not the lr 0.03 run's numbers


LOCK_HOLDER = """
import sys, time
from contextlib import ExitStack
from evilspectra.rundir import dir_lock
with ExitStack() as stack:
    for path in sys.argv[1:]:
        stack.enter_context(dir_lock(path))
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_sweep_skips_the_runs_another_process_holds_and_notes_a_changed_grid(tmp_path):
    from evilspectra.sweep import expand, load_sweep

    out = SweepDir(tmp_path / "sweep")
    first = sweep_file(tmp_path / "first.yaml")
    changed = sweep_file(tmp_path / "changed.yaml", grid={"optimizer.lr": [0.0003, 0.0001]})
    runs = [out.run(cfg.run_id()).path for cfg in expand(load_sweep(changed))]
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, *map(str, runs)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # as a first sweep's workers hold their runs
        res = cli("sweep", first, "--out", out.path)
        assert res.returncode == 0, (res.stdout, res.stderr[-3000:])
        assert f"in use by process {holder.pid}" in res.stdout and "failed" not in res.stdout
        assert "error.json" not in res.stdout + res.stderr and not list(out.runs_root.rglob("error.json"))
        recorded = json.loads(out.spec.read_text())
        res = cli("sweep", changed, "--out", out.path)
        assert res.returncode == 0, (res.stdout, res.stderr[-3000:])
        assert res.stdout.count(f"in use by process {holder.pid}") == 2
        notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1 and str(out.spec) in notes[0] and str(out.spec_history) in notes[0], res.stderr
        assert [json.loads(line) for line in out.spec_history.read_text().splitlines()] == [recorded]
        assert json.loads(out.spec.read_text())["grid"] == {"optimizer.lr": [0.0003, 0.0001]}
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_sweep_within_seconds_without_starting_queued_runs(tmp_path):
    out = SweepDir(tmp_path / "sweep")
    long_runs = {**SWEEP["base"], "train": {"batch_size": 2, "max_steps": 100_000, "checkpoints": "none"}}
    spec = sweep_file(tmp_path / "sweep.yaml", base=long_runs, grid={"optimizer.lr": [1e-4, 2e-4, 3e-4, 4e-4]})
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "evilspectra", "sweep", str(spec), "--out", str(out.path), "--max-parallel", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
        start_new_session=True,  # its own process group: Ctrl-C in a terminal signals the whole group
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(out.path.glob("runs/*/metrics.jsonl"))) < 2:  # both workers are training
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.5)
        interrupted = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        stopped = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and stopped < 15, (proc.returncode, stopped)
    time.sleep(2)
    with pytest.raises(ProcessLookupError):  # no worker is left running (or starting a queued run)
        os.killpg(proc.pid, 0)
    assert len(list(out.runs_root.iterdir())) == 2  # the two queued runs never started
    assert all(RunDir(run).read_manifest().status != "done" for run in out.runs_root.iterdir())
