"""Readers (OGBench npz, D4RL HDF5, Minari) and the canonical dataset: semantics and every validation error."""

from __future__ import annotations

import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest

from tests.datafiles import OGBENCH_ENVS, make_d4rl_hdf5, make_minari_dir, make_ogbench_npz
from vgfcli.data import (
    Dataset,
    action_bounds,
    ensure_ogbench_file,
    load,
    parse_ogbench_name,
    read_d4rl_hdf5,
    read_minari,
    read_ogbench_npz,
    save,
    summarize,
    validate,
)
from vgfcli.data.ogbench_npz import _singletask_env
from vgfcli.errors import VgfError


def _raises(call, *fragments):
    """Assert ``call()`` raises a one-line VgfError whose message contains every fragment."""
    with pytest.raises(VgfError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _tiny(n_episodes=2, ep_len=3, actions=None) -> Dataset:
    n = n_episodes * ep_len
    terminals = np.zeros(n, np.float32)
    terminals[ep_len - 1::ep_len] = 1.0
    obs = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return Dataset(observations=obs, actions=np.zeros((n, 1), np.float32) if actions is None else actions,
                   rewards=np.arange(n, dtype=np.float32), next_observations=obs + 1, terminals=terminals,
                   masks=1.0 - terminals, extras={"qpos": np.ones((n, 3))}, attrs={"reward_convention": "test"})


# --- OGBench ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, dataset_type", [("cube-single", "play"), ("puzzle-3x3", "play"),
                                               ("pointmaze-medium", "navigate")])
def test_ogbench_matches_ogbench_pipeline(tmp_path, env, dataset_type):
    import ogbench

    name = f"{env}-{dataset_type}-v0"
    path = make_ogbench_npz(tmp_path / f"{name}.npz", env)
    make_ogbench_npz(tmp_path / f"{name}-val.npz", env, seed=1)  # ogbench's loader insists on the val file
    ds = read_ogbench_npz(path, dataset_name=name, task=None)
    env_id = ds.attrs["env_id"]
    gym_env = _singletask_env(env_id)
    assert gym_env.action_space.shape == (OGBENCH_ENVS[env]["act"],)
    # OGBench's own single-task pipeline on the same file, sharing our (cached) env to save a MuJoCo build.
    ref, _ = ogbench.make_env_and_datasets(f"{env}-{dataset_type}-singletask-v0", dataset_path=str(path),
                                           dataset_only=True, cur_env=gym_env, add_info=True)
    for key in ("observations", "actions", "next_observations", "terminals", "rewards", "masks"):
        np.testing.assert_array_equal(getattr(ds, key), ref[key], err_msg=key)
        assert getattr(ds, key).dtype == np.float32
    for key in ("qpos", "qvel", "button_states"):
        if key in ref:
            np.testing.assert_array_equal(ds.extras[key], ref[key], err_msg=key)
    assert 0 < ds.masks.sum() < ds.n_transitions  # the relabel saw both failures and successes
    assert ds.n_episodes == 3 and ds.n_transitions == 3 * 19
    assert ds.attrs["task_id"] == {"cube-single": 2, "puzzle-3x3": 4, "pointmaze-medium": 1}[env]
    assert ds.attrs["reward_convention"] == "ogbench-singletask" and ds.attrs["split"] == "train"


def test_ogbench_task_override_and_val_split(tmp_path):
    path = make_ogbench_npz(tmp_path / "pointmaze-medium-navigate-v0-val.npz", "pointmaze-medium")
    default = read_ogbench_npz(path, dataset_name="pointmaze-medium-navigate-v0", task=None)
    other = read_ogbench_npz(path, dataset_name="pointmaze-medium-navigate-singletask-task3-v0", task=3)
    assert default.attrs["split"] == "val" and default.attrs["dataset_name"] == "pointmaze-medium-navigate-v0"
    assert other.attrs["env_id"] == "pointmaze-medium-singletask-task3-v0" and other.attrs["task_id"] == 3
    assert not np.array_equal(default.masks, other.masks)  # the fixture's goal is task 1's
    np.testing.assert_array_equal(default.terminals, other.terminals)


@pytest.mark.parametrize("name, task, expected", [
    ("cube-single-play-v0", None, ("cube-single-play-v0", "train", "cube-single-singletask-task2-v0", 2)),
    ("cube-single-play-v0", 4, ("cube-single-play-v0", "train", "cube-single-singletask-task4-v0", 4)),
    ("cube-single-play-v0-val", None, ("cube-single-play-v0", "val", "cube-single-singletask-task2-v0", 2)),
    ("cube-single-play-singletask-task3-v0", None,
     ("cube-single-play-v0", "train", "cube-single-singletask-task3-v0", 3)),
    ("cube-single-play-singletask-task3-v0", 3,
     ("cube-single-play-v0", "train", "cube-single-singletask-task3-v0", 3)),
    ("scene-play-singletask-v0", None, ("scene-play-v0", "train", "scene-singletask-task2-v0", 2)),
    ("antmaze-large-navigate-v0", None, ("antmaze-large-navigate-v0", "train", "antmaze-large-singletask-task1-v0", 1)),
    ("antsoccer-arena-stitch-v0", None,
     ("antsoccer-arena-stitch-v0", "train", "antsoccer-arena-singletask-task4-v0", 4)),
    ("puzzle-3x3-play-v0", None, ("puzzle-3x3-play-v0", "train", "puzzle-3x3-singletask-task4-v0", 4)),
    ("puzzle-4x5-play-v0", None, ("puzzle-4x5-play-v0", "train", "puzzle-4x5-singletask-task2-v0", 2)),
])
def test_parse_ogbench_name(name, task, expected):
    assert parse_ogbench_name(name, task) == expected


@pytest.mark.parametrize("name, task, fragment", [
    ("cube-single-play-singletask-task3-v0", 2, "says task 3"),
    ("mydata", None, "not an OGBench dataset name"),
    ("cube-single-play-singletask-foo-v0", None, "not an OGBench single-task name"),
    ("cube-single-play-v0", 0, "positive integer"),
    ("strange-env-play-v0", None, "no default single-task task"),
])
def test_parse_ogbench_name_errors(name, task, fragment):
    _raises(lambda: parse_ogbench_name(name, task), fragment)


def test_default_tasks_agree_with_envs():
    # The locomotion envs build in milliseconds; their '-singletask-v0' variant holds the default task.
    import gymnasium
    import ogbench  # noqa: F401

    for env_name in ("pointmaze-medium", "antsoccer-arena"):
        env = gymnasium.make(f"{env_name}-singletask-v0")
        assert env.unwrapped._reward_task_id == parse_ogbench_name(f"{env_name}-navigate-v0")[3]


@pytest.mark.parametrize("corruption, fragment", [
    (dict(drop_key="actions"), "missing key 'actions'"),
    (dict(truncate_key="actions"), "key 'actions' has 59 rows but 'observations' has 60"),
    (dict(nan_key="observations"), "key 'observations' has 1 non-finite"),
    (dict(nan_key="qpos", nan_value=np.inf), "key 'qpos' has 1 non-finite"),
    (dict(string_key="actions"), "key 'actions' has dtype <U"),
    (dict(rank_key="terminals"), "key 'terminals' has shape (60, 1)"),
    (dict(n_episodes=0), "no data (0 rows)"),
    (dict(drop_key="qpos"), "missing key 'qpos', needed to compute"),
])
def test_ogbench_validation_errors(tmp_path, corruption, fragment):
    path = make_ogbench_npz(tmp_path / "bad.npz", "pointmaze-medium", **corruption)
    _raises(lambda: read_ogbench_npz(path, dataset_name="pointmaze-medium-navigate-v0", task=None), "bad.npz", fragment)


def test_ogbench_file_errors(tmp_path):
    good = make_ogbench_npz(tmp_path / "good.npz", "pointmaze-medium", compressed=False)
    def read(p, name="pointmaze-medium-navigate-v0"):
        return read_ogbench_npz(p, dataset_name=name, task=None)

    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _raises(lambda: read(tmp_path / "cut.npz"), "cut.npz", "corrupt or truncated")
    (tmp_path / "text.npz").write_text("observations,actions\n1,2\n")
    _raises(lambda: read(tmp_path / "text.npz"), "text.npz", "not an .npz")
    _raises(lambda: read(tmp_path / "absent.npz"), "absent.npz", "no such file")
    np.savez(tmp_path / "open.npz", **{k: v[:-1] for k, v in np.load(good).items()})
    _raises(lambda: read(tmp_path / "open.npz"), "open.npz", "last row is not a trajectory end")
    _raises(lambda: read(good, "nosuchenv-play-v0"), "no default single-task task")
    assert "unknown OGBench environment" in _raises(lambda: read_ogbench_npz(good, dataset_name="nosuchenv-play-v0",
                                                                             task=1))
    _raises(lambda: read(good, "cube-single-play-v0"), "good.npz", "observes")


def test_ensure_ogbench_file_offline(tmp_path, monkeypatch):
    tmp_path = tmp_path / "ogbench"  # a directory of our own: the listing below must hold only our files
    tmp_path.mkdir()
    existing = tmp_path / "cube-single-play-v0.npz"
    existing.write_bytes(b"x")
    assert ensure_ogbench_file("cube-single-play-v0", tmp_path) == existing  # no network needed

    class DroppedConnection:  # the download starts, then the connection drops: the .tmp must not survive
        length = 100

        def __iter__(self):
            yield b"partial"
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(urllib.request, "urlopen", lambda url: DroppedConnection())
    message = _raises(lambda: ensure_ogbench_file("scene-play-v0", tmp_path), "could not download OGBench dataset "
                      "'scene-play-v0'", "connection reset", str(tmp_path), "dataset.path=FILE")
    assert "scene-play-v0.npz and scene-play-v0-val.npz" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube-single-play-v0.npz"]

    def offline(url):
        raise urllib.error.URLError(OSError("Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    _raises(lambda: ensure_ogbench_file("scene-play-v0-val", tmp_path), "(Name or service not known)")


# --- D4RL -------------------------------------------------------------------------------------------------


def test_d4rl_timeouts_and_terminals_without_next_obs(tmp_path):
    path = make_d4rl_hdf5(tmp_path / "hopper-medium-v2.hdf5", n_episodes=4, ep_len=10, terminal_episodes=(1,))
    with h5py.File(path) as f:
        obs = f["observations"][()]
        qpos = f["infos/qpos"][()]
    ds = read_d4rl_hdf5(path, env_id=None)
    # Episodes 0, 2 and 3 end by timeout: their last steps have no next observation and are dropped.
    kept = np.setdiff1d(np.arange(40), [9, 29, 39])
    assert ds.attrs["dropped_transitions"] == 3 and "time-limit" in ds.attrs["dropped_reason"]
    np.testing.assert_array_equal(ds.observations, obs[kept])
    np.testing.assert_array_equal(ds.extras["qpos"], qpos[kept].astype(np.float64))
    expected_next = obs[np.minimum(kept + 1, 39)]
    expected_next[kept == 19] = obs[19]  # the terminal step's own observation (masked anyway)
    np.testing.assert_array_equal(ds.next_observations, expected_next)
    np.testing.assert_array_equal(np.flatnonzero(ds.masks == 0), [np.flatnonzero(kept == 19)[0]])
    np.testing.assert_array_equal(ds.observations[ds.terminals == 1], obs[[8, 19, 28, 38]])
    assert ds.n_episodes == 4 and list(ds.episode_lengths()) == [9, 10, 9, 9]
    assert ds.attrs["env_id"] == "hopper-medium-v2" and ds.attrs["reward_convention"] == "d4rl-raw"


def test_d4rl_with_next_obs_keeps_every_row(tmp_path):
    path = make_d4rl_hdf5(tmp_path / "walker.hdf5", with_next_obs=True, terminal_episodes=(0, 2),
                          env_name="Walker2d-v4")
    with h5py.File(path) as f:
        next_obs = f["next_observations"][()]
    ds = read_d4rl_hdf5(path, env_id=None)
    assert ds.n_transitions == 40 and ds.attrs["dropped_transitions"] == 0 and "dropped_reason" not in ds.attrs
    np.testing.assert_array_equal(ds.next_observations, next_obs)
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [9, 19, 29, 39])
    np.testing.assert_array_equal(np.flatnonzero(ds.masks == 0), [9, 29])
    assert ds.attrs["env_id"] == "Walker2d-v4"
    assert read_d4rl_hdf5(path, env_id="given").attrs["env_id"] == "given"
    with h5py.File(path, "a") as f:
        del f.attrs["env_name"]
        f.create_group("metadata")["env_name"] = np.bytes_("walker2d-medium-v2")
    assert read_d4rl_hdf5(path, env_id=None).attrs["env_id"] == "walker2d-medium-v2"


def test_d4rl_open_last_trajectory(tmp_path):
    path = make_d4rl_hdf5(tmp_path / "cut.hdf5", terminal_episodes=(0, 1, 2, 3), open_end=True)
    ds = read_d4rl_hdf5(path, env_id="x")
    assert ds.attrs["dropped_transitions"] == 1 and ds.n_transitions == 39
    assert ds.terminals[-1] == 1 and ds.masks[-1] == 1


@pytest.mark.parametrize("corruption, fragment", [
    (dict(drop_key="timeouts"), "missing key 'timeouts'"),
    (dict(truncate_key="rewards"), "key 'rewards' has 39 rows but 'observations' has 40"),
    (dict(nan_key="rewards"), "key 'rewards' has 1 non-finite"),
    (dict(nan_key="infos/qpos", nan_value=-np.inf), "key 'infos/qpos' has 1 non-finite"),
    (dict(string_key="actions"), "key 'actions' has dtype |S"),
    (dict(rank_key="rewards"), "key 'rewards' has shape (40, 1)"),
    (dict(n_episodes=0), "no data (0 rows)"),
    (dict(truncate_key="next_observations", with_next_obs=True), "key 'next_observations' has 39 rows"),
])
def test_d4rl_validation_errors(tmp_path, corruption, fragment):
    path = make_d4rl_hdf5(tmp_path / "bad.hdf5", **corruption)
    _raises(lambda: read_d4rl_hdf5(path, env_id=None), "bad.hdf5", fragment)


def test_d4rl_file_errors(tmp_path):
    good = make_d4rl_hdf5(tmp_path / "good.hdf5")
    (tmp_path / "cut.hdf5").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _raises(lambda: read_d4rl_hdf5(tmp_path / "cut.hdf5", env_id=None), "cut.hdf5", "not a readable HDF5 file")
    (tmp_path / "text.hdf5").write_text("not hdf5 at all\n")
    _raises(lambda: read_d4rl_hdf5(tmp_path / "text.hdf5", env_id=None), "text.hdf5", "not a readable HDF5 file")
    _raises(lambda: read_d4rl_hdf5(tmp_path / "absent.hdf5", env_id=None), "absent.hdf5", "no such file")
    timeouts_only = make_d4rl_hdf5(tmp_path / "t.hdf5", n_episodes=2, ep_len=1, terminal_episodes=())
    _raises(lambda: read_d4rl_hdf5(timeouts_only, env_id=None), "t.hdf5", "no transitions left")


# --- Minari -----------------------------------------------------------------------------------------------


def test_minari_episodes_in_id_order_with_t_plus_one_observations(tmp_path):
    root = make_minari_dir(tmp_path / "hopper", n_episodes=12, terminated=(0, 11))
    with h5py.File(root / "data" / "main_data.hdf5") as f:
        obs = [f[f"episode_{i}/observations"][()] for i in range(12)]
    ds = read_minari(root)
    assert list(ds.episode_lengths()) == [5 + i for i in range(12)]  # numeric, not lexicographic, order
    np.testing.assert_array_equal(ds.observations, np.concatenate([o[:-1] for o in obs]).astype(np.float32))
    np.testing.assert_array_equal(ds.next_observations, np.concatenate([o[1:] for o in obs]).astype(np.float32))
    ends = np.cumsum([5 + i for i in range(12)]) - 1
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), ends)
    np.testing.assert_array_equal(np.flatnonzero(ds.masks == 0), ends[[0, 11]])
    assert ds.attrs["env_id"] == "Hopper-v5" and ds.attrs["dataset_id"] == "test/synthetic-v0"
    assert ds.attrs["reward_convention"] == "minari-raw" and "obs_keys" not in ds.attrs


def test_minari_dict_observations(tmp_path):
    root = make_minari_dir(tmp_path / "fetch", n_episodes=2, dict_obs=True, metadata_next_to_data=True)
    ds = read_minari(root)
    assert ds.attrs["obs_keys"] == ["achieved_goal", "desired_goal", "meta/step", "observation"]
    assert ds.obs_dim == 2 + 2 + 1 + 4
    np.testing.assert_array_equal(ds.observations[:5, 4], np.arange(5))  # meta/step, a scalar per step
    np.testing.assert_array_equal(ds.next_observations[:5, 4], np.arange(1, 6))


@pytest.mark.parametrize("corruption, fragment", [
    (dict(truncate_key="observations"), "episode_1: key 'observations' has 6 rows, expected 7"),
    (dict(truncate_key="rewards"), "episode_1: key 'rewards' has 5 rows but 'actions' has 6"),
    (dict(drop_key="terminations"), "episode_1: missing key 'terminations'"),
    (dict(nan_key="observations"), "episode_1: key 'observations' has 1 non-finite"),
    (dict(string_key="rewards"), "episode_1: key 'rewards' has dtype |S"),
    (dict(rank_key="actions"), "episode_1: key 'actions' has shape (6, 1, 2)"),
])
def test_minari_validation_errors(tmp_path, corruption, fragment):
    root = make_minari_dir(tmp_path / "ds", corrupt_episode=1, **corruption)
    _raises(lambda: read_minari(root), "main_data.hdf5", fragment)


def test_minari_directory_errors(tmp_path):
    _raises(lambda: read_minari(make_minari_dir(tmp_path / "a", metadata="missing")), "no metadata.json")
    _raises(lambda: read_minari(make_minari_dir(tmp_path / "b", metadata="garbage")), "metadata.json", "unreadable")
    _raises(lambda: read_minari(make_minari_dir(tmp_path / "c", n_episodes=0)), "main_data.hdf5", "no episode_")
    _raises(lambda: read_minari(tmp_path / "nowhere"), "nowhere", "no such directory")
    broken = make_minari_dir(tmp_path / "d")
    (broken / "data" / "main_data.hdf5").write_text("garbage")
    _raises(lambda: read_minari(broken), "main_data.hdf5", "not a readable HDF5 file")


# --- canonical dataset ------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    ds = read_minari(make_minari_dir(tmp_path / "m", n_episodes=3, dict_obs=True))
    ds.extras["qpos"] = np.ones((ds.n_transitions, 3))
    ds.attrs.update(action_low=[-2.0, -1.0], flag=True)
    out = save(ds, tmp_path / "out" / "dataset.h5")
    assert sorted(p.name for p in out.parent.iterdir()) == ["dataset.h5"]  # no temp file left
    back = load(out)
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "masks"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key))
    np.testing.assert_array_equal(back.extras["qpos"], ds.extras["qpos"])
    assert back.attrs == ds.attrs
    with h5py.File(out) as f:
        assert (f.attrs["format_version"], f.attrs["n_transitions"], f.attrs["n_episodes"]) == (1, ds.n_transitions, 3)
        assert (f.attrs["obs_dim"], f.attrs["act_dim"]) == (ds.obs_dim, ds.act_dim)


def test_save_failure_leaves_nothing(tmp_path):
    ds = _tiny()
    ds.extras["bad"] = np.array([object()] * ds.n_transitions)  # h5py cannot store Python objects
    with pytest.raises(TypeError):
        save(ds, tmp_path / "out" / "x.h5")
    assert list((tmp_path / "out").iterdir()) == []


def test_load_errors(tmp_path):
    _raises(lambda: load(make_d4rl_hdf5(tmp_path / "d4rl.hdf5")), "d4rl.hdf5", "not a vgf dataset file")
    (tmp_path / "text.h5").write_text("hello")
    _raises(lambda: load(tmp_path / "text.h5"), "text.h5", "not a readable vgf dataset file")
    path = save(_tiny(), tmp_path / "ok.h5")
    with h5py.File(path, "a") as f:
        del f["masks"]
    _raises(lambda: load(path), "ok.h5", "missing key 'masks'")
    path = save(_tiny(), tmp_path / "nan.h5")
    with h5py.File(path, "a") as f:
        f["rewards"][2] = np.nan
    _raises(lambda: load(path), "nan.h5", "key 'rewards' has 1 non-finite")
    path = save(_tiny(), tmp_path / "cut.h5")
    path.write_bytes(path.read_bytes()[:3000])
    _raises(lambda: load(path), "cut.h5")


@pytest.mark.parametrize("change, fragment", [
    (lambda ds: ds.terminals.__setitem__(-1, 0.0), "last transition is not marked"),
    (lambda ds: ds.masks.__setitem__(0, 0.5), "'masks' must hold only 0 and 1"),
    (lambda ds: setattr(ds, "rewards", ds.rewards.astype(np.int32)), "'rewards' must be a float array"),
    (lambda ds: setattr(ds, "next_observations", ds.next_observations[:, :1]), "next_observations has shape"),
    (lambda ds: ds.extras.__setitem__("qpos", np.ones(2)), "extra 'qpos' has shape (2,)"),
])
def test_validate_errors(change, fragment):
    ds = _tiny()
    change(ds)
    _raises(lambda: validate(ds, "mem.h5"), "mem.h5", fragment)


def test_summarize_and_episode_returns():
    ds = _tiny()
    np.testing.assert_array_equal(ds.episode_returns(), [0 + 1 + 2, 3 + 4 + 5])
    summary = summarize(ds)
    assert summary["transitions"] == 6 and summary["episodes"] == 2 and summary["mask_zeros"] == 2
    returns = (summary["return_mean"], summary["return_std"], summary["return_min"], summary["return_max"])
    assert returns == (7.5, 4.5, 3, 12)
    assert (summary["episode_length_min"], summary["episode_length_max"], summary["episode_length_mean"]) == (3, 3, 3.0)
    assert summary["reward_convention"] == "test" and (summary["obs_dim"], summary["act_dim"]) == (2, 1)


def test_action_bounds():
    inside = _tiny()
    assert action_bounds(inside, "clip", "f")[1] is None
    actions = np.array([[-1.7, 0.0], [0.5, 0.2], [2.0, 0.4], [0.0, 0.2], [1.0, 0.0], [0.3, 0.2]], np.float32)
    ds = _tiny(actions=actions)
    same, message = action_bounds(ds, "warn", "f.npz")
    assert same is ds and message == "f.npz: actions span [-1.7, 2], outside [-1, 1]"
    clipped, message = action_bounds(ds, "clip", "f.npz")
    assert clipped.actions.min() == -1 and clipped.actions.max() == 1 and "clipped" in message
    np.testing.assert_array_equal(clipped.actions[:, 1], actions[:, 1])
    scaled, message = action_bounds(ds, "rescale", "f.npz")
    assert "rescaled" in message and ds.actions is actions  # the input is left alone
    np.testing.assert_allclose(scaled.actions.min(axis=0), [-1, -1])
    np.testing.assert_allclose(scaled.actions.max(axis=0), [1, 1])
    low, high = np.array(scaled.attrs["action_low"]), np.array(scaled.attrs["action_high"])
    np.testing.assert_allclose((scaled.actions + 1) / 2 * (high - low) + low, actions, atol=1e-6)
    _raises(lambda: action_bounds(ds, "squash", "f.npz"), "action_bounds must be one of")
    constant = _tiny(actions=np.column_stack([actions[:, 0], np.full(6, 3.0, np.float32)]))
    scaled, _ = action_bounds(constant, "rescale", "f.npz")
    assert np.all(scaled.actions[:, 1] == 0) and scaled.attrs["action_low"][1] == scaled.attrs["action_high"][1] == 3
