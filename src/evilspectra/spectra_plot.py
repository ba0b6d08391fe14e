"""The normalised-spectrum plot: mean over modules of sigma_i / sigma_1 against i, one line per run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evilspectra.artefacts.io import atomic_write_file


def mean_normalised_spectrum(df: pd.DataFrame) -> np.ndarray:
    """Mean over modules of sigma_i / sigma_1 (i = 1..max r) of the last checkpoint in `df`;
    all-zero modules are skipped, shorter spectra (rank_pattern) count only where they exist."""
    if "checkpoint" in df.columns:  # run frames list checkpoints in step order, `final` last
        df = df[df["checkpoint"] == df["checkpoint"].iloc[-1]]
    width = max(len(s) for s in df["sigma"])
    rows = np.full((len(df), width), np.nan)
    for i, s in enumerate(df["sigma"]):
        s = np.asarray(s, dtype=np.float64)
        if s.size and s[0] > 0:
            rows[i, : s.size] = s / s[0]
    return np.nanmean(rows, axis=0) if np.isfinite(rows).any() else np.full(width, np.nan)


def plot_normalised_spectra(frames: dict[str, pd.DataFrame], out_png: str | Path) -> Path:
    """One line per run: mean over modules of sigma_i / sigma_1 against i (final checkpoint)."""
    import matplotlib  # imported when plotting: start-up speed (matplotlib takes ~0.5 s to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, df in frames.items():
        curve = mean_normalised_spectrum(df)
        ax.plot(np.arange(1, curve.size + 1), curve, marker=".", label=label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("index i")
    ax.set_ylabel("mean over modules of sigma_i / sigma_1")
    ax.set_ylim(0, 1.05)
    ax.set_title("Normalised LoRA spectra (flat = 1)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    out_png = Path(out_png)
    try:  # a temp file renamed into place: a full disk leaves no empty plot behind
        atomic_write_file(out_png, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return out_png
