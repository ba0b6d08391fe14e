"""The per-optimiser reference table that `audit` quotes (SweepDir.references), with its provenance."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pandas as pd

from evilspectra.analysis_table import num
from evilspectra.artefacts.analysis_record import Analysis, PooledRate
from evilspectra.artefacts.paths import SweepDir
from evilspectra.artefacts.records import Provenance, ReferenceRow, ReferenceTable


def reference_table(final: pd.DataFrame, analysis: Analysis, source: Path | str) -> ReferenceTable:
    """The per-optimiser reference that `audit` quotes: for each optimiser and regulariser weight,
    the final adapters' mean Frobenius/nuclear ratio (mean and range over runs), the learning rates
    used, and the pooled misalignment rate with its 95% Wilson interval; with its provenance.

    Rows come from `analysis` (per_optimizer and per_optimizer_regularised) and the final rows of the
    results table; `lora_r` is the adapter ranks the F/N values are on.
    """
    return ReferenceTable(
        provenance=provenance(source),
        lora_r=sorted(int(r) for r in final["lora_r"].dropna().unique()) if "lora_r" in final else [],
        definitions=analysis.definitions,
        ci_method="Wilson 95% on answers pooled over the runs",
        rows=[_row(final, pooled) for pooled in analysis.per_optimizer + analysis.per_optimizer_regularised],
    )


def _row(final: pd.DataFrame, pooled: PooledRate) -> ReferenceRow:
    """One optimiser and weight: its pooled rate, and the F/N ratios and learning rates of its runs."""
    weight = pooled.spectral_reg or 0.0
    runs = final[(final["optimizer"] == pooled.optimizer) & (final["spectral_reg"].fillna(0) == weight)]
    fn = runs["frobenius_nuclear"].dropna()
    has_lr = "lr" in runs and len(runs) > 0
    return ReferenceRow(
        optimizer=pooled.optimizer,
        spectral_reg=weight,
        n_runs=pooled.n_runs,
        lr_low=num(runs["lr"].min()) if has_lr else None,
        lr_high=num(runs["lr"].max()) if has_lr else None,
        fn_mean=float(fn.mean()) if len(fn) else None,
        fn_low=float(fn.min()) if len(fn) else None,
        fn_high=float(fn.max()) if len(fn) else None,
        rate=pooled.rate,
        ci_low=pooled.ci_low,
        ci_high=pooled.ci_high,
        n_denominator=pooled.n_denominator,
        n_misaligned=pooled.n_misaligned,
        share_incoherent=pooled.share_incoherent,
        mean_final_loss=pooled.mean_final_loss,
    )


def provenance(source: Path | str) -> Provenance:
    """Where a table comes from: the command line, UTC date, git commit of the code, package version."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        version = metadata.version("evilspectra")
    except metadata.PackageNotFoundError:
        version = None
    prog = Path(sys.argv[0]).name
    prog = "evilspectra" if prog in ("__main__.py", "evilspectra") else prog
    spec = SweepDir(source).read_spec() if isinstance(source, Path) else {}
    return Provenance(
        command=" ".join([prog, *sys.argv[1:]]),
        source=str(source),
        sweep=spec.get("name"),
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=commit or None,
        evilspectra=version,
    )
