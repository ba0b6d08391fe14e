"""Sweeps on a Ray cluster made with `ray start` (issue 14): a head and a worker node as separate
processes on this machine; the table equals the local executor's, and a worker node lost mid-sweep
(its raylet and workers killed) and replaced by a new one costs only the runs it was running.

The head has no CPUs, so every run is scheduled on a worker node. Every Ray process started here
is found by the cluster's own temp dir and killed at the end, even when the test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evilspectra.launch import free_port
from evilspectra.models import toy_model_dir
from evilspectra.rundir import read_manifest
from evilspectra.sweep import SweepSpec, plan, run_sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (toy_model_dir() / "config.json").is_file(), reason="toy weights not built"),
]
psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

SPEC = {
    "name": "ray-cluster",
    "base": {
        "model": "toy",
        "dataset": "toy:insecure",
        "lora": {"r": 8, "alpha": 16},
        "train": {"batch_size": 8, "max_steps": 40, "checkpoints": "none"},
    },
    "optimizers": {"adamw": {"lr": 3e-4}, "lion": {"lr": 3e-5}, "muon": {"lr": 1e-4}, "sgd": {"lr": 0.1}},
    "eval": {"questions": "toy", "judge": "toy", "samples": 1, "max_new_tokens": 12},
    "eval_base_model": False,
}


class LocalCluster:
    """A Ray cluster of `ray start` processes bound to this machine, in its own temp dir."""

    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray 2.60 requires a token: the cluster makes its own (as docs/scale.md tells a user to), so
        # the test never depends on a ~/.ray/auth_token that some earlier process left in HOME
        token = self.temp / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _ray_start(self, *args: str) -> None:
        cmd = ["ray", "start", "--node-ip-address", "127.0.0.1", "--temp-dir", str(self.temp), *args]
        cmd += ["--disable-usage-stats", "--dashboard-agent-listen-port", str(free_port())]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    def start_head(self) -> None:
        self._ray_start("--head", "--port", str(self.port), "--num-cpus", "0", "--include-dashboard", "false")

    def add_worker(self) -> int:
        """Start a worker node with 1 CPU; returns its raylet's node-manager port (its handle)."""
        port = free_port()
        self._ray_start("--address", self.address, "--num-cpus", "1", "--node-manager-port", str(port))
        return port

    def processes(self) -> list:
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.temp) in " ".join(proc.info["cmdline"] or []):
                mine.append(proc)
        return mine

    def kill_node(self, node_manager_port: int) -> None:
        """Lose a worker node as a machine is lost: its raylet and every worker under it SIGKILLed at
        once (a worker left alive for a moment could finish its run and hide the loss)."""
        flag = f"--node_manager_port={node_manager_port}"
        (raylet,) = [p for p in self.processes() if flag in p.info["cmdline"]]
        node = [*raylet.children(recursive=True), raylet]
        for proc in node:
            proc.kill()
        psutil.wait_procs(node, timeout=20)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.processes():
            proc.kill()
        psutil.wait_procs(self.processes(), timeout=20)
        shutil.rmtree(self.temp, ignore_errors=True)


def _table(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["run_id", "step"]).reset_index(drop=True)


def _stamps(out: Path, run_ids: list[str]) -> dict[str, tuple]:
    return {
        rid: (
            read_manifest(out / "runs" / rid)["timings"]["started"],
            (out / "runs" / rid / "metrics.jsonl").stat().st_mtime_ns,
        )
        for rid in run_ids
    }


def _mid_sweep(spec: SweepSpec, out: Path) -> tuple[list[str], list[str]]:
    """(finished runs, started but unfinished runs) when both exist, else ()."""
    runs = plan(spec, out)
    finished = [cfg.run_id() for cfg, done in runs if done]
    in_flight = [cfg.run_id() for cfg, done in runs if not done and read_manifest(out / "runs" / cfg.run_id())]
    return (finished, in_flight) if finished and in_flight else ()


@pytest.mark.slow
def test_sweep_on_a_ray_cluster_survives_losing_a_worker_node(tmp_path):
    spec = SweepSpec.model_validate(SPEC)
    reference = _table(run_sweep(spec, tmp_path / "local"))
    assert set(reference["status"]) == {"done"} and len(reference) == 4
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "ray"

    with LocalCluster() as cluster:
        cluster.start_head()
        worker = cluster.add_worker()
        cmd = [sys.executable, "-m", "evilspectra", "sweep", str(sweep_file), "--out", str(out)]
        cmd += ["--executor", "ray", "--ray-address", cluster.address]
        log = open(tmp_path / "sweep.log", "w")
        driver = subprocess.Popen(cmd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 400
            while time.time() < deadline and not _mid_sweep(spec, out):
                assert driver.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
                time.sleep(0.2)
            cluster.kill_node(worker)  # the node is lost with a run in flight
            finished, in_flight = _mid_sweep(spec, out)
            assert finished and in_flight, "the kill should land mid-sweep"
            stamps = _stamps(out, finished)
            cluster.add_worker()  # a new node takes over
            assert driver.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        finally:
            if driver.poll() is None:
                driver.kill()
            log.close()
        assert _stamps(out, finished) == stamps, "finished runs were redone"
    assert not cluster.processes(), "Ray processes left behind"
    assert all(read_manifest(out / "runs" / rid)["status"] == "done" for rid in in_flight)
    by_ray = _table(pd.read_csv(out / "results.csv"))
    pd.testing.assert_frame_equal(by_ray, _table(pd.read_csv(tmp_path / "local" / "results.csv")))


def test_a_sweep_without_the_clusters_token_says_what_to_do(tmp_path):
    """A driver on a machine without the cluster's token (a fresh HOME, no RAY_AUTH_TOKEN*) gets one
    line naming the fix, exit 2, instead of Ray's traceback."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(SPEC))
    with LocalCluster() as cluster:
        cluster.start_head()
        env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH_TOKEN")}
        env["HOME"] = str(tmp_path / "home")
        cmd = [sys.executable, "-m", "evilspectra", "sweep", str(sweep_file), "--out", str(tmp_path / "out")]
        cmd += ["--executor", "ray", "--ray-address", cluster.address]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # Ray logs its own INFO
    assert len(errors) == 1 and "RAY_AUTH_TOKEN_PATH" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
