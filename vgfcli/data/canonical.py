"""The canonical transition dataset every vgf stage reads, and its one-file HDF5 form.

A ``Dataset`` is a flat table of N transitions ``(s, a, r, s', terminal, mask)``:

* pixel datasets (OGBench's ``visual-*``) keep every frame once, ``frames`` uint8 ``[M, H, W, C]``, and
  ``observations`` / ``next_observations`` are then int64 rows of it, never copies of the frames (a
  reader picks ``s`` and ``s'`` by index, and frame stacks the same way, ``vgfcli.pixels``). On disk
  the frames are chunked one frame per chunk and gzip-compressed, so a batch of random rows reads and
  inflates only its own frames (``vgfcli.data.frames.FrameReader``) when the array is larger than memory.

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
FRAME_INDEX_KEYS = ("observations", "next_observations")  # pixel datasets: rows of ``frames``
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
    # pixel datasets: every frame once, uint8 [M, H, W, C] (observations, next_observations: int64 rows)
    frames: np.ndarray | None = None

    @property
    def is_pixels(self) -> bool:
        return self.frames is not None

    @property
    def n_transitions(self) -> int:
        return int(self.observations.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(np.count_nonzero(self.terminals))

    @property
    def obs_dim(self) -> int:
        """Values per observation (a frame's H x W x C for pixel datasets)."""
        if self.is_pixels:
            return int(np.prod(self.frames.shape[1:]))
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
    core = {key: getattr(ds, key) for key in CORE_KEYS if not (ds.is_pixels and key in FRAME_INDEX_KEYS)}
    for key, arr in core.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise VgfError(f"{source}: key '{key}' must be a float array, got {getattr(arr, 'dtype', type(arr))}")
    check_columns(source, core, _CORE_NDIM)
    if ds.is_pixels:
        validate_frame_index(ds, source)
    elif ds.next_observations.shape != ds.observations.shape:
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


def validate_frame_index(ds: Dataset, source: str, frame_shape: tuple | None = None) -> None:
    """A pixel dataset's frames (uint8 [M, H, W, C], at least one) and its two index columns (integers
    [N] within 0..M-1). ``frame_shape`` [M, H, W, C] checks a frame array not read into memory."""
    shape = tuple(ds.frames.shape) if frame_shape is None else tuple(frame_shape)
    if frame_shape is None and (ds.frames.dtype != np.uint8 or ds.frames.ndim != 4):
        raise VgfError(f"{source}: frames must be uint8 [M, H, W, C], got {ds.frames.dtype} {ds.frames.shape}")
    if len(shape) != 4 or shape[0] < 1:
        raise VgfError(f"{source}: frames have shape {shape}, expected [M >= 1, H, W, C]")
    for key in FRAME_INDEX_KEYS:
        rows = getattr(ds, key)
        if rows.dtype.kind not in "iu" or rows.ndim != 1 or rows.shape[0] != ds.n_transitions:
            raise VgfError(f"{source}: '{key}' of a pixel dataset must be {ds.n_transitions} frame rows, got "
                           f"{rows.dtype} {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
            raise VgfError(f"{source}: '{key}' points outside the {shape[0]} frames")


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
            if ds.is_pixels:  # one frame per chunk: a random batch inflates its own frames only
                f.create_dataset("frames", data=ds.frames, chunks=(1, *ds.frames.shape[1:]), compression="gzip",
                                 compression_opts=1)
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


def load(path: str | os.PathLike, frames: str = "memory") -> Dataset:
    """Read a file written by ``save`` and validate it; any problem -> VgfError naming the file.
    ``frames`` (pixel datasets): ``memory`` reads every frame (a corrupt chunk is an error here),
    ``lazy`` gives a ``FrameReader`` that reads rows when asked (for arrays larger than memory)."""
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
                  if key not in (*CORE_KEYS, "frames") and isinstance(node, h5py.Dataset)}
        attrs = {key: _plain(value) for key, value in f.attrs.items() if key not in _DERIVED_ATTRS}
        pixels = "frames" in f
        frame_shape = f["frames"].shape if pixels else None
        if pixels and frames == "memory":
            frame_array = read_hdf5_array(source, f, "frames")
    if not pixels:
        check_columns(source, raw, _CORE_NDIM)
        ds = Dataset(**{key: arr.astype(np.float32, copy=False) for key, arr in raw.items()}, extras=extras,
                     attrs=attrs)
        validate(ds, source)
        return ds
    from vgfcli.data.frames import FrameReader

    values = {key: arr if key in FRAME_INDEX_KEYS else arr.astype(np.float32, copy=False) for key, arr in raw.items()}
    ds = Dataset(**values, extras=extras, attrs=attrs,
                 frames=frame_array if frames == "memory" else FrameReader(path, frame_shape))
    if frames == "memory":
        validate(ds, source)
    else:  # the frames' shape from the file's metadata: nothing is read until a batch asks
        core = {key: arr for key, arr in values.items() if key not in FRAME_INDEX_KEYS}
        check_columns(source, core, _CORE_NDIM)
        validate_frame_index(ds, source, frame_shape)
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
        **({"frames": int(ds.frames.shape[0]), "frame_shape": "x".join(map(str, ds.frames.shape[1:]))}
           if ds.is_pixels else {}),
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
