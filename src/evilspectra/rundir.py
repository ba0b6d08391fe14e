"""The run directory contract (DESIGN.md section 2): atomic file writes, the manifest, metrics.

A file is written to a temporary name and renamed into place, so a killed process never leaves a
half-written file that looks finished; a run is finished only when its manifest says `done`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
FINISHED = {"done", "diverged"}  # runs a resumed sweep does not redo
STEP_DIR = re.compile(r"^step-(\d+)$")  # RUN/checkpoints/step-NNNNNN; `.step-N.tmp` are half-written


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory + fsync + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place, replacing any older version."""
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def read_json(path: Path) -> dict | None:
    """A JSON file written by a stage, or None when absent or unreadable (not written yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_manifest(run_dir: Path) -> dict | None:
    """The run's manifest, or None when absent or unreadable (an unfinished run)."""
    return read_json(Path(run_dir) / MANIFEST)


def run_adapters(run_dir: str | Path) -> list[tuple[str, int | None, Path]]:
    """(label, step, adapter dir) of a run: RUN/checkpoints/step-N/ in step order, then `final`.

    The final adapter's step is the manifest's `steps_done`, else the largest checkpoint step.
    Temp dirs of a checkpoint being written are never listed.
    """
    run_dir = Path(run_dir)
    found = []
    ckpt_root = run_dir / "checkpoints"
    if ckpt_root.is_dir():
        for d in ckpt_root.iterdir():
            m = STEP_DIR.match(d.name)
            if m and d.is_dir():
                found.append((d.name, int(m.group(1)), d))
    found.sort(key=lambda t: t[1])
    if (run_dir / "adapter").is_dir():
        step = (read_manifest(run_dir) or {}).get("steps_done")
        if step is None and found:
            step = found[-1][1]
        found.append(("final", step, run_dir / "adapter"))
    return found


def read_metrics(run_dir: Path) -> list[dict]:
    """Rows of metrics.jsonl; a torn last line (process killed mid-write) is skipped."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def library_versions() -> dict[str, str]:
    """Versions of everything that can change a result."""
    names = [
        "evilspectra",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "tokenizers",
        "lion-pytorch",
        "pytorch-optimizer",
        "numpy",
    ]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
