"""The canonical transition dataset every vgf stage reads, and its one-file HDF5 form.

A ``Dataset`` is a flat table of N transitions ``(s, a, r, s', terminal, mask)``:

* ``terminals`` marks trajectory ends (1.0 on the last transition of each trajectory), so episodes are
  the runs between ones; it says nothing about bootstrapping.
* ``masks`` says whether to bootstrap from ``s'``: 0 only at a true terminal state, 1 at time limits.

The readers (``ogbench_npz``, ``d4rl``, ``minari``) build one from a source file and the helpers here
(``check_columns``, ``open_hdf5``, ``read_hdf5_array``) keep their error messages uniform. Everything is
vectorised numpy: an ingest of a million transitions should cost about what reading the file costs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vgfcli.errors import VgfError

FORMAT_VERSION = 1
CORE_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "masks")
# Ranks of the core arrays: [N, dim] or [N].
_CORE_NDIM = {"observations": 2, "actions": 2, "rewards": 1, "next_observations": 2, "terminals": 1, "masks": 1}
# Attributes that save() derives from the arrays; load() drops them so a round trip gives back ds.attrs.
_DERIVED_ATTRS = ("obs_dim", "act_dim", "n_transitions", "n_episodes", "format_version")
ACTION_BOUND_MODES = ("warn", "clip", "rescale")


@dataclass
class Dataset:
    """N transitions as float32 arrays, plus optional per-transition extras and JSON-able attrs."""

    observations: np.ndarray  # [N, obs_dim]
    actions: np.ndarray  # [N, act_dim]
    rewards: np.ndarray  # [N]
    next_observations: np.ndarray  # [N, obs_dim]
    terminals: np.ndarray  # [N], 1.0 at the last transition of each trajectory
    masks: np.ndarray  # [N], 1 = bootstrap from next_observations, 0 = true terminal
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. qpos, qvel, button_states
    # source_kind, source_name (a file name, no path: the output is the same bytes wherever it is
    # made), env_id, task_id, reward_convention, ...
    attrs: dict = field(default_factory=dict)

    @property
    def n_transitions(self) -> int:
        return int(self.observations.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(np.count_nonzero(self.terminals))

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def episode_starts(self) -> np.ndarray:
        """Index of the first transition of each episode."""
        return episode_starts(self.terminals)

    def episode_lengths(self) -> np.ndarray:
        """Number of transitions in each episode."""
        return np.diff(np.append(self.episode_starts(), self.n_transitions))

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode (float64: float32 sums drift over long episodes)."""
        return episode_returns(self.rewards, self.terminals)


def episode_starts(terminals: np.ndarray) -> np.ndarray:
    """First row of each trajectory, ``terminals`` marking each one's last row (a final row without
    the mark still ends one)."""
    starts = np.concatenate([[0], np.flatnonzero(np.asarray(terminals) > 0) + 1])
    return starts[starts < len(terminals)].astype(np.int64)


def episode_returns(rewards: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """Undiscounted return of each trajectory, summed in float64."""
    return np.add.reduceat(np.asarray(rewards, dtype=np.float64), episode_starts(terminals))


# --- checks shared by the readers -------------------------------------------------------------------


def check_columns(source: str, arrays: dict[str, np.ndarray], ndim: dict[str, int]) -> int:
    """Check raw per-row arrays read from one file and return their common row count N.

    Each array must hold numbers (bool/int/float, not strings or objects), have the rank given in
    ``ndim``, contain no NaN/inf and have as many rows as the first one; N must be positive.
    """
    ref = next(iter(arrays))
    n = None
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise VgfError(f"{source}: key '{key}' has dtype {arr.dtype}, expected numbers")
        if arr.ndim != ndim[key]:
            raise VgfError(f"{source}: key '{key}' has shape {arr.shape}, expected {ndim[key]} dimension(s)")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise VgfError(f"{source}: key '{key}' has {arr.shape[0]} rows but '{ref}' has {n}")
        check_finite(source, key, arr)
    if not n:
        raise VgfError(f"{source}: no data (0 rows)")
    return n


def check_finite(source: str, key: str, arr: np.ndarray) -> None:
    """Raise if a float array holds NaN or inf, naming the key and how many."""
    if arr.dtype.kind != "f":
        return
    bad = arr.size - np.count_nonzero(np.isfinite(arr))
    if bad:
        raise VgfError(f"{source}: key '{key}' has {bad} non-finite value(s) (NaN/inf)")


def check_binary(source: str, key: str, arr: np.ndarray) -> None:
    """Raise unless every value is 0 or 1 (flags such as terminals, timeouts, masks)."""
    if not np.all((arr == 0) | (arr == 1)):
        raise VgfError(f"{source}: key '{key}' must hold only 0 and 1")


def open_hdf5(path: Path, what: str = "HDF5 file"):
    """Open an HDF5 file read-only, turning missing/unreadable/not-HDF5 into a VgfError."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise VgfError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        # h5py says "file signature not found" for text files and "truncated file" for cut-off ones.
        raise VgfError(f"{path}: not a readable {what} ({_reason(e)})") from None


def read_hdf5_array(source: str, group, key: str) -> np.ndarray:
    """Read a whole dataset ``group[key]``; a missing key, a sub-group or an unreadable block -> VgfError."""
    import h5py

    if key not in group:
        raise VgfError(f"{source}: missing key '{key}'")
    node = group[key]
    if not isinstance(node, h5py.Dataset):
        raise VgfError(f"{source}: key '{key}' is a group, expected an array")
    try:
        return node[()]
    except (OSError, ValueError, TypeError) as e:
        raise VgfError(f"{source}: key '{key}' could not be read ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    return str(e).strip() or type(e).__name__


# --- the canonical dataset ----------------------------------------------------------------------------


def validate(ds: Dataset, source: str) -> None:
    """Raise VgfError unless ``ds`` is a well-formed canonical dataset; ``source`` prefixes messages."""
    core = {key: getattr(ds, key) for key in CORE_KEYS}
    for key, arr in core.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise VgfError(f"{source}: key '{key}' must be a float array, got {getattr(arr, 'dtype', type(arr))}")
    check_columns(source, core, _CORE_NDIM)
    if ds.next_observations.shape != ds.observations.shape:
        raise VgfError(f"{source}: next_observations has shape {ds.next_observations.shape} "
                       f"but observations has {ds.observations.shape}")
    check_binary(source, "terminals", ds.terminals)
    check_binary(source, "masks", ds.masks)
    if ds.terminals[-1] != 1:
        raise VgfError(f"{source}: the last transition is not marked as a trajectory end (terminals[-1] = 0)")
    for key, arr in ds.extras.items():
        if key in CORE_KEYS:
            raise VgfError(f"{source}: extra '{key}' clashes with a core key")
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise VgfError(f"{source}: extra '{key}' must be a numeric array")
        if arr.ndim == 0 or arr.shape[0] != ds.n_transitions:
            raise VgfError(f"{source}: extra '{key}' has shape {arr.shape}, expected {ds.n_transitions} rows")
        check_finite(source, key, arr)


def save(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as one HDF5 file, atomically: readers see the old file or the whole new one.

    Arrays go uncompressed (contiguous) because later stages read them whole and decompression would
    dominate load time; attrs are ``ds.attrs`` plus obs_dim, act_dim, n_transitions, n_episodes and
    format_version.
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    attrs = {**ds.attrs, "obs_dim": ds.obs_dim, "act_dim": ds.act_dim, "n_transitions": ds.n_transitions,
             "n_episodes": ds.n_episodes, "format_version": FORMAT_VERSION}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            for key in CORE_KEYS:
                f.create_dataset(key, data=getattr(ds, key))
            for key, arr in ds.extras.items():
                f.create_dataset(key, data=arr)
            for key, value in attrs.items():
                f.attrs[key] = value
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VgfError(f"{path}: could not write dataset ({_reason(e)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike) -> Dataset:
    """Read a file written by ``save`` and validate it; any problem -> VgfError naming the file."""
    import h5py

    path = Path(path)
    source = str(path)
    with open_hdf5(path, "vgf dataset file") as f:
        version = f.attrs.get("format_version")
        if version is None:
            raise VgfError(f"{source}: not a vgf dataset file (no format_version attribute)")
        if int(version) != FORMAT_VERSION:
            raise VgfError(f"{source}: dataset format_version {version} is not supported (expected {FORMAT_VERSION})")
        raw = {key: read_hdf5_array(source, f, key) for key in CORE_KEYS}
        extras = {key: read_hdf5_array(source, f, key) for key, node in f.items()
                  if key not in CORE_KEYS and isinstance(node, h5py.Dataset)}
        attrs = {key: _plain(value) for key, value in f.attrs.items() if key not in _DERIVED_ATTRS}
    check_columns(source, raw, _CORE_NDIM)
    ds = Dataset(**{key: arr.astype(np.float32, copy=False) for key, arr in raw.items()}, extras=extras, attrs=attrs)
    validate(ds, source)
    return ds


def _plain(value):
    """HDF5 attribute value -> plain Python (str, int, float, bool or list), as it was in ds.attrs."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def summarize(ds: Dataset) -> dict:
    """Headline numbers for the run page and the terminal: sizes, returns, episode lengths, action range."""
    returns = ds.episode_returns()
    lengths = ds.episode_lengths()
    return {
        "transitions": ds.n_transitions,
        "episodes": ds.n_episodes,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "episode_length_mean": float(lengths.mean()),
        "episode_length_min": int(lengths.min()),
        "episode_length_max": int(lengths.max()),
        "action_min": float(ds.actions.min()),
        "action_max": float(ds.actions.max()),
        "reward_convention": str(ds.attrs.get("reward_convention", "unknown")),
        "obs_dim": ds.obs_dim,
        "act_dim": ds.act_dim,
        "mask_zeros": int(ds.n_transitions - np.count_nonzero(ds.masks)),
    }


def action_bounds(ds: Dataset, mode: str, source: str) -> tuple[Dataset, str | None]:
    """Handle actions outside [-1, 1], which the policies (tanh / clipped flows) cannot produce.

    Returns ``(ds, None)`` when all actions are in range. Otherwise returns a message naming the range
    found and, by ``mode``: 'warn' the dataset unchanged; 'clip' a copy with actions clipped to [-1, 1];
    'rescale' a copy with each action dim mapped linearly from its [min, max] to [-1, 1] and
    ``attrs['action_low'/'action_high']`` set so a policy's actions can be mapped back.
    """
    if mode not in ACTION_BOUND_MODES:
        raise VgfError(f"action_bounds must be one of {', '.join(ACTION_BOUND_MODES)}, got '{mode}'")
    lo, hi = float(ds.actions.min()), float(ds.actions.max())
    if lo >= -1.0 and hi <= 1.0:
        return ds, None
    message = f"{source}: actions span [{lo:.4g}, {hi:.4g}], outside [-1, 1]"
    if mode == "warn":
        return ds, message
    if mode == "clip":
        actions = np.clip(ds.actions, -1.0, 1.0)
        return dataclasses.replace(ds, actions=actions, attrs={**ds.attrs, "action_transform": "clip"}), \
            f"{message}; clipped to [-1, 1]"
    # float64 so that each dim's extremes land on exactly -1 and 1 after the cast back to float32.
    actions = ds.actions.astype(np.float64)
    low, high = actions.min(axis=0), actions.max(axis=0)
    span = high - low
    # A constant dim has no range to stretch: map it to 0 (and back to its constant via low/high).
    scale = np.divide(2.0, span, out=np.zeros_like(span), where=span > 0)
    actions = np.clip((actions - low) * scale - 1.0, -1.0, 1.0)
    actions[:, span == 0] = 0.0
    attrs = {**ds.attrs, "action_transform": "rescale", "action_low": low.tolist(), "action_high": high.tolist()}
    return dataclasses.replace(ds, actions=actions.astype(np.float32), attrs=attrs), \
        f"{message}; rescaled each dim to [-1, 1] (bounds in attrs action_low/action_high)"
