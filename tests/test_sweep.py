"""`vgf sweep`: the grid grammar, one job per distinct stage run, failures that stop only their own
combinations, resuming from the cache, and real submitit processes."""

import json
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.sweep import expand

runner = CliRunner()
SMOKE = ["preset=smoke", "evaluate.budgets=[0]"]


def sweep_json(*args, code=0):
    result = runner.invoke(app, ["sweep", *args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_grid_grammar_is_hydras():
    assert expand(["task=a,b", "seed=range(0,2)", "method=choice(vgf,qgf)", "preset=quick"]) == [
        ["task=a", "seed=0", "method=vgf", "preset=quick"], ["task=a", "seed=0", "method=qgf", "preset=quick"],
        ["task=a", "seed=1", "method=vgf", "preset=quick"], ["task=a", "seed=1", "method=qgf", "preset=quick"],
        ["task=b", "seed=0", "method=vgf", "preset=quick"], ["task=b", "seed=0", "method=qgf", "preset=quick"],
        ["task=b", "seed=1", "method=vgf", "preset=quick"], ["task=b", "seed=1", "method=qgf", "preset=quick"]]
    assert expand(["evaluate.budgets=[0,1]", "seed=3"]) == [["evaluate.budgets=[0,1]", "seed=3"]]
    bad = runner.invoke(app, ["sweep", "seed=range(0,"])
    assert bad.exit_code == 2 and "cannot parse sweep overrides" in bad.stderr


def test_shared_stages_run_once_and_a_second_sweep_is_all_cache():
    out = sweep_json(*SMOKE, "seed=0,1", "method=vgf,bc", "launcher=debug")
    jobs = out["jobs"]
    by_step = {}
    for job in jobs:
        by_step.setdefault(job["step"], []).append(job)
    # one collect and one ingest per split serve all four; the policy per seed (vgf and bc share it);
    # no critic for bc; a vgf critic serves one combination, so its job also runs that evaluation
    assert [len(by_step.get(s, [])) for s in ("collect", "dataset", "val_dataset", "policy", "critic+evaluate",
                                              "evaluate")] == [1, 1, 1, 2, 2, 2]
    assert by_step["collect"][0]["combos"] == [0, 1, 2, 3] and all(j["state"] == "done" for j in jobs)
    assert len(out["evaluate_runs"]) == 4 and not out["failed"]
    assert {r["column"] for r in out["report"]} == {"reference", "bc", "vgf"}  # one budget: one vgf column
    again = sweep_json(*SMOKE, "seed=0,1", "method=vgf,bc", "launcher=debug")
    assert all(j["state"] == "cached" for j in again["jobs"]) and len(again["jobs"]) == 1 + 1 + 1 + 2 + 2 + 4
    assert again["evaluate_runs"] == out["evaluate_runs"]


def test_a_failed_job_stops_only_the_combinations_that_need_it():
    out = sweep_json(*SMOKE, "method=bc", "policy.lr=3e-4,1e30", "launcher=debug", code=1)
    failed = [j for j in out["jobs"] if j["state"] == "failed"]
    # each policy serves one combination, so its job runs the rest of the chain (bc: the evaluation)
    assert [j["step"] for j in failed] == ["policy+critic+evaluate"] and "diverged" in failed[0]["error"]
    assert list(out["failed"]) == ["1"] and list(out["evaluate_runs"]) == ["0"]
    config_error = sweep_json(*SMOKE, "method=bc,nosuch", "launcher=debug", code=2)
    assert list(config_error["failed"]) == ["1"] and "nosuch" in config_error["failed"]["1"]


def slurm_up() -> bool:
    """sbatch on PATH and a controller that answers with a usable node."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip().startswith(("idle", "mix")) for s in out.stdout.splitlines())


@pytest.mark.skipif(not slurm_up(), reason="needs a running SLURM cluster (scripts/slurm-local.sh)")
def test_the_same_sweep_through_slurm(tmp_path):
    out = sweep_json(*SMOKE, "method=bc", "seed=0,1", "launcher=slurm", "launcher.timeout_min=10")
    assert not out["failed"] and len(out["evaluate_runs"]) == 2 and out["launcher"] == "slurm"


def test_local_processes_through_submitit():
    out = sweep_json(*SMOKE, "method=bc", "seed=0,1", "--parallel", "2")
    assert out["launcher"] == "local" and not out["failed"] and len(out["evaluate_runs"]) == 2
    assert all(j["state"] == "done" for j in out["jobs"])


def test_steps_a_combination_does_not_have_are_skipped_in_a_tail_job(tmp_path):
    from tests.datafiles import make_d4rl_hdf5
    from vgfcli.sweep import run_steps

    path = make_d4rl_hdf5(tmp_path / "hopper-medium-v2.hdf5")
    combo = ["preset=smoke", "data.source=file", "data.kind=d4rl", f"data.path={path}", "method=bc"]
    # a D4RL file has no val split, and bc has no critic: nothing to run, nothing to crash on
    assert run_steps(["val_dataset", "critic"], combo, {}) == {}


def test_an_unwritable_home_stops_a_sweep_before_planning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VGF_HOME", str(blocker / "home"))
    result = runner.invoke(app, ["sweep", *SMOKE, "seed=0,1", "launcher=debug"])
    assert result.exit_code == 2 and "is not writable" in result.stderr
