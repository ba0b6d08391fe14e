"""Provenance a manifest records: the machine a result came from and the library versions."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """The machine a result came from: float results differ between CPUs and BLAS code paths (another
    CPU, or MKL_CBWR=COMPATIBLE, changes the last digits), so a run records its CPU, torch's kernel
    level, BLAS, threads and GPU."""
    import torch  # the package's core dependency; imported here (start-up speed) so the artefacts stay light

    build = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", build)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas.group(1) if blas else "unknown",
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    # environment switches that choose another kernel path for the same code
    for name in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS"):
        if os.environ.get(name):
            info[name] = os.environ[name]
    return info


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
