"""`vgf collect` through the CLI: cache, worker independence, kill -9 and resume, ingest of its output."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.tracking import Store

runner = CliRunner()
TINY = ["name=cube-single-play-v0", "episodes=2", "val_episodes=1", "episode_length=30", "shard_episodes=1"]


def vgf_json(*args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_collect_cache_ignores_workers_and_feeds_ingest():
    first = vgf_json("collect", *TINY, "workers=1")
    assert not first["cache_hit"] and first["summary"]["steps"] == 3 * 30
    train = np.load(first["outputs"]["train"])
    assert train["observations"].shape == (60, 28) and train["terminals"].sum() == 2
    again = vgf_json("collect", *TINY, "workers=2")
    assert again["cache_hit"] and again["run_id"] == first["run_id"]
    ingested = vgf_json("ingest", f"dataset.collect_run={first['run_id'][:10]}")
    assert ingested["upstream"] == {"collect": first["run_id"]}
    assert ingested["metrics"]["transitions"] == 2 * 29  # the last state of each episode has no successor
    val = vgf_json("ingest", "dataset.collect_run=latest", "dataset.split=val")
    assert val["metrics"]["episodes"] == 1
    wrong = runner.invoke(app, ["ingest", f"dataset.collect_run={val['run_id']}"])
    assert wrong.exit_code == 2 and "not a finished collect run" in wrong.stderr


def test_uncollectable_and_bad_values_are_user_errors():
    result = runner.invoke(app, ["collect", "name=antmaze-large-navigate-v0"])
    assert result.exit_code == 2 and "expert" in result.stderr
    result = runner.invoke(app, ["collect", *TINY, "workers=0"])
    assert result.exit_code == 2 and "workers" in result.stderr
    result = runner.invoke(app, ["collect"])
    assert result.exit_code == 2 and "name" in result.stderr
    assert Store("vgf").find(status=None) == []


def test_killed_collect_resumes_from_finished_shards(vgf_home):
    args = ["name=cube-single-play-v0", "episodes=6", "val_episodes=1", "episode_length=40", "shard_episodes=1",
            "workers=1"]
    proc = subprocess.Popen([sys.executable, "-m", "vgfcli", "collect", *args, "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    shards = []
    while time.time() < deadline and len(shards) < 2 and proc.poll() is None:
        time.sleep(0.2)
        shards = list((vgf_home / "work").glob("collect-*/shards/*.npz"))
    assert len(shards) >= 2, "collect never wrote a shard"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [r.status for r in Store("vgf").find(status=None)] == ["RUNNING"]  # abandoned, never finished

    resumed = vgf_json("collect", *args)
    assert not resumed["cache_hit"]
    assert resumed["summary"]["resumed_steps"] >= 2 * 40
    statuses = sorted(r.status for r in Store("vgf").find(status=None))
    assert statuses == ["FINISHED", "KILLED"]  # the abandoned run is closed, not left RUNNING

    fresh = vgf_json("collect", *args, "seed=0", "--force")
    for split in ("train", "val"):
        a, b = np.load(resumed["outputs"][split]), np.load(fresh["outputs"][split])
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert vgf_json("collect", *args)["cache_hit"]
