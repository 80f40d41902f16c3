"""The training stages end to end at the smoke preset: pipeline, cache, single stages, resume, errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vgfcli import methods
from vgfcli.cache import file_sha256
from vgfcli.cli import app
from vgfcli.config import config_dir

runner = CliRunner()
SMOKE = ["preset=smoke"]


def vgf_json(*args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("method", sorted(p.stem for p in (config_dir() / "method").glob("*.yaml")))
def test_method_yaml_lists_every_config_field_with_its_default(method):
    values = yaml.safe_load((config_dir() / "method" / f"{method}.yaml").read_text())
    assert values.pop("name") == method
    assert values.pop("defaults") == [f"{method}_schema", "_self_"]  # typed by the method's schema
    defaults = dataclasses.asdict(methods.load(method).Config())
    shared = {"actor_hidden", "flow_steps", "critic_hidden", "seed", "compile", "encoder"}  # from policy / critic / top level
    assert set(values) == set(defaults) - shared
    for key, value in values.items():
        assert (tuple(value) if isinstance(value, list) else value) == defaults[key], key


def test_pipeline_runs_every_stage_then_is_all_cache_hits():
    out = vgf_json("pipeline", *SMOKE)
    assert set(out["stages"]) == {"collect", "dataset", "val_dataset", "policy", "critic", "evaluate"}
    assert not any(s["cache_hit"] for s in out["stages"].values())
    assert all(Path(p).is_file() for s in out["stages"].values() for p in s["outputs"].values())
    assert {"policy", "critic"} <= set(out["stages"]["critic"]["outputs"]) | set(out["stages"]["policy"]["outputs"])
    rows = out["results"]
    assert [(r["budget"], r["particles"], r["reference"]) for r in rows] == [(0, 1, True), (0, 4, False), (1, 4, False)]
    assert all(0.0 <= r["success"] <= 1.0 and r["episodes"] == 2 for r in rows)
    assert os.path.getsize(out["plot"]) > 1000
    again = vgf_json("pipeline", *SMOKE)
    assert all(s["cache_hit"] for s in again["stages"].values())
    assert again["run_id"] == out["run_id"]
    assert again["metrics"] == out["metrics"] and again["results"] == out["results"]

    # Single stages find the same runs from the same config; a new budget list is a new evaluation.
    assert vgf_json("train-critic", *SMOKE)["run_id"] == out["stages"]["critic"]["run_id"]
    other = vgf_json("evaluate", *SMOKE, "--budget", "0,2")
    assert not other["cache_hit"] and [r["budget"] for r in other["results"]] == [0, 0, 2]
    assert other["upstream"]["critic"] == out["stages"]["critic"]["run_id"]
    negative = runner.invoke(app, ["evaluate", *SMOKE, "--budget", "0,-1"])
    assert negative.exit_code == 2 and "steps >= 0" in negative.stderr
    override = runner.invoke(app, ["evaluate", *SMOKE, "evaluate.budgets=[0,-1]"])
    assert override.exit_code == 2 and "budgets must be steps >= 0" in override.stderr


def test_single_stage_without_upstream_says_what_to_run():
    result = runner.invoke(app, ["train-critic", *SMOKE])
    assert result.exit_code == 2
    assert "no finished collect run" in result.stderr and "vgf pipeline" in result.stderr


def test_bad_method_value_and_budget_are_config_errors():
    result = runner.invoke(app, ["train-critic", *SMOKE, "method.alpha=high"])
    assert result.exit_code == 2 and "alpha" in result.stderr
    result = runner.invoke(app, ["evaluate", *SMOKE, "--budget", "a,b"])
    assert result.exit_code == 2 and "--budget" in result.stderr
    # a value the method refuses is a one-line config error before its train-critic run, not an internal error
    for bad in ("method.alpha=-1", "method.bank_refresh_every=-1"):
        result = runner.invoke(app, ["pipeline", *SMOKE, bad])
        assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith("error: method: "), bad
    assert not vgf_json("runs", "--stage", "train-critic")["runs"]


def test_policy_for_other_data_is_refused():
    vgf_json("pipeline", *SMOKE, "evaluate.budgets=[0]")
    maze = ["task=pointmaze-medium-navigate-singletask-task1-v0", *SMOKE]
    vgf_json("pipeline", *maze, "evaluate.budgets=[0]")
    from vgfcli.tracking import Store

    maze_policy = Store("vgf").find(stage="pretrain-policy")[0].run_id
    result = runner.invoke(app, ["train-critic", *SMOKE, f"upstream.policy={maze_policy}"])
    assert result.exit_code == 2 and "dims" in result.stderr


def _kill_after_first_checkpoint(stage, args, vgf_home):
    # One thread, as this test process has: float sums then match to the bit across the two processes.
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vgfcli", stage, *args, "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(vgf_home.glob(f"work/{stage}-*/last.pt")):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(vgf_home.glob(f"work/{stage}-*/last.pt")), "no checkpoint was written before the kill"


@pytest.mark.parametrize("stage, method, output, parts", [
    ("pretrain-policy", "vgf", "policy", ("flow",)),
    ("train-critic", "vgf", "critic", ("critic", "target_critic")),
    ("train-critic", "qam", "critic", ("critic", "target_critic", "policy")),
])
def test_killed_stage_resumes_and_matches_an_uninterrupted_run(vgf_home, stage, method, output, parts):
    vgf_json("pipeline", *SMOKE, "evaluate.budgets=[0]", f"method={method}")
    loop = "policy" if stage == "pretrain-policy" else "critic"
    args = [*SMOKE, f"method={method}", f"{loop}.steps=300", f"{loop}.checkpoint_every=40", f"{loop}.log_every=20"]
    _kill_after_first_checkpoint(stage, args, vgf_home)
    resumed = vgf_json(stage, *args)
    assert resumed["summary"]["resumed_from_step"] >= 40
    fresh = vgf_json(stage, *args, "--force")
    assert fresh["summary"]["resumed_from_step"] == 0
    a = torch.load(resumed["outputs"][output], weights_only=False)
    b = torch.load(fresh["outputs"][output], weights_only=False)
    a, b = (a, b) if stage == "pretrain-policy" else (a["agent"], b["agent"])
    for part in parts:
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    # and the same bytes: later stages' cache keys hash them
    assert file_sha256(resumed["outputs"][output]) == file_sha256(fresh["outputs"][output])


def test_a_diverging_run_fails_with_exit_1_and_is_never_cached():
    result = runner.invoke(app, ["pipeline", *SMOKE, "policy.lr=1e30"])
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]  # progress bars above it
    assert last.startswith("error: training diverged: a non-finite loss at step")
    runs = vgf_json("runs", "--stage", "pretrain-policy")
    rows = runs if isinstance(runs, list) else runs["runs"]
    assert [r["status"] for r in rows] == ["FAILED"]
    again = runner.invoke(app, ["pretrain-policy", *SMOKE, "policy.lr=1e30"])
    assert again.exit_code == 1  # tried again, not a cache hit of the failed run


def test_reference_flow_activation_and_layer_norm_options():
    from vgfcli.agents import load_policy

    overrides = [*SMOKE, "method=bc", "policy.activation=gelu", "policy.layer_norm=pre"]
    vgf_json("pipeline", *overrides)
    path = vgf_json("pretrain-policy", *overrides)["outputs"]["policy"]
    flow, saved = load_policy(path, "cpu")
    assert (saved["activation"], saved["layer_norm"]) == ("gelu", "pre")
    assert flow.net.norm == "pre" and any("norms" in name for name, _ in flow.named_parameters())
    bad = runner.invoke(app, ["pretrain-policy", *SMOKE, "policy.layer_norm=middle"])
    assert bad.exit_code == 2 and "norm" in bad.stderr
