"""report.html: self-contained, every figure decodes in a real browser (headless Chromium)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_analysis import make_sweep, run_row, synthetic_rows
from typer.testing import CliRunner

from evilspectra.artefacts.analysis_record import read_analysis
from evilspectra.errors import DataError
from evilspectra.report import write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
N_FIGURES = 5


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def report(tmp_path: Path) -> Path:
    return write_report(make_sweep(tmp_path / "sweep", synthetic_rows()))


def test_report_is_self_contained(report):
    text = report.read_text()
    assert text.count('src="data:image/png;base64,') == N_FIGURES
    # nothing fetched from anywhere: no external src/href, no stylesheet links
    assert not re.search(r'(src|href)="(?!data:)', text) and "<link" not in text
    for heading in (
        "Misalignment by optimiser",
        "Training loss vs alignment",
        "Trajectories",
        "Normalised LoRA spectra",
        "Spectral regulariser",
        "base model: toy",
        "How to read this",
    ):
        assert heading in text
    assert (report.parent / "analysis.json").is_file()  # made on the way, analyze was not run first


def test_report_images_load_in_headless_chromium(report, tmp_path):
    binary = _chromium()
    dom = _run_chromium(binary, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'data-images-ok="(\d+)/(\d+)"', dom.stdout)
    assert match, f"the load script did not run; chromium said: {dom.stderr[-1000:]}"
    assert match.groups() == (str(N_FIGURES), str(N_FIGURES))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    out = _run_chromium(
        binary,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1200,5000",
        "--hide-scrollbars",
        report.as_uri(),
    )
    assert out.returncode == 0 and shot.stat().st_size > 10_000, out.stderr[-2000:]


def test_report_of_a_sparse_sweep_explains_missing_figures(tmp_path):
    # one run per optimiser, final checkpoints only, no regulariser: fits and pairs are absent
    sweep = make_sweep(
        tmp_path / "s",
        [
            run_row("a", "adamw"),
            run_row("b", "lion", loss=0.7, mean_aligned=60),
            run_row("c", "sgd", status="diverged", final_loss=float("nan")),
        ],
    )
    text = write_report(sweep).read_text()
    assert "No regularised run has an unregularised twin" in text
    assert "more than one evaluated checkpoint" in text
    assert "points for 2 parameters" in text  # the regression's reason is shown, not a number


def test_report_cli_prints_the_path(tmp_path):
    from evilspectra.cli import _register, app

    sweep = make_sweep(tmp_path / "s", synthetic_rows())
    _register()
    out = CliRunner().invoke(app, ["report", str(sweep)])
    assert out.exit_code == 0, out.output
    assert Path(out.output.strip()) == (sweep / "report.html").resolve()


def test_report_recomputes_a_stale_analysis(tmp_path):
    sweep = make_sweep(tmp_path / "s", synthetic_rows())
    (sweep / "analysis.json").write_text(json.dumps({"stale": True}))
    old = (sweep / "results.csv").stat().st_mtime - 10
    os.utime(sweep / "analysis.json", (old, old))  # older than results.csv: a sweep finished since
    page = write_report(sweep).read_text()
    analysis = read_analysis(sweep / "analysis.json")  # recomputed: a whole analysis, no stale key
    rows = synthetic_rows()
    assert "stale" not in analysis and analysis.claims
    plain = {r["optimizer"] for r in rows if r["status"] == "done" and not r["spectral_reg"]}
    assert [r.optimizer for r in analysis.per_optimizer] == sorted(plain)
    assert html.escape(analysis.claims[0].claim) in page


def test_report_refuses_a_current_analysis_that_is_not_one(tmp_path):
    sweep = make_sweep(tmp_path / "s", synthetic_rows())
    (sweep / "analysis.json").write_text(json.dumps({"stale": True}))  # newer than results.csv
    with pytest.raises(DataError, match=r"analysis\.json: field sweep_dir: Field required"):
        write_report(sweep)
