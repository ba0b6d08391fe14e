"""The reference table the audit quotes: written by `evilspectra analyze` (and so `demo`) from a sweep,
with its provenance; the package ships the one of the toy-optimisers demo. Read through its record
(artefacts.records.ReferenceTable), kept as the dict of its file for the findings and renderers.
"""

from __future__ import annotations

from pathlib import Path

from evilspectra.artefacts.io import load_record
from evilspectra.artefacts.records import ReferenceTable
from evilspectra.errors import ConfigError, DataError
from evilspectra.markup import code, text

SHIPPED_REFERENCES = Path(__file__).parent / "references" / "toy-optimisers.json"


def load_references(path: str | Path | None = None) -> dict:
    """A reference table (SweepDir.references of a sweep, default the shipped one), checked for its rows."""
    path = Path(path) if path is not None else SHIPPED_REFERENCES
    try:
        table = load_record(ReferenceTable, path)
    except DataError:
        table = None
    if table is None:
        raise ConfigError(
            f"{path}: not a reference table (expected the one `evilspectra analyze` writes beside its analysis)"
        )
    data = table.model_dump(mode="json", exclude_unset=True)
    rows = [r for r in data["rows"] if r.get("fn_mean") is not None]
    if not rows:
        raise ConfigError(f"{path}: the reference table has no row with a Frobenius/nuclear ratio")
    return {**data, "rows": rows, "path": str(path)}


def reference_label(row: dict) -> str:
    weight = row.get("spectral_reg") or 0
    return row["optimizer"] + (f" + spectral_reg {weight:g}" if weight else "")


def reference_origin(refs: dict) -> str:
    """One line saying where the reference numbers come from."""
    p = refs["provenance"]
    commit = (p.get("commit") or "unknown")[:10]
    return (
        f"{code(p.get('command'))} on {text(p.get('date'))} (commit {text(commit)}, evilspectra "
        f"{text(p.get('evilspectra'))}), {code(refs['path'])}"
    )


def plain_rows(refs: dict) -> list[dict]:
    return [r for r in refs["rows"] if not r.get("spectral_reg") and r.get("rate") is not None]


def concentration_threshold(refs: dict) -> tuple[float | None, str]:
    """F/N from which a spectrum counts as concentrated: halfway between the two flattest optimisers
    of the reference table (regulariser off), with the sentence that says so."""
    rows = sorted(plain_rows(refs), key=lambda r: r["fn_mean"])
    if len(rows) < 2:
        return None, "fewer than two optimisers in the reference table: no threshold"
    a, b = rows[0], rows[1]
    value = (a["fn_mean"] + b["fn_mean"]) / 2
    return (
        value,
        f"halfway between the two flattest optimisers of the reference table, {a['optimizer']} and {b['optimizer']}",
    )


def nearest_reference(fn32: float, refs: dict) -> dict:
    """The reference row whose F/N range over runs contains `fn32`, else the nearest, with the distance."""

    def distance(row: dict) -> float:
        return max(row["fn_low"] - fn32, 0.0, fn32 - row["fn_high"])

    row = min(refs["rows"], key=distance)
    return {
        "label": reference_label(row),
        "fn_range": [row["fn_low"], row["fn_high"]],
        "rate": row.get("rate"),
        "rate_ci95": [row.get("ci_low"), row.get("ci_high")],
        "n_runs": row.get("n_runs"),
        "distance": distance(row),
    }


def reg_rows(refs: dict) -> list[tuple[dict, dict]]:
    """(regulariser off, on) reference rows of the same optimiser."""
    off = {r["optimizer"]: r for r in plain_rows(refs)}
    return [
        (off[r["optimizer"]], r)
        for r in refs["rows"]
        if r.get("spectral_reg") and r["optimizer"] in off and r.get("rate") is not None
    ]
