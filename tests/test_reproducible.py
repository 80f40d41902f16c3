"""Byte-reproducible outputs: the same pipeline in two stores makes the same files and the same cache
keys (no absolute paths, run ids or timings inside outputs), so a stage made in one store or on one
machine is the same computation anywhere."""

import json

from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.tracking import Store

runner = CliRunner()


def finished_runs() -> set:
    """(stage, cache key, every output's name and sha256) of each finished run in the store."""
    return {(r.stage, r.cache_key, json.dumps({k: v["sha256"] for k, v in r.outputs_meta.items()}, sort_keys=True))
            for r in Store("vgf").find(status="FINISHED")}


def test_the_same_pipeline_in_two_stores_gives_the_same_bytes_and_keys(tmp_path, monkeypatch):
    # the second store scores its evaluation rows in two worker processes, the first in this one (with
    # a share of each row's env copies stepped in a helper process, evaluate.env_workers)
    seen = []
    for name, workers in (("one", ["evaluate.env_workers=1"]), ("two", ["evaluate.workers=2"])):
        monkeypatch.setenv("VGF_HOME", str(tmp_path / name))
        monkeypatch.chdir(tmp_path)
        result = runner.invoke(app, ["pipeline", "preset=smoke", "--budget", "0,1,auto", "--json", *workers])
        assert result.exit_code == 0, result.output
        seen.append(finished_runs())
        evaluate = Store("vgf").get(json.loads(result.stdout)["stages"]["evaluate"]["run_id"])
        assert evaluate.tags["vgf.eval_workers"] == ("2" if name == "two" else "1")
        assert evaluate.tags["vgf.env_workers"] == ("0" if name == "two" else "1")
    assert len(seen[0]) == 6  # collect, two ingests, pretrain-policy, train-critic, evaluate
    assert seen[0] == seen[1]


def test_threads_are_set_and_recorded_and_checked():
    import torch

    result = runner.invoke(app, ["pipeline", "preset=smoke", "method=bc", "threads=1", "--json"])
    assert result.exit_code == 0, result.output
    run = Store("vgf").get(json.loads(result.stdout)["stages"]["policy"]["run_id"])
    assert run.tags["vgf.threads"] == "1" and torch.get_num_threads() == 1
    bad = runner.invoke(app, ["pretrain-policy", "preset=smoke", "threads=0", "policy.steps=21"])
    assert bad.exit_code == 2 and "threads must be at least 1" in bad.stderr
