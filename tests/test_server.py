"""Against a real `mlflow server` on 127.0.0.1: the pipeline runs, --json is exactly one JSON object
(MLflow's own "View run ... at" lines kept off stdout), and a second call is all cache hits."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
                             "--default-artifact-root", str(root / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # a light server: no job-execution consumers (vgf submits no MLflow jobs)
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_pipeline_against_a_tracking_server_prints_one_json_object(server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "VGF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vgfcli", "pipeline", "preset=smoke", "method=bc", "--json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    out = json.loads(first.stdout)  # nothing but the object on stdout
    assert not out["cache_hit"] and "View run" not in first.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and json.loads(again.stdout)["cache_hit"]
    assert all(s["cache_hit"] for s in json.loads(again.stdout)["stages"].values())
