"""Small synthetic dataset files for tests: OGBench npz, D4RL HDF5, Minari directories.

Every maker accepts the same corruption options, so a validation test is one line:

* ``drop_key='actions'``: the key is left out
* ``truncate_key='actions'``: the key loses its last row (a length mismatch)
* ``nan_key='observations'`` (with ``nan_value=np.inf`` for inf): one value becomes NaN
* ``string_key='rewards'``: the key is stored as strings
* ``rank_key='terminals'``: the key gets an extra axis
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Shapes of the real OGBench single-task envs (observation_space, action_space, MuJoCo qpos/qvel,
# buttons), and where each env's default task puts its goal: the object (cube xyz or agent xy) sits in
# qpos[goal_slice] and must reach `goal`; puzzle-3x3's default task (4) wants every button on.
OGBENCH_ENVS = {
    "cube-single": dict(obs=28, act=5, qpos=21, qvel=20, buttons=0, goal_slice=slice(14, 17), goal=(0.5, 0.0, 0.02)),
    "puzzle-3x3": dict(obs=55, act=5, qpos=23, qvel=23, buttons=9, goal_slice=None, goal=None),
    "pointmaze-medium": dict(obs=2, act=2, qpos=2, qvel=2, buttons=0, goal_slice=slice(0, 2), goal=(20.0, 20.0)),
    "antmaze-large": dict(obs=29, act=8, qpos=15, qvel=14, buttons=0, goal_slice=slice(0, 2), goal=(36.0, 24.0)),
}


def make_ogbench_npz(path, env: str = "cube-single", n_episodes: int = 3, ep_len: int = 20, seed: int = 0,
                     *, compressed: bool = True, **corruptions) -> Path:
    """Write an OGBench-style npz (same keys and dtypes as OGBench's generators) and return its path.

    Each episode has ``ep_len`` states and ends with terminals = True. The task object moves from a
    random start to the default task's goal and stays there for the last fifth of the episode, so the
    single-task relabel yields both failures and successes.
    """
    spec = OGBENCH_ENVS[env]
    rng = np.random.default_rng(seed)
    n = n_episodes * ep_len
    progress = np.tile(np.linspace(0.0, 1.0, ep_len), n_episodes)[:, None]
    qpos = rng.normal(0.0, 0.1, (n, spec["qpos"]))
    if spec["goal"] is not None:
        goal = np.asarray(spec["goal"])
        start = np.repeat(goal + rng.normal(0.0, 0.3 * (np.abs(goal).max() or 1.0), (n_episodes, len(goal))),
                          ep_len, axis=0)
        qpos[:, spec["goal_slice"]] = goal + (start - goal) * np.clip((0.8 - progress) / 0.8, 0.0, 1.0)
    observations = rng.normal(0.0, 1.0, (n, spec["obs"]))
    if env.endswith("maze-medium") or env.endswith("maze-large"):
        observations[:, :2] = qpos[:, :2]  # maze observations start with the agent's xy
    terminals = np.zeros(n, bool)
    terminals[ep_len - 1::ep_len] = True
    arrays = {
        "observations": observations.astype(np.float32),
        "actions": rng.uniform(-1.0, 1.0, (n, spec["act"])).astype(np.float32),
        "terminals": terminals,
        "qpos": qpos.astype(np.float32),
        "qvel": rng.normal(0.0, 0.1, (n, spec["qvel"])).astype(np.float32),
    }
    if spec["buttons"]:
        buttons = rng.integers(0, 2, (n, spec["buttons"]))
        buttons[progress[:, 0] > 0.8] = 1
        arrays["button_states"] = buttons.astype(np.int64)
    _corrupt(arrays, **corruptions)
    path = Path(path)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def make_d4rl_hdf5(path, n_episodes: int = 4, ep_len: int = 10, *, with_next_obs: bool = False,
                   terminal_episodes=(1,), open_end: bool = False, env_name: str | None = None,
                   infos: bool = True, obs_dim: int = 11, act_dim: int = 3, seed: int = 0, **corruptions) -> Path:
    """Write a D4RL-style HDF5 file and return its path.

    Episode ``i`` ends with ``terminals`` = 1 if ``i in terminal_episodes``, else with ``timeouts`` = 1;
    with ``open_end`` the last episode ends with neither (a file cut mid-trajectory). ``env_name``, if
    given, is stored as the root attribute 'env_name'; ``infos`` adds infos/qpos and infos/qvel.
    """
    import h5py

    rng = np.random.default_rng(seed)
    states = rng.normal(0.0, 1.0, (n_episodes, ep_len + 1, obs_dim)).astype(np.float32)
    n = n_episodes * ep_len
    ends = np.arange(1, n_episodes + 1) * ep_len - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    for i, end in enumerate(ends):
        if open_end and i == n_episodes - 1:
            continue
        (terminals if i in terminal_episodes else timeouts)[end] = True
    arrays = {
        "observations": states[:, :-1].reshape(n, obs_dim),
        "actions": rng.uniform(-1.0, 1.0, (n, act_dim)).astype(np.float32),
        "rewards": rng.normal(0.0, 1.0, n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }
    if with_next_obs:
        arrays["next_observations"] = states[:, 1:].reshape(n, obs_dim)
    if infos:
        arrays["infos/qpos"] = rng.normal(0.0, 1.0, (n, 7))
        arrays["infos/qvel"] = rng.normal(0.0, 1.0, (n, 6))
    _corrupt(arrays, **corruptions)
    path = Path(path)
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=_h5able(arr))
        if env_name is not None:
            f.attrs["env_name"] = env_name
    return path


def make_minari_dir(path, n_episodes: int = 3, dict_obs: bool = False, *, terminated=(0,), obs_dim: int = 4,
                    act_dim: int = 2, metadata: str = "ok", metadata_next_to_data: bool = False,
                    env_id: str = "Hopper-v5", corrupt_episode: int | None = None, seed: int = 0,
                    **corruptions) -> Path:
    """Write a Minari-style dataset directory (data/main_data.hdf5 + metadata.json) and return it.

    Episode ``i`` has ``5 + i`` steps (so order mistakes show) and ends terminated if ``i in terminated``,
    else truncated. ``dict_obs`` stores observations as a group: observation, achieved_goal,
    desired_goal and a nested meta/step scalar. ``metadata`` is 'ok', 'missing' or 'garbage'; it goes
    inside data/ (where Minari puts it), or beside data/ with ``metadata_next_to_data``.
    ``corruptions`` apply to episode ``corrupt_episode``'s arrays.
    """
    import h5py

    rng = np.random.default_rng(seed)
    root = Path(path)
    data = root / "data"
    data.mkdir(parents=True)
    with h5py.File(data / "main_data.hdf5", "w") as f:
        for i in range(n_episodes):
            steps = 5 + i
            arrays = {
                "observations": rng.normal(0.0, 1.0, (steps + 1, obs_dim)),
                "actions": rng.uniform(-1.0, 1.0, (steps, act_dim)).astype(np.float32),
                "rewards": rng.normal(0.0, 1.0, steps),
                "terminations": np.arange(steps) == steps - 1 if i in terminated else np.zeros(steps, bool),
                "truncations": np.arange(steps) == steps - 1 if i not in terminated else np.zeros(steps, bool),
            }
            if i == corrupt_episode:
                _corrupt(arrays, **corruptions)
            group = f.create_group(f"episode_{i}")
            group.attrs["id"], group.attrs["total_steps"] = i, steps
            for key, arr in arrays.items():
                if key == "observations" and dict_obs:
                    obs = group.create_group("observations")
                    obs["observation"] = arr
                    obs["achieved_goal"] = rng.normal(0.0, 1.0, (steps + 1, 2))
                    obs["desired_goal"] = rng.normal(0.0, 1.0, (steps + 1, 2))
                    obs.create_group("meta")["step"] = np.arange(steps + 1)
                else:
                    group.create_dataset(key, data=_h5able(arr))
    meta_path = (root if metadata_next_to_data else data) / "metadata.json"
    if metadata == "ok":
        spec = json.dumps({"id": env_id, "entry_point": "gymnasium.envs.mujoco:HopperEnv", "max_episode_steps": 1000})
        meta_path.write_text(json.dumps({"dataset_id": "test/synthetic-v0", "env_spec": spec, "data_format": "hdf5",
                                         "total_episodes": n_episodes}))
    elif metadata == "garbage":
        meta_path.write_text("{not json")
    return root


def _corrupt(arrays: dict, drop_key=None, truncate_key=None, nan_key=None, nan_value=np.nan, string_key=None,
             rank_key=None) -> None:
    if drop_key:
        del arrays[drop_key]
    if truncate_key:
        arrays[truncate_key] = arrays[truncate_key][:-1]
    if nan_key:
        arr = arrays[nan_key].astype(np.float32)
        arr.flat[1] = nan_value
        arrays[nan_key] = arr
    if string_key:
        arrays[string_key] = arrays[string_key].astype(str)
    if rank_key:
        arrays[rank_key] = arrays[rank_key][:, None]


def _h5able(arr: np.ndarray) -> np.ndarray:
    # h5py stores byte strings but not numpy's unicode arrays.
    return arr.astype("S") if arr.dtype.kind == "U" else arr
