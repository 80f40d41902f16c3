"""Input the CLI refuses before any run exists, and numbers it never rounds to something else."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.tracking import Store

runner = CliRunner()


@pytest.mark.parametrize("override, message", [
    ("policy.steps=-5", "policy.steps must be at least 1, got -5"),
    ("policy.batch_size=0", "policy.batch_size must be at least 1, got 0"),
    ("policy.lr=-1", "policy.lr must be positive, got -1.0"),
    ("policy.activation=tanh", "policy.activation must be one of relu, gelu, swish"),
    ("critic.reward_transform=log", "critic.reward_transform must be one of"),
    ("evaluate.num_envs=0", "evaluate.num_envs must be at least 1"),
    ("evaluate.workers=0", "evaluate.workers must be at least 1"),
    ("evaluate.env_workers=-1", "evaluate.env_workers must be at least 0"),
    ("evaluate.compile=often", "evaluate.compile must be true, false or auto"),
    ("frame_stack=0", "frame_stack must be at least 1"),
    ("p_aug=1.5", "p_aug must be in [0, 1]"),
    ("policy.encoder=resnet", "policy.encoder must be one of"),
    ("critic.encoder=resnet", "critic.encoder must be one of"),
    ("critic.hidden=[]", "critic.hidden must be a non-empty list of widths >= 1"),
])
def test_out_of_range_config_values_are_refused_before_any_run(override, message):
    result = runner.invoke(app, ["pipeline", "preset=smoke", override])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert Store("vgf").find(status=None) == []  # nothing ran, nothing was left behind


def test_runs_filters_are_checked():
    for args, message in ((["--stage", "evalute"], "unknown stage 'evalute'"),
                          (["--status", "done"], "unknown status 'done'"), (["--limit", "0"], "--limit")):
        result = runner.invoke(app, ["runs", *args])
        assert result.exit_code == 2 and message in result.stderr


def test_nan_and_inf_metrics_stay_nan_and_inf_in_runs_json():
    store = Store("vgf")
    run = store.start_run("evaluate", "k" * 64, {})
    run.log_metrics({"best_score": float("nan"), "reference_score": float("inf"), "return_mean/x": 1.5}, flush=True)
    run.finish("FINISHED")
    result = runner.invoke(app, ["runs", "--json"])
    assert result.exit_code == 0
    metrics = json.loads(result.stdout)["runs"][0]["metrics"]  # strict JSON: no bare NaN token
    assert metrics == {"best_score": "nan", "reference_score": "inf", "return_mean/x": 1.5}
    table = runner.invoke(app, ["runs"], env={"COLUMNS": "250"})  # wide enough that cells do not wrap
    assert "best_score=nan" in table.stdout and "reference_score=inf" in table.stdout


def test_a_knob_the_method_ignores_is_warned_about_and_left_out_of_its_cache_key():
    first = runner.invoke(app, ["pipeline", "preset=smoke", "method=bc", "--json"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["evaluate", "preset=smoke", "method=bc", "--guidance", "0.5", "--budget", "2",
                                "--json"])
    assert again.exit_code == 0, again.output
    assert "--guidance is ignored by method bc" in again.stderr and "--budget is ignored" in again.stderr
    assert json.loads(again.stdout)["cache_hit"] and json.loads(again.stdout)["run_id"] == \
        json.loads(first.stdout)["run_id"]


def test_progress_is_logged_as_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    from vgfcli import ui as ui_mod

    monkeypatch.setattr(ui_mod, "LOG_EVERY_S", 0.0)  # a line at every advance
    with ui_mod.UI(json_mode=True).progress("train-critic (vgf)", 6000, unit="updates") as bar:
        bar.advance(2000)
        bar.advance(1000)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("train-critic (vgf): 2,000/6,000 updates (33 %), ") and "updates/s, ETA" in lines[0]
    assert lines[1].startswith("train-critic (vgf): 3,000/6,000 updates (50 %)")


def test_an_unusable_home_or_an_unreachable_server_is_the_users_to_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VGF_HOME", str(blocker / "home"))
    result = runner.invoke(app, ["pipeline", "preset=smoke"])
    assert result.exit_code == 2 and "is not writable" in result.stderr and "set VGF_HOME" in result.stderr
    monkeypatch.setenv("VGF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    result = runner.invoke(app, ["runs"])
    assert result.exit_code == 2 and "does not answer" in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr


def test_a_dead_runs_staging_folder_is_removed_by_the_next_run(vgf_home):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = vgf_home / "staging" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "critic.pt").write_bytes(b"half")
    import socket

    (folder / ".owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    mine = vgf_home / "staging" / "alive"
    mine.mkdir()
    (mine / ".owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": __import__("os").getpid()}))
    unnamed = vgf_home / "staging" / f".new-{int(dead.stdout)}-0123"  # killed before its rename
    unnamed.mkdir()
    # a pipeline's parent run whose process was killed: no stage tag, left RUNNING
    store = Store("vgf")
    parent = store.client().create_run(store.experiment_id(), tags={
        "vgf.pipeline": "1", "vgf.host": socket.gethostname(), "vgf.pid": dead.stdout.strip()}).info.run_id
    assert runner.invoke(app, ["pipeline", "preset=smoke", "method=bc"]).exit_code == 0
    assert not folder.exists() and not unnamed.exists() and mine.exists()
    assert store.client().get_run(parent).info.status == "KILLED"


def test_an_output_changed_on_disk_is_never_reused_and_runs_says_so():
    first = runner.invoke(app, ["pipeline", "preset=smoke", "method=bc", "--json"])
    assert first.exit_code == 0, first.output
    policy_run = json.loads(first.stdout)["stages"]["policy"]["run_id"]
    path = next(Path(p) for p in Store("vgf").get(policy_run).output_paths().values())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped, same size
    path.write_bytes(bytes(data))
    again = runner.invoke(app, ["pretrain-policy", "preset=smoke", "method=bc", "--json"])
    assert again.exit_code == 0, again.output
    assert f"run {policy_run[:8]} is not reused" in again.stderr and "sha256" in again.stderr
    assert not json.loads(again.stdout)["cache_hit"]
    runs = {r["run_id"]: r["status"] for r in json.loads(runner.invoke(app, ["runs", "--json"]).stdout)["runs"]}
    assert runs[policy_run] == "DAMAGED"


def test_runs_are_named_tagged_linked_and_nested_under_their_pipeline():
    from mlflow.tracking import MlflowClient

    out = runner.invoke(app, ["pipeline", "preset=smoke", "--json"])
    assert out.exit_code == 0, out.output
    store = Store("vgf")
    client = MlflowClient(store.uri)
    runs = {r.info.run_name: r for r in client.search_runs([store.experiment_id()])}
    assert {"collect cube-single-noisy-v0 s0", "ingest train task1", "ingest val task1",
            "pretrain-policy cube-single-task1 s0", "train-critic vgf cube-single-task1 s0",
            "evaluate vgf cube-single-task1 s0", "pipeline vgf cube-single-task1 s0"} == set(runs)
    parent = runs["pipeline vgf cube-single-task1 s0"].info.run_id
    critic = runs["train-critic vgf cube-single-task1 s0"]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent for n, r in runs.items() if not n.startswith("pipe"))
    assert critic.data.tags["vgf.task"] == "cube-single-noisy-singletask-task1-v0" and critic.data.tags["vgf.seed"] == "0"
    assert critic.data.tags["vgf.preset"] == "smoke" and critic.data.tags["vgf.method"] == "vgf"
    policy_id = runs["pretrain-policy cube-single-task1 s0"].info.run_id
    assert f"runs/{policy_id})" in critic.data.tags["mlflow.note.content"]  # upstream as a link
    assert [d.dataset.name for d in critic.inputs.dataset_inputs] == ["cube-single-singletask-task1-v0"]
    again = runner.invoke(app, ["pipeline", "preset=smoke", "--json"])  # all cache hits: no new parent
    assert again.exit_code == 0 and len(client.search_runs([store.experiment_id()])) == 7
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)["runs"]
    assert len(listed) == 6 and {r.get("method") for r in listed if r["stage"] == "evaluate"} == {"vgf"}


def test_a_store_that_cannot_be_opened_is_named_and_a_stray_half_made_one_is_ignored(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("VGF_HOME", str(home))
    (home / ".mlflow.db.creating-999999").write_bytes(b"half a schema")  # a kill -9 during creation
    assert runner.invoke(app, ["pipeline", "preset=smoke", "method=bc"]).exit_code == 0
    assert not list(home.glob(".mlflow.db.creating-*")) and (home / "mlflow.db").is_file()
    other = tmp_path / "broken"
    other.mkdir()
    (other / "mlflow.db").write_bytes(b"not a database at all" * 100)
    monkeypatch.setenv("VGF_HOME", str(other))
    result = runner.invoke(app, ["pipeline", "preset=smoke", "method=bc"])
    assert result.exit_code == 2 and "cannot be opened" in result.stderr and "mlflow.db" in result.stderr


def test_a_full_disk_is_exit_2_and_leaves_the_run_failed(monkeypatch):
    import errno

    from vgfcli import tracking

    def full(self, outputs, digests):
        raise OSError(errno.ENOSPC, "No space left on device", str(next(iter(outputs.values()))))

    monkeypatch.setattr(tracking.StageRun, "commit_outputs", full)
    result = runner.invoke(app, ["pipeline", "preset=smoke", "method=bc"])
    assert result.exit_code == 2 and "no space left on the device" in result.stderr
    assert [r.status for r in Store("vgf").find(status=None)] == ["FAILED"]  # the collect run, marked


@pytest.mark.parametrize("override, message", [
    ("method.critic_lr=-1", "critic_lr must be > 0, got -1"),
    ("method.vgf_lr=0", "vgf_lr must be > 0"),
    ("method.discount=1.5", "discount must be in (0, 1]"),
    ("method.tau=nan", "tau must be a finite number"),
    ("method.num_particles=0", "num_particles must be >= 1"),
    ("method=fql method.lr=-0.1", "lr must be > 0"),
    ("method=qgf method.expectile=1", "expectile must be in (0, 1)"),
    ("method=qam method.rho=-1", "rho must be >= 0"),
    ("method=avgf method.field_lr=inf", "field_lr must be a finite number"),
])
def test_every_methods_numeric_knobs_are_range_checked_before_any_run(override, message):
    result = runner.invoke(app, ["train-critic", "preset=smoke", *override.split()])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert Store("vgf").find(status=None) == []


def test_an_unreadable_d4rl_file_is_refused_before_any_run(tmp_path):
    text = tmp_path / "hopper-medium-v2.hdf5"
    text.write_text("this is not HDF5\n" * 50)
    result = runner.invoke(app, ["ingest", "dataset=d4rl", f"dataset.path={text}"])
    assert result.exit_code == 2 and "not a readable HDF5 file" in result.stderr
    assert Store("vgf").find(status=None) == []  # no FAILED run left behind


def _tmpfs(tmp_path, size: str):
    """A real filesystem of ``size`` (tmpfs), where this machine lets the tests mount one."""
    import subprocess

    mount = tmp_path / f"tmpfs-{size}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()[:100]}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB filesystem."""
    yield from _tmpfs(tmp_path, "64k")


def test_a_full_disk_under_checkpoints_says_so(tiny_disk, vgf_home):
    """pretrain-policy's checkpoint on a full disk: exit 2, "no space left", not torch's "unexpected pos"."""
    made = runner.invoke(app, ["pipeline", "preset=smoke", "method=bc", "policy.steps=1"])
    assert made.exit_code == 0, made.output
    (vgf_home / "work").rename(vgf_home / "work-old") if (vgf_home / "work").exists() else None
    (vgf_home / "work").symlink_to(tiny_disk)
    (tiny_disk / "filler").write_bytes(b"\0" * 60_000)
    result = runner.invoke(app, ["pretrain-policy", "preset=smoke", "policy.hidden=[256,256]",
                                 "policy.checkpoint_every=1"])
    assert result.exit_code == 2 and "no space left on the device" in result.stderr, result.stderr
    assert "internal error" not in result.stderr


def test_a_full_disk_while_the_store_is_made_says_so(tiny_disk, monkeypatch):
    (tiny_disk / "filler").write_bytes(b"\0" * 56_000)
    monkeypatch.setenv("VGF_HOME", str(tiny_disk))
    result = runner.invoke(app, ["pipeline", "preset=smoke", "method=bc"])
    assert result.exit_code == 2 and "no space left on the device" in result.stderr, result.stderr
    assert "SQL" not in result.stderr and "internal error" not in result.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem, for a whole store."""
    yield from _tmpfs(tmp_path, "4m")


def test_a_disk_that_fills_mid_pipeline_gives_one_line_and_no_running_run(small_disk, empty_store):
    """The store on a 4 MiB disk with 120-600 kB left beside it: wherever the pipeline runs out of room (a stage's
    files, MLflow's database), one line on stderr and exit 2; once there is room again, the next command
    leaves no run RUNNING and no staging folder behind, and says which run ended how."""
    import os
    import shutil
    import subprocess
    import sys

    failed = 0
    for free in (600_000, 400_000, 250_000, 120_000):
        for item in small_disk.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        home = small_disk / "home"
        home.mkdir()
        shutil.copy(empty_store, home / "mlflow.db")
        left = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        (small_disk / "filler").write_bytes(b"\0" * max(0, left - free))
        env = {**os.environ, "VGF_HOME": str(home)}
        run = subprocess.run([sys.executable, "-m", "vgfcli", "pipeline", "preset=smoke", "method=bc", "threads=1"],
                             env=env, capture_output=True, text=True)
        assert run.returncode in (0, 2), run.stderr[-2000:]
        if run.returncode == 2:
            failed += 1
            assert run.stderr.count("\n") == 1 and "no space left on the device" in run.stderr, run.stderr[-3000:]
        (small_disk / "filler").unlink()
        listed = subprocess.run([sys.executable, "-m", "vgfcli", "runs", "--json"], env=env, capture_output=True,
                                text=True)
        assert listed.returncode == 0, listed.stderr
        assert "RUNNING" not in {r["status"] for r in json.loads(listed.stdout)["runs"]}
        assert not any((home / "staging").glob("*")) and not any((home / "unfinished").glob("*"))
    assert failed >= 2  # the disk did fill mid-run
