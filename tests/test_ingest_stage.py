"""`vgf ingest` end to end through the CLI: outputs, cache hit / miss / --force, failed runs, bad input."""

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.datafiles import make_d4rl_hdf5, make_minari_dir, make_ogbench_npz
from vgfcli.cli import app
from vgfcli.tracking import Store

runner = CliRunner()


def vgf(*args):
    return runner.invoke(app, [str(a) for a in args])


def ingest_json(*overrides):
    result = vgf("ingest", *overrides, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def all_runs():
    return Store("vgf").find(status=None)


def test_ogbench_ingest_cache_hit_and_force(tmp_path):
    npz = make_ogbench_npz(tmp_path / "cube-single-play-v0.npz")
    first = ingest_json(f"dataset.path={npz}")
    assert not first["cache_hit"]
    with h5py.File(first["outputs"]["dataset"]) as f:
        assert {"observations", "actions", "rewards", "next_observations", "terminals", "masks"} <= set(f)
        assert f.attrs["env_id"] == "cube-single-singletask-task2-v0"
        assert f["observations"].shape[0] == first["metrics"]["transitions"]
    second = ingest_json(f"dataset.path={npz}")
    assert second["cache_hit"] and second["run_id"] == first["run_id"]
    assert second["outputs"] == first["outputs"]
    assert second["metrics"] == first["metrics"] and second["summary"] == first["summary"]
    forced = ingest_json(f"dataset.path={npz}", "--force")
    assert not forced["cache_hit"] and forced["run_id"] != first["run_id"]
    assert forced["cache_key"] == first["cache_key"]
    # A different task is a different dataset: a cache miss.
    other = ingest_json(f"dataset.path={npz}", "dataset.task=1")
    assert not other["cache_hit"] and other["summary"]["task_id"] == 1


def test_changed_source_file_is_a_cache_miss(tmp_path):
    npz = tmp_path / "cube-single-play-v0.npz"
    make_ogbench_npz(npz, seed=0)
    first = ingest_json(f"dataset.path={npz}")
    make_ogbench_npz(npz, seed=1)
    assert not ingest_json(f"dataset.path={npz}")["cache_hit"]
    make_ogbench_npz(npz, seed=0)
    assert ingest_json(f"dataset.path={npz}")["run_id"] == first["run_id"]


def test_mlflow_run_holds_config_tags_metrics_and_artifact(tmp_path):
    npz = make_ogbench_npz(tmp_path / "cube-single-play-v0.npz")
    out = ingest_json(f"dataset.path={npz}")
    store = Store("vgf")
    run = store.client().get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset.kind"] == "ogbench"
    assert run.data.params["action_bounds"] == "warn"
    assert run.data.tags["vgf.stage"] == "ingest"
    assert run.data.tags["vgf.cache_key"] == out["cache_key"]
    assert "vgf.version" in run.data.tags
    assert run.data.metrics["transitions"] == out["metrics"]["transitions"]
    artifacts = {a.path for a in store.client().list_artifacts(out["run_id"])}
    assert {"config.yaml", "dataset.h5"} <= artifacts


def test_d4rl_and_minari_ingest(tmp_path):
    h5 = make_d4rl_hdf5(tmp_path / "hopper-medium-v2.hdf5")
    out = ingest_json("dataset=d4rl", f"dataset.path={h5}")
    with h5py.File(out["outputs"]["dataset"]) as f:
        assert f.attrs["source_kind"] == "d4rl"
        masks, terminals = f["masks"][:], f["terminals"][:]
        assert (masks == 0).sum() <= (terminals == 1).sum()
    minari = make_minari_dir(tmp_path / "minari-ds")
    out = ingest_json("dataset=minari", f"dataset.path={minari}")
    assert out["summary"]["source_kind"] == "minari"
    assert out["metrics"]["episodes"] > 0


def test_actions_out_of_bounds_warn_then_clip(tmp_path):
    h5 = make_d4rl_hdf5(tmp_path / "wide.hdf5")
    with h5py.File(h5, "a") as f:
        f["actions"][...] = f["actions"][:] * 2.0
    warned = vgf("ingest", "dataset=d4rl", f"dataset.path={h5}", "--json")
    assert warned.exit_code == 0
    out = json.loads(warned.stdout)
    assert out["warnings"] and "outside [-1, 1]" in out["warnings"][0]
    clipped = ingest_json("dataset=d4rl", f"dataset.path={h5}", "action_bounds=clip")
    with h5py.File(clipped["outputs"]["dataset"]) as f:
        assert np.abs(f["actions"][:]).max() <= 1.0


def bad_npz(tmp_path, kind):
    path = tmp_path / "cube-single-play-v0.npz"
    if kind == "missing-file":
        return tmp_path / "nope.npz"
    if kind == "not-a-zip":
        path.write_text("hello")
        return path
    make_ogbench_npz(path)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        arrays = dict(np.load(path))
        if kind == "missing-key":
            del arrays["actions"]
        elif kind == "nan":
            arrays["observations"][3, 2] = np.nan
        elif kind == "length":
            arrays["actions"] = arrays["actions"][:-1]
        elif kind == "empty":
            arrays = {k: v[:0] for k, v in arrays.items()}
        np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("kind", ["missing-file", "not-a-zip", "truncated", "missing-key", "nan", "length", "empty"])
def test_bad_input_is_exit_2_one_line_and_leaves_no_run(tmp_path, kind):
    path = bad_npz(tmp_path, kind)
    result = vgf("ingest", f"dataset.path={path}")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0]
    assert "Traceback" not in result.output
    assert all_runs() == []


def test_bad_config_is_exit_2(tmp_path):
    result = vgf("ingest", "dataset.task=two")
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    result = vgf("ingest", "action_bounds=squash", f"dataset.path={make_ogbench_npz(tmp_path / 'x-play-v0.npz')}")
    assert result.exit_code == 2 and "action_bounds" in result.stderr


def test_failed_run_is_never_a_cache_hit(tmp_path, monkeypatch):
    npz = make_ogbench_npz(tmp_path / "cube-single-play-v0.npz")
    from vgfcli.data import canonical

    def broken_save(ds, path):
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(canonical, "save", broken_save)
    failed = vgf("ingest", f"dataset.path={npz}")
    assert failed.exit_code == 1 and "internal error" in failed.stderr
    assert [r.status for r in all_runs()] == ["FAILED"]
    monkeypatch.undo()
    monkeypatch.setenv("VGF_HOME", str(tmp_path / "vgf-home"))
    out = ingest_json(f"dataset.path={npz}")
    assert not out["cache_hit"]
    assert sorted(r.status for r in all_runs()) == ["FAILED", "FINISHED"]


def test_runs_lists_stage_runs(tmp_path):
    npz = make_ogbench_npz(tmp_path / "cube-single-play-v0.npz")
    out = ingest_json(f"dataset.path={npz}")
    listed = json.loads(vgf("runs", "--json").stdout)["runs"]
    assert [(r["run_id"], r["stage"], r["status"]) for r in listed] == [(out["run_id"], "ingest", "FINISHED")]
    table = vgf("runs")
    assert table.exit_code == 0 and out["run_id"][:8] in table.stdout
    assert json.loads(vgf("runs", "--stage", "collect", "--json").stdout)["runs"] == []
    assert len(json.loads(vgf("runs", "--status", "finished", "--json").stdout)["runs"]) == 1


def test_cfg_prints_resolved_config_and_help_lists_commands():
    result = vgf("ingest", "dataset=d4rl", "dataset.path=/x.hdf5", "--cfg")
    assert result.exit_code == 0 and "kind: d4rl" in result.stdout and "path: /x.hdf5" in result.stdout
    assert all_runs() == []
    help_text = vgf("--help").stdout
    for command in ("collect", "ingest", "pretrain-policy", "train-critic", "evaluate", "pipeline", "runs"):
        assert command in help_text
    assert vgf("--version").stdout.startswith("vgf ")


def test_ingest_runs_carry_the_task_and_seed_of_their_lineage(tmp_path):
    """Filtering by vgf.task (and vgf.seed) finds the ingest runs with the training runs they fed."""
    made = vgf("pipeline", "preset=smoke", "evaluate.budgets=[0]", "threads=1", "seed=3", "--json")
    assert made.exit_code == 0, made.output
    task = "cube-single-noisy-singletask-task1-v0"
    from mlflow.tracking import MlflowClient

    store = Store("vgf")
    client = MlflowClient(store.uri)
    experiment = client.get_experiment_by_name("vgf").experiment_id
    found = client.search_runs([experiment], f"tags.`vgf.task` = '{task}'")
    stages = [r.data.tags.get("vgf.stage") for r in found]
    assert set(stages) >= {"ingest", "pretrain-policy", "train-critic", "evaluate"}, stages
    assert stages.count("ingest") == 2  # train and val splits
    collect = client.search_runs([experiment], "tags.`vgf.stage` = 'collect'")[0]
    for run in found:  # the data's seed on ingest runs (the collect's), the training seed on the others
        wanted = collect.data.tags["vgf.seed"] if run.data.tags.get("vgf.stage") == "ingest" else "3"
        assert run.data.tags["vgf.seed"] == wanted
    d4rl = ingest_json("dataset=d4rl", f"dataset.path={make_d4rl_hdf5(tmp_path / 'hopper-medium-v2.hdf5')}")
    record = next(r for r in all_runs() if r.run_id == d4rl["run_id"])
    assert record.tags["vgf.task"] == "hopper-medium-v2" and "vgf.seed" not in record.tags
