"""Joining a running Ray cluster (docs/cluster.md): a head started with `ray start --head`, then
`keras-qrobust evaluate --ray HOST:PORT` from another process gives the local run's grid.

The head runs with Ray's token authentication on (its default), its token passed to both sides
in the environment, so nothing is written to ``~/.ray``; it lives in its own process group and
temporary folder and is killed with them (never `ray stop`, which would stop every Ray on the
machine).
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from keras_qrobust.executor import INSTALL_HINT

pytest.importorskip("ray", reason=f"the Ray executor needs Ray: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """``(address, environment)`` of a one-node Ray cluster with 2 CPUs on 127.0.0.1."""
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    folder = tempfile.mkdtemp(prefix="kqray", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={folder}"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head, its raylet, GCS and workers: one process group
        head.wait(60)
        time.sleep(1)
        shutil.rmtree(folder, ignore_errors=True)


def test_evaluate_joins_a_running_cluster(ray_head, tiny_case, tmp_path):
    from keras_qrobust import cli

    address, env = ray_head
    model_file, data_file = tiny_case
    base = ["evaluate", "--model", str(model_file), "--dataset", str(data_file), "--attacks", "fgsm,pgd",
            "--eps", "0,0.1", "--test-samples", "40"]
    assert cli.main([*base, "--out", str(tmp_path / "local")]) == 0
    joined = subprocess.run([sys.executable, "-m", "keras_qrobust.cli", *base, "--ray", address, "--out",
                             str(tmp_path / "cluster")], env=env, capture_output=True, text=True, timeout=600)
    assert joined.returncode == 0, joined.stderr[-2000:]
    local, cluster = (json.loads((tmp_path / f / "report.json").read_text()) for f in ("local", "cluster"))
    assert cluster["accuracy"] == local["accuracy"]
    assert local["accuracy"]["tiny"]["pgd"][0] > local["accuracy"]["tiny"]["pgd"][-1]  # the attack did something
