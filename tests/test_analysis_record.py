"""The analysis record (artefacts.analysis_record): analysis.json is written from it and read through it.

tests/fixtures/analysis_earlier_release.json is the toy demo's analysis.json written before analyses
named their judge (issue 27; lists trimmed to keep the file small): files of earlier releases must
read, and write back byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_analysis import make_sweep, synthetic_rows

from evilspectra.analysis import analyze, load_analysis
from evilspectra.artefacts.analysis_record import Analysis, PooledRate, read_analysis, write_analysis
from evilspectra.artefacts.paths import SweepDir
from evilspectra.artefacts.records import RESULT_SHARES, ReferenceTable
from evilspectra.errors import DataError

EARLIER = Path(__file__).parent / "fixtures" / "analysis_earlier_release.json"


def test_an_earlier_release_analysis_reads_typed_and_writes_back_unchanged(tmp_path):
    analysis = read_analysis(EARLIER)
    assert analysis is not None and analysis.judge is None and analysis.judge_name() == "?"
    fragile = analysis.claims[0]
    assert fragile.verdict == "fragile" and fragile.verdict_unperturbed and fragile.stability.fragile
    assert fragile.n.units == 6 and fragile.n.answers is None and fragile.judge is None
    assert fragile.quantity == fragile.measured_as  # the old name kept beside the new
    assert analysis.per_optimizer[0].rate == json.loads(EARLIER.read_text())["per_optimizer"][0]["rate"]
    write_analysis(tmp_path / "analysis.json", analysis)
    assert (tmp_path / "analysis.json").read_bytes() == EARLIER.read_bytes()


def test_every_result_share_has_its_pooled_count_and_share():
    for share in RESULT_SHARES:
        assert {f"n_{share}", f"share_{share}"} <= set(PooledRate.model_fields), share


def test_a_wrong_field_is_named_with_its_file(tmp_path):
    path = tmp_path / "analysis.json"
    data = json.loads(EARLIER.read_text())
    data["per_optimizer"][0]["rate"] = "high"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"analysis\.json: field per_optimizer\.0\.rate: .*number"):
        read_analysis(path)


@pytest.mark.slow
def test_analyze_writes_the_record_it_returns_and_a_torn_file_is_recomputed(tmp_path):
    sweep = SweepDir(make_sweep(tmp_path / "s", synthetic_rows()))
    result = analyze(sweep.path, n_boot=50)
    assert isinstance(result, Analysis) and result.claims and result.judge == {"label": None, "name": None}
    text = sweep.analysis.read_text()
    assert read_analysis(sweep.analysis) == result
    assert text == json.dumps(json.loads(text), indent=2) + "\n"  # the writer's format, no defaults added
    assert list(json.loads(text)) == list(result.keys())  # every key in the order analyze builds them
    assert result["claims"][0]["verdict"] == result.claims[0].verdict  # dict-style readers still read it
    refs = ReferenceTable.model_validate_json(sweep.references.read_text())
    pooled = result.per_optimizer + result.per_optimizer_regularised
    assert [(r.optimizer, r.rate) for r in refs.rows] == [(r.optimizer, r.rate) for r in pooled]
    sweep.analysis.write_text(text[: len(text) // 2])  # a torn file newer than the results table
    newer = sweep.results.stat().st_mtime + 10
    os.utime(sweep.analysis, (newer, newer))
    assert load_analysis(sweep.path).claims == read_analysis(sweep.analysis).claims
    assert len(sweep.analysis.read_text()) > len(text) // 2  # recomputed, not read half
