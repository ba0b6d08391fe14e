"""Run `evilspectra train` on several processes through `accelerate launch` (docs/scale.md).

`train --num-processes N` and sweep runs that need several GPUs (one Ray task holding N GPUs) call
`launch_train`. The resolved RunConfig travels as a YAML file, so every rank trains the same run id;
rank 0 writes the run directory (evilspectra.train). Without an accelerate config the launch is DDP
(`--multi_gpu`); pass configs/accelerate/fsdp.yaml to shard the base model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from evilspectra.config import RunConfig
from evilspectra.errors import ConfigError
from evilspectra.rundir import RunDir, read_manifest
from evilspectra.train import check_run

LAUNCHER_HOLDS_LOCK = "EVILSPECTRA_LAUNCHER_HOLDS_LOCK"  # set for the ranks of launch_train


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the rendezvous of one launch (parallel launches differ)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(
    config_file: Path, out: Path, num_processes: int, accelerate_config: Path | None, report_to: str = "none"
) -> list[str]:
    """The `accelerate launch ... -m evilspectra train --config FILE --out OUT` command line."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    cmd += ["--config_file", str(accelerate_config)] if accelerate_config else ["--multi_gpu"]
    cmd += ["--main_process_port", str(free_port())]
    cmd += ["-m", "evilspectra", "train", "--config", str(config_file), "--out", str(out)]
    return cmd + ["--report-to", report_to]


def launch_train(
    cfg: RunConfig, out: Path, num_processes: int, accelerate_config: Path | None = None, report_to: str = "none"
) -> None:
    """Train `cfg` into `out` on `num_processes` processes; returns when all ranks have exited.

    Everything that can reject `cfg` is checked here first (evilspectra.train.check_run), as `train`
    does in one process: a rejected launch creates no folder and leaves a finished run in `out`
    byte-identical. A failing rank leaves `failed` in the run manifest (evilspectra.train); a launch
    that dies before any rank could record it raises RuntimeError.
    """
    if accelerate_config is not None and not Path(accelerate_config).is_file():
        raise ConfigError(f"{accelerate_config}: accelerate config file not found (see configs/accelerate/)")
    check_run(cfg, report_to)  # before `out` or its lock exists: the ranks would fail only after both
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="evilspectra-launch-") as tmp:
        config_file = Path(tmp) / "run.yaml"
        config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        cmd = launch_command(config_file, out, num_processes, accelerate_config, report_to)
        # this process holds the run's lock for the ranks (they would refuse a lock held by their parent)
        with RunDir(out).lock():
            code = subprocess.run(cmd, env={**os.environ, LAUNCHER_HOLDS_LOCK: "1"}).returncode
    status = (read_manifest(out) or {}).get("status")
    if code != 0 and status not in ("failed", "diverged"):
        raise RuntimeError(f"accelerate launch of {num_processes} processes exited with {code} (output above)")
