"""`evilspectra demo --quick` end to end: the claims table, the line rule, and same seed -> same tables."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from evilspectra.claims import VERDICTS
from evilspectra.models import toy_model_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (toy_model_dir() / "config.json").is_file(), reason="toy weights not built"),
]


def _demo(out) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evilspectra", "demo", "--quick", "--out", str(out), "--max-parallel", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)


@pytest.fixture(scope="module")
def two_demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    first = _demo(root / "a")
    _demo(root / "b")
    return root / "a", root / "b", first.stdout


def test_quick_demo_writes_the_claims_table(two_demos):
    a, _, stdout = two_demos
    analysis = json.loads((a / "analysis.json").read_text())
    claims = analysis["claims"]
    assert {c["id"] for c in claims} >= {"order_adam_lion", "spread", "loss_r2", "regulariser_lion"}
    assert all(c["verdict"] in VERDICTS and c["stability"] and c["quantity"] for c in claims)
    assert "The study's claims" in stdout
    html = (a / "report.html").read_text()
    assert "The study&#x27;s claims, checked" in html or "The study's claims, checked" in html


@pytest.mark.slow
def test_same_seed_same_tables(two_demos):
    a, b, _ = two_demos
    pd.testing.assert_frame_equal(pd.read_csv(a / "results.csv"), pd.read_csv(b / "results.csv"))
    ja, jb = (json.loads((d / "analysis.json").read_text()) for d in (a, b))
    ja.pop("sweep_dir"), jb.pop("sweep_dir")
    assert ja == jb
