"""One computation per cache key: the flock, its recovery after kill -9, and two identical pipelines
started together on a brand-new store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vgfcli.locks import file_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from vgfcli.locks import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_waiter_learns_the_holder_and_gets_the_lock_once_the_holder_is_killed(tmp_path):
    path = tmp_path / "locks" / "k.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        seen = []

        def on_wait(info):
            seen.append(info)
            os.kill(holder.pid, signal.SIGKILL)  # kill -9 while we wait: the kernel frees the lock

        start = time.monotonic()
        with file_lock(path, on_wait, poll_s=0.05):
            waited = time.monotonic() - start
        assert seen and seen[0]["pid"] == holder.pid and waited < 10
        assert json.loads(path.read_text())["pid"] == os.getpid()  # we wrote ourselves in while holding it
    finally:
        holder.kill()
        holder.wait()


def test_two_identical_pipelines_on_a_new_store_compute_each_stage_once(tmp_path):
    home = tmp_path / "fresh-home"  # no store yet: both processes find none and race to make it
    env = {**os.environ, "VGF_HOME": str(home), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "vgfcli", "pipeline", "preset=smoke", "--json"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    a, b = (json.loads(out) for out, _ in outs)
    assert a["stages"].keys() == b["stages"].keys()
    for name in a["stages"]:
        # the same run serves both; at most one of the two computed it
        assert a["stages"][name]["run_id"] == b["stages"][name]["run_id"], name
        assert a["stages"][name]["cache_hit"] or b["stages"][name]["cache_hit"], name
    assert a["run_id"] == b["run_id"]
