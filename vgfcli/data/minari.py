"""Minari dataset directory -> canonical Dataset.

A Minari (HDF5 storage) dataset is ``metadata.json`` plus ``data/main_data.hdf5`` holding one group
``episode_{id}`` per episode, with ``observations`` (T+1 rows: the final observation included),
``actions``, ``rewards``, ``terminations`` and ``truncations`` (T rows each) and optional ``infos``
(ignored). Minari itself keeps ``metadata.json`` inside ``data/``; we also accept it next to ``data/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from vgfcli.data.canonical import (
    Dataset,
    check_binary,
    check_columns,
    check_finite,
    open_hdf5,
    read_hdf5_array,
    validate,
)
from vgfcli.errors import VgfError

_STEP_NDIM = {"actions": 2, "rewards": 1, "terminations": 1, "truncations": 1}


def read_minari(directory: str | Path) -> Dataset:
    """Read a Minari dataset directory into a canonical Dataset with raw rewards ('minari-raw').

    Episodes are taken in numeric id order. Per episode: observations[:-1] -> observations,
    observations[1:] -> next_observations, masks = 1 - terminations (truncation still bootstraps), and
    the last step ends the trajectory. Dict observations are flattened into one vector by concatenating
    their leaves in sorted key order (nested keys as 'a/b'), recorded in ``attrs['obs_keys']``.
    ``env_id`` comes from the metadata's ``env_spec`` id, else its ``dataset_id``, else the directory name.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VgfError(f"{directory}: no such directory (a Minari dataset directory)")
    data_dir = directory / "data" if (directory / "data").is_dir() else directory
    metadata = _read_metadata(directory, data_dir)
    main = data_dir / "main_data.hdf5"
    if not main.is_file():
        raise VgfError(f"{directory}: no data/main_data.hdf5 (not a Minari dataset with HDF5 storage?)")
    source = str(main)

    with open_hdf5(main) as f:
        ids = sorted(int(m.group(1)) for name in f if (m := re.fullmatch(r"episode_([0-9]+)", name)))
        if not ids:
            raise VgfError(f"{source}: no episode_<id> groups (empty dataset)")
        episodes = [_read_episode(f"{source}: episode_{i}", f[f"episode_{i}"]) for i in ids]

    first_keys, first_dim = episodes[0]["obs_keys"], episodes[0]["observations"].shape[1]
    for i, ep in zip(ids, episodes):
        if ep["obs_keys"] != first_keys or ep["observations"].shape[1] != first_dim:
            raise VgfError(f"{source}: episode_{i} observations differ in layout from episode_{ids[0]}")

    def cat(key, part=slice(None)):
        return np.concatenate([ep[key][part] for ep in episodes]).astype(np.float32, copy=False)

    terminals = np.zeros(sum(len(ep["rewards"]) for ep in episodes), np.float32)
    terminals[np.cumsum([len(ep["rewards"]) for ep in episodes]) - 1] = 1.0
    attrs = {"source_kind": "minari", "source_name": directory.name,
             "env_id": _env_id(metadata) or directory.name, "task_id": -1, "reward_convention": "minari-raw"}
    if isinstance(metadata.get("dataset_id"), str):
        attrs["dataset_id"] = metadata["dataset_id"]
    if first_keys is not None:
        attrs["obs_keys"] = first_keys
    ds = Dataset(
        observations=cat("observations", slice(None, -1)),
        actions=cat("actions"),
        rewards=cat("rewards"),
        next_observations=cat("observations", slice(1, None)),
        terminals=terminals,
        masks=1.0 - cat("terminations"),
        attrs=attrs,
    )
    validate(ds, source)
    return ds


def _read_metadata(directory: Path, data_dir: Path) -> dict:
    path = next((p for p in (data_dir / "metadata.json", directory / "metadata.json") if p.is_file()), None)
    if path is None:
        raise VgfError(f"{directory}: no metadata.json (not a Minari dataset directory?)")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VgfError(f"{path}: unreadable metadata.json ({e})") from None
    if not isinstance(metadata, dict):
        raise VgfError(f"{path}: metadata.json should hold a JSON object")
    return metadata


def _env_id(metadata: dict) -> str | None:
    """The env id from ``env_spec`` (a JSON string in Minari, or already a dict), else the dataset id."""
    spec = metadata.get("env_spec")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            spec = None
    if isinstance(spec, dict) and isinstance(spec.get("id"), str):
        return spec["id"]
    dataset_id = metadata.get("dataset_id")
    return dataset_id if isinstance(dataset_id, str) else None


def _read_episode(source: str, group) -> dict:
    """One episode's arrays, checked: T step rows, T+1 observation rows flattened to [T+1, dim]."""
    import h5py

    if not isinstance(group, h5py.Group):
        raise VgfError(f"{source}: expected a group of arrays")
    steps = {key: read_hdf5_array(source, group, key) for key in _STEP_NDIM}
    n = check_columns(source, steps, _STEP_NDIM)
    check_binary(source, "terminations", steps["terminations"])
    node = group.get("observations")
    if node is None:
        raise VgfError(f"{source}: missing key 'observations'")
    if isinstance(node, h5py.Group):
        obs_keys = _leaf_keys(node, "")
        if not obs_keys:
            raise VgfError(f"{source}: observations group is empty")
        columns = [_as_columns(source, f"observations/{key}", read_hdf5_array(source, node, key), n)
                   for key in obs_keys]
        observations = np.concatenate(columns, axis=1)
    else:
        obs_keys = None
        observations = _as_columns(source, "observations", read_hdf5_array(source, group, "observations"), n)
    return {"observations": observations, "obs_keys": obs_keys, **steps}


def _leaf_keys(group, prefix: str) -> list[str]:
    """Paths of every array under ``group``, sorted by key at each level ('a/b' for nested dicts)."""
    import h5py

    keys = []
    for key in sorted(group):
        if isinstance(group[key], h5py.Group):
            keys += _leaf_keys(group[key], f"{prefix}{key}/")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _as_columns(source: str, key: str, arr: np.ndarray, n_steps: int) -> np.ndarray:
    """An observation array as [T+1, dim]: scalars per step become one column; images are refused."""
    if arr.dtype.kind not in "biuf":
        raise VgfError(f"{source}: key '{key}' has dtype {arr.dtype}, expected numbers")
    if arr.ndim not in (1, 2):
        raise VgfError(f"{source}: key '{key}' has shape {arr.shape}; only vector observations are supported")
    if arr.shape[0] != n_steps + 1:
        raise VgfError(f"{source}: key '{key}' has {arr.shape[0]} rows, expected {n_steps + 1} "
                       f"(one more than the {n_steps} actions)")
    check_finite(source, key, arr)
    return arr.reshape(n_steps + 1, -1)
