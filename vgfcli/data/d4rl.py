"""D4RL flat HDF5 -> canonical Dataset.

A D4RL file is one row per step: ``observations``, ``actions``, ``rewards``, ``terminals`` (the env
reached a true terminal state), ``timeouts`` (the time limit cut the trajectory), optionally
``next_observations`` and an ``infos/`` group (``infos/qpos``, ``infos/qvel`` are kept as extras).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vgfcli.data.canonical import Dataset, check_binary, check_columns, open_hdf5, read_hdf5_array, validate
from vgfcli.errors import VgfError

_REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
_NDIM = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "timeouts": 1, "next_observations": 2,
         "infos/qpos": 2, "infos/qvel": 2}
_ENV_ID_KEYS = ("env_id", "env_name", "env")


def read_d4rl_hdf5(path: str | Path, *, env_id: str | None) -> Dataset:
    """Read a D4RL HDF5 file into a canonical Dataset with raw rewards ('d4rl-raw').

    A terminal step ends its trajectory with mask 0; a timeout step ends it with mask 1; the file's last
    row ends a trajectory too. With ``next_observations`` in the file every row is kept. Without it the
    next observation is the following row within a trajectory and, for a terminal step, the step's own
    observation (never used: its mask is 0). A step that ends by timeout, and a last row that is not
    terminal, has no recorded next observation, so those rows are dropped and counted in
    ``attrs['dropped_transitions']`` (with ``attrs['dropped_reason']``); D4RL's own
    ``qlearning_dataset`` drops timeout steps the same way. The step before a dropped one then ends its
    trajectory in the dataset (terminal 1, mask 1).

    ``env_id`` defaults to the file's ``env_id``/``env_name`` attribute (root or ``metadata/``), else the
    file name without suffix.
    """
    import h5py

    path = Path(path)
    source = str(path)
    with open_hdf5(path) as f:
        optional = ["next_observations"] if "next_observations" in f else []
        if isinstance(f.get("infos"), h5py.Group):
            optional += [f"infos/{key}" for key in ("qpos", "qvel") if key in f["infos"]]
        raw = {key: read_hdf5_array(source, f, key) for key in (*_REQUIRED, *optional)}
        env_id = env_id or _env_id_from_file(f) or path.stem
    check_columns(source, raw, _NDIM)
    check_binary(source, "terminals", raw["terminals"])
    check_binary(source, "timeouts", raw["timeouts"])
    if "next_observations" in raw and raw["next_observations"].shape != raw["observations"].shape:
        raise VgfError(f"{source}: next_observations has shape {raw['next_observations'].shape} "
                       f"but observations has {raw['observations'].shape}")

    observations = raw["observations"].astype(np.float32, copy=False)
    terminal = raw["terminals"].astype(bool)
    ends = terminal | raw["timeouts"].astype(bool)
    ends[-1] = True
    if "next_observations" in raw:
        rows, n_dropped = slice(None), 0  # keep every row, without copying
        next_observations = raw["next_observations"].astype(np.float32, copy=False)
    else:
        dropped = ends & ~terminal
        ends[:-1] |= dropped[1:]  # the step before a dropped one is now its trajectory's last
        rows = np.flatnonzero(~dropped)
        if len(rows) == 0:
            raise VgfError(f"{source}: no transitions left after dropping the {len(terminal)} time-limit "
                           "steps that have no next observation")
        # Every kept non-terminal row has a successor in its trajectory, so rows + 1 stays in range.
        next_observations = observations[np.where(terminal[rows], rows, rows + 1)]
        n_dropped = len(terminal) - len(rows)
    attrs = {"source_kind": "d4rl", "source_name": path.name, "env_id": env_id, "task_id": -1,
             "reward_convention": "d4rl-raw", "dropped_transitions": n_dropped}
    if n_dropped:
        attrs["dropped_reason"] = "time-limit steps without next_observations (as D4RL qlearning_dataset)"
    ds = Dataset(
        observations=observations[rows],
        actions=raw["actions"].astype(np.float32, copy=False)[rows],
        rewards=raw["rewards"].astype(np.float32, copy=False)[rows],
        next_observations=next_observations,
        terminals=ends[rows].astype(np.float32),
        masks=(~terminal[rows]).astype(np.float32),
        extras={key.removeprefix("infos/"): raw[key][rows] for key in optional if key.startswith("infos/")},
        attrs=attrs,
    )
    validate(ds, source)
    return ds


def _env_id_from_file(f) -> str | None:
    """An env id recorded in the file's root or ``metadata`` attributes, or a scalar ``metadata/env_*``."""
    import h5py

    meta = f.get("metadata")
    holders = [f.attrs] + ([meta.attrs, meta] if isinstance(meta, h5py.Group) else [])
    for holder in holders:
        for key in _ENV_ID_KEYS:
            value = holder.get(key)
            if isinstance(value, h5py.Dataset):
                value = value[()] if value.shape == () else None
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None
