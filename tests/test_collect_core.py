"""Local OGBench-format data collection: file format, determinism, resume, oracle fidelity, official defaults."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from vgfcli.collect import CollectSpec, collect, collectable_names, episode_stats, resolve_spec
from vgfcli.collect.runner import SHARD_DIR
from vgfcli.errors import VgfError

pytest.importorskip("ogbench")


def spec(name, *, episodes=2, val=1, length=50, shard=1, seed=0, **kw):
    fields = dict(noise=None, noise_smoothing=None, min_norm=None, p_random_action=None)
    fields.update(kw)
    return CollectSpec(
        name=name, episodes=episodes, val_episodes=val, episode_length=length, seed=seed, shard_episodes=shard, **fields
    )


def arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def cube_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cube1")
    calls = []
    paths = collect(resolve_spec(spec("cube-single-play-v0")), out, workers=1, progress=calls.append)
    return out, paths, calls


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("maze1")
    paths = collect(resolve_spec(spec("pointmaze-medium-navigate-v0")), out, workers=1)
    return out, paths


# ------------------------------------------------------------------------------------------------ file format


def _check_official_layout(paths, n_train, n_val, length, ob_dim, action_dim, qpos_dim, qvel_dim, buttons=None):
    import ogbench

    for split, episodes in (("train", n_train), ("val", n_val)):
        raw = arrays(paths[split])
        expected = {"observations", "actions", "terminals", "qpos", "qvel"} | ({"button_states"} if buttons else set())
        assert set(raw) == expected
        n = episodes * length
        assert raw["observations"].dtype == np.float32 and raw["observations"].shape == (n, ob_dim)
        assert raw["actions"].dtype == np.float32 and raw["actions"].shape == (n, action_dim)
        assert raw["terminals"].dtype == bool and raw["terminals"].shape == (n,)
        assert raw["qpos"].dtype == np.float32 and raw["qpos"].shape == (n, qpos_dim)
        assert raw["qvel"].dtype == np.float32 and raw["qvel"].shape == (n, qvel_dim)
        if buttons:
            assert raw["button_states"].dtype == np.int64 and raw["button_states"].shape == (n, buttons)
        # One terminal at the last step of every episode, nowhere else.
        assert np.flatnonzero(raw["terminals"]).tolist() == [length * (i + 1) - 1 for i in range(episodes)]
        assert np.isfinite(raw["observations"]).all() and np.abs(raw["actions"]).max() <= 1.0

        ds = ogbench.load_dataset(str(paths[split]), add_info=True)
        valid = episodes * (length - 1)
        assert ds["observations"].shape == (valid, ob_dim) and ds["next_observations"].shape == (valid, ob_dim)
        assert ds["qpos"].shape == (valid, qpos_dim)
        assert ds["terminals"].sum() == episodes
        # next_observations is the following row of the same episode.
        np.testing.assert_array_equal(ds["next_observations"][: length - 2], raw["observations"][1 : length - 1])


def test_cube_single_play_files_match_official_layout(cube_run):
    out, paths, calls = cube_run
    assert paths == {"train": out / "cube-single-play-v0.npz", "val": out / "cube-single-play-v0-val.npz"}
    _check_official_layout(paths, 2, 1, 50, ob_dim=28, action_dim=5, qpos_dim=21, qvel_dim=20)
    assert sum(calls) == 3 * 50 and len(calls) == 3  # one call per finished shard
    assert not list((out / SHARD_DIR).glob("*.npz"))  # shards are dropped after the merge by default
    assert json.loads((out / "spec.json").read_text())["name"] == "cube-single-play-v0"


def test_pointmaze_navigate_files_match_official_layout(maze_run):
    out, paths = maze_run
    _check_official_layout(paths, 2, 1, 50, ob_dim=2, action_dim=2, qpos_dim=2, qvel_dim=2)
    # The point moves: the oracle plus noise displaces it well beyond the reset jitter.
    qpos = arrays(paths["train"])["qpos"].reshape(2, 50, 2)
    assert (np.linalg.norm(qpos[:, -1] - qpos[:, 0], axis=-1) > 0.5).all()


def test_puzzle_noisy_has_button_states(tmp_path):
    paths = collect(resolve_spec(spec("puzzle-3x3-noisy-v0", episodes=1, length=40)), tmp_path, workers=1)
    _check_official_layout(paths, 1, 1, 40, ob_dim=55, action_dim=5, qpos_dim=23, qvel_dim=23, buttons=9)
    assert set(np.unique(arrays(paths["train"])["button_states"])) <= {0, 1}


def test_visual_cube_files_hold_the_official_generators_frames(tmp_path):
    """visual-cube-single-play-v0: the same oracle episodes as the state dataset, observed as the env's
    64 x 64 x 3 uint8 camera frames, with the official generator's other keys and dtypes."""
    import ogbench

    rs = resolve_spec(spec("visual-cube-single-play-v0", episodes=1, length=8))
    assert rs.env_name == "visual-cube-single-v0" and rs.episodes == 1 and rs.noise == 0.1
    state = resolve_spec(spec("cube-single-play-v0", episodes=1, length=8))
    paths = collect(rs, tmp_path / "visual", workers=1)
    raw = arrays(paths["train"])
    assert set(raw) == {"observations", "actions", "terminals", "qpos", "qvel"}
    assert raw["observations"].dtype == np.uint8 and raw["observations"].shape == (8, 64, 64, 3)
    assert raw["observations"].std() > 0  # a picture, not a blank buffer
    assert raw["actions"].dtype == np.float32 and raw["terminals"].dtype == bool
    # the camera changes nothing the oracle does: same actions and states as the state-based episode
    state_raw = arrays(collect(state, tmp_path / "state", workers=1)["train"])
    np.testing.assert_array_equal(raw["actions"], state_raw["actions"])
    np.testing.assert_array_equal(raw["qpos"], state_raw["qpos"])
    ds = ogbench.load_dataset(str(paths["train"]), ob_dtype=np.uint8)
    assert ds["observations"].shape == (7, 64, 64, 3) and ds["next_observations"].dtype == np.uint8


def test_scene_play_smoke_and_health_rule(tmp_path):
    from vgfcli.collect.manip import _scene_is_healthy

    paths = collect(resolve_spec(spec("scene-play-v0", episodes=1, length=30)), tmp_path, workers=1)
    _check_official_layout(paths, 1, 1, 30, ob_dim=40, action_dim=5, qpos_dim=25, qvel_dim=24, buttons=2)
    assert episode_stats(tmp_path)["retries"].tolist() == [0]

    qpos = np.zeros((5, 25), np.float32)
    qpos[:, 14:17] = [0.4, 0.0, 0.02]
    assert _scene_is_healthy(qpos)
    right = qpos.copy()
    right[3, 15] = 0.29  # cube pushed off to the right
    assert not _scene_is_healthy(right)
    left = qpos.copy()
    left[2, 15:17] = [-0.31, 0.02]  # far left on the table: hidden
    assert not _scene_is_healthy(left)
    left[2, 16] = 0.07  # far left but inside the drawer: fine
    assert _scene_is_healthy(left)


# ------------------------------------------------------------------------------------------------ determinism


def test_workers_do_not_change_output(cube_run, tmp_path):
    out1, paths1, _ = cube_run
    paths2 = collect(resolve_spec(spec("cube-single-play-v0")), tmp_path, workers=2)
    for split in ("train", "val"):
        assert paths1[split].read_bytes() == paths2[split].read_bytes()  # byte-identical, not just equal arrays


def test_seed_and_split_change_output(maze_run, tmp_path):
    _, paths0 = maze_run
    paths1 = collect(resolve_spec(spec("pointmaze-medium-navigate-v0", seed=1)), tmp_path, workers=1)
    a0, a1 = arrays(paths0["train"]), arrays(paths1["train"])
    assert not np.array_equal(a0["observations"], a1["observations"])
    assert not np.array_equal(a0["actions"], a1["actions"])
    # Train and val episodes are seeded differently: val episode 0 is not train episode 0.
    v0 = arrays(paths0["val"])
    assert not np.array_equal(v0["observations"][:50], a0["observations"][:50])


def test_in_process_run_restores_global_numpy_rng(tmp_path):
    np.random.seed(123)
    expected = np.random.get_state()[1].copy()
    collect(resolve_spec(spec("pointmaze-medium-stitch-v0", episodes=1, length=10)), tmp_path, workers=1)
    assert np.array_equal(np.random.get_state()[1], expected)


# ------------------------------------------------------------------------------------------------ resume


def test_resume_recomputes_only_missing_and_corrupt_shards(tmp_path):
    rs = resolve_spec(spec("pointmaze-large-stitch-v0", episodes=4, val=2, length=30, shard=1))
    calls = []
    paths = collect(rs, tmp_path, workers=1, progress=calls.append, keep_shards=True)
    assert len(calls) == 6
    train_bytes, val_bytes = paths["train"].read_bytes(), paths["val"].read_bytes()
    shards = tmp_path / SHARD_DIR
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz")}
    assert len(mtimes) == 6

    # A complete run is not redone.
    calls.clear()
    collect(rs, tmp_path, workers=1, progress=calls.append, keep_shards=True)
    assert calls == []

    # Simulate a run killed before the merge: one shard missing, one half-written, a stray temp file.
    for p in paths.values():
        p.unlink()
    (shards / "train-00001.npz").unlink()
    corrupt = shards / "train-00002.npz"
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    (shards / ".train-00003.npz.tmp-1-deadbeef").write_bytes(b"partial")
    calls.clear()
    paths = collect(rs, tmp_path, workers=1, progress=calls.append, keep_shards=True)
    assert calls == [30, 30]
    redone = {p.name for p in shards.glob("*.npz") if p.stat().st_mtime_ns != mtimes.get(p.name)}
    assert redone == {"train-00001.npz", "train-00002.npz"}
    assert not list(shards.glob(".*tmp*"))
    assert paths["train"].read_bytes() == train_bytes and paths["val"].read_bytes() == val_bytes


def test_changed_spec_starts_over(tmp_path):
    rs = resolve_spec(spec("pointmaze-medium-stitch-v0", episodes=2, length=20))
    collect(rs, tmp_path, workers=1, keep_shards=True)
    other = replace(rs, seed=5)
    calls = []
    paths = collect(other, tmp_path, workers=1, progress=calls.append, keep_shards=True)
    assert len(calls) == 3  # nothing of the old spec was reused
    assert json.loads((tmp_path / "spec.json").read_text())["seed"] == 5
    fresh = collect(other, tmp_path / "fresh", workers=1)
    assert paths["train"].read_bytes() == fresh["train"].read_bytes()


def test_foreign_file_with_the_same_name_is_left_alone(tmp_path):
    foreign = tmp_path / "pointmaze-medium-stitch-v0.npz"
    foreign.write_bytes(b"downloaded")
    with pytest.raises(VgfError, match="not written by vgf collect"):
        collect(resolve_spec(spec("pointmaze-medium-stitch-v0", episodes=1, length=10)), tmp_path, workers=1)
    assert foreign.read_bytes() == b"downloaded"


def test_merged_file_is_a_plain_npz(cube_run):
    _, paths, _ = cube_run
    with zipfile.ZipFile(paths["train"]) as zf:
        assert sorted(zf.namelist()) == sorted(
            f"{k}.npy" for k in ["observations", "actions", "terminals", "qpos", "qvel"]
        )


# ------------------------------------------------------------------------------------------------ fidelity


def test_cube_play_oracle_completes_subtasks_and_noise_shows(tmp_path):
    noisy = collect(
        resolve_spec(spec("cube-single-play-v0", episodes=2, length=200, shard=2)), tmp_path / "a", workers=1
    )
    clean = collect(
        resolve_spec(spec("cube-single-play-v0", episodes=2, length=200, shard=2, noise=0.0)), tmp_path / "b", workers=1
    )
    stats = episode_stats(tmp_path / "a")
    assert (stats["successes"] >= 1).all() and (stats["subtasks"] >= 1).all()

    data = arrays(noisy["train"])
    cube_xyz = data["qpos"][:, 14:17].reshape(2, 200, 3)
    assert (cube_xyz[:, :, 2].max(axis=1) > 0.05).all()  # the cube gets picked up in every episode
    moved = np.linalg.norm(cube_xyz[:, :, :2] - cube_xyz[:, :1, :2], axis=-1).max(axis=1)
    assert (moved > 0.05).all()  # and carried somewhere else

    def jitter(d):
        a = d["actions"].reshape(2, 200, 5)
        return np.abs(np.diff(a[:, :, :3], axis=1)).mean()

    # The plan noise (0.1, smoothed) makes consecutive actions visibly less smooth than a noise-free plan.
    assert jitter(data) > 1.5 * jitter(arrays(clean["train"]))
    assert np.abs(data["actions"]).max() <= 1.0


def test_noisy_markov_actions_carry_gripper_noise(tmp_path):
    paths = collect(resolve_spec(spec("cube-single-noisy-v0", episodes=2, length=100, shard=2)), tmp_path, workers=1)
    actions = arrays(paths["train"])["actions"]
    assert np.abs(actions).max() <= 1.0
    # Markov oracles command the gripper with exactly +-1; noise (10x xi on that axis) and random actions
    # pull many gripper actions off those values.
    off = np.abs(np.abs(actions[:, 4]) - 1.0) > 1e-3
    assert off.mean() > 0.2


# ------------------------------------------------------------------------------------------------ spec


def test_resolve_spec_official_defaults():
    def r(name, **kw):
        return resolve_spec(
            CollectSpec(
                name=name,
                episodes=None,
                val_episodes=None,
                episode_length=None,
                noise=None,
                noise_smoothing=None,
                min_norm=None,
                p_random_action=None,
                seed=0,
                **kw,
            )
        )

    rs = r("cube-single-play-v0")
    assert (rs.env_name, rs.dataset_type, rs.episodes, rs.val_episodes, rs.episode_length) == (
        "cube-single-v0",
        "play",
        1000,
        100,
        1001,
    )
    assert (rs.noise, rs.noise_smoothing, rs.p_random_action) == (0.1, 0.5, 0.0)
    rs = r("cube-quadruple-noisy-v0")
    assert (rs.episodes, rs.val_episodes, rs.noise, rs.min_norm, rs.p_random_action) == (5000, 500, 0.1, 0.4, 0.1)
    rs = r("puzzle-4x4-noisy-v0")
    assert (rs.episodes, rs.p_random_action) == (1000, 0.2)
    rs = r("pointmaze-giant-navigate-v0")
    assert (rs.env_name, rs.episodes, rs.val_episodes, rs.episode_length, rs.noise) == (
        "pointmaze-giant-v0",
        500,
        50,
        2001,
        0.5,
    )
    rs = r("pointmaze-teleport-stitch-v0")
    assert (rs.episodes, rs.val_episodes, rs.episode_length) == (5000, 500, 201)
    json.dumps(rs.to_json())  # JSON-able for cache keys
    assert None not in rs.to_json().values()
    names = collectable_names()
    visual = [n for n in names if n.startswith("visual-")]
    assert len(names) == 44 and len(visual) == 18  # 18 manipulation datasets, each also seen by the camera
    assert all(n.removeprefix("visual-") in names for n in visual)
    assert r("visual-scene-noisy-v0").env_name == "visual-scene-v0"


@pytest.mark.parametrize(
    "name",
    [
        "antmaze-large-navigate-v0",
        "humanoidmaze-medium-stitch-v0",
        "antsoccer-arena-navigate-v0",
        "visual-antmaze-medium-navigate-v0",
    ],
)
def test_expert_policy_datasets_are_refused(name):
    with pytest.raises(VgfError, match="expert") as e:
        resolve_spec(spec(name))
    assert "pointmaze" in str(e.value) and "cube" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("cube-sextuple-play-v0", "unknown dataset"),
        ("visual-pointmaze-medium-navigate-v0", "unknown dataset"),
        ("cube-single-play-singletask-task1-v0", "cube-single-play-v0"),
        ("powderworld-easy-play-v0", "powderworld"),
    ],
)
def test_other_names_are_refused(name, fragment):
    with pytest.raises(VgfError, match=fragment):
        resolve_spec(spec(name))


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(min_norm=0.3), "min_norm does not apply"),
        (dict(noise=-1.0), "noise must be >= 0"),
        (dict(episodes=0), "episodes must be >= 1"),
        (dict(p_random_action=1.5), "p_random_action must be <= 1"),
        (dict(shard=0), "shard_episodes"),
    ],
)
def test_bad_values_are_refused(kw, fragment):
    with pytest.raises(VgfError, match=fragment):
        resolve_spec(spec("cube-single-play-v0", **kw))


def test_bad_workers_are_refused(tmp_path):
    with pytest.raises(VgfError, match="workers"):
        collect(resolve_spec(spec("pointmaze-medium-stitch-v0")), tmp_path, workers=0)
