"""OGBench ``.npz`` -> canonical Dataset, with OGBench's own single-task reward relabel.

An OGBench file stores states, not transitions: ``observations[i]`` with ``actions[i]`` and
``terminals[i]`` = 1 on the last state of each trajectory, which has no next state. We turn it into
transitions exactly as ``ogbench.load_dataset`` (non-compact) does, then compute rewards and masks for
one task with ``ogbench.relabel_utils.relabel_dataset``, as ``ogbench.make_env_and_datasets`` does for
'<dataset>-singletask-task<k>-v0' names. Rewards therefore match what OGBench's own baselines train on.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from vgfcli.data.canonical import Dataset, check_binary, check_columns, validate
from vgfcli.errors import VgfError

_REQUIRED = ("observations", "actions", "terminals")
_INFO_KEYS = ("qpos", "qvel", "button_states")
_NDIM = {"observations": 2, "actions": 2, "terminals": 1, "qpos": 2, "qvel": 2, "button_states": 2}

# The task each env family uses for '<env>-singletask-v0' (the envs' own defaults; puzzle depends on size).
_DEFAULT_TASK = {
    "pointmaze": 1, "antmaze": 1, "humanoidmaze": 1, "antsoccer": 4, "cube": 2, "scene": 2,
    "puzzle-3x3": 4, "puzzle-4x4": 4, "puzzle-4x5": 2, "puzzle-4x6": 2,
}


def parse_ogbench_name(name: str, task: int | None = None) -> tuple[str, str, str, int]:
    """Resolve an OGBench dataset name and task to ``(dataset_name, split, env_id, task_id)``.

    ``name`` is a dataset name (``cube-single-play-v0``) or a single-task name
    (``cube-single-play-singletask-task2-v0``; ``...-singletask-v0`` = default task), optionally with a
    ``-val`` suffix for the validation split. ``dataset_name`` is the plain name (the file is
    ``{dataset_name}.npz`` or ``{dataset_name}-val.npz``), ``env_id`` the single-task env whose rewards
    we use (``cube-single-singletask-task2-v0``). ``task`` overrides the default task but must agree with
    a task written in the name.
    """
    dataset_name, split, name_task = _split_name(name)
    if task is not None:
        try:
            task = int(task)
        except (TypeError, ValueError):
            raise VgfError(f"OGBench task must be a positive integer, got '{task}'") from None
        if task < 1:
            raise VgfError(f"OGBench task must be a positive integer, got {task}")
        if name_task is not None and task != name_task:
            raise VgfError(f"OGBench name '{name}' says task {name_task} but task {task} was asked for")
    task_id = task if task is not None else name_task if name_task is not None else _default_task(dataset_name)
    parts = dataset_name.split("-")
    env_id = "-".join(parts[:-2] + ["singletask", f"task{task_id}", parts[-1]])  # drop the dataset type
    return dataset_name, split, env_id, task_id


def read_ogbench_npz(path: str | Path, *, dataset_name: str, task: int | None) -> Dataset:
    """Read an OGBench ``.npz`` into a canonical Dataset with single-task rewards and masks.

    ``dataset_name`` and ``task`` pick the env (see ``parse_ogbench_name``); the file must come from
    that env (its observation width is checked). ``terminals`` are the trajectory ends as
    ``ogbench.load_dataset`` builds them; ``masks`` come from the relabel (0 where the task is solved),
    not from terminals. qpos, qvel and button_states are kept as extras. The split is 'val' when the
    name or the file name ends in '-val'.
    """
    path = Path(path)
    source = str(path)
    plain, split, env_id, task_id = parse_ogbench_name(dataset_name, task)
    if path.name.endswith("-val.npz"):
        split = "val"
    env = _singletask_env(env_id)  # before reading: a wrong name fails fast, not after decoding the file
    raw = _read_npz(path)
    pixels = raw["observations"].dtype == np.uint8  # visual-* datasets: camera frames [rows, H, W, C]
    check_columns(source, raw, {**_NDIM, "observations": 4} if pixels else _NDIM)
    check_binary(source, "terminals", raw["terminals"])
    if raw["terminals"][-1] != 1:
        raise VgfError(f"{source}: the last row is not a trajectory end (terminals[-1] = 0); truncated file?")

    # Same construction as ogbench.load_dataset(compact_dataset=False), vectorised over all rows:
    # drop each trajectory's last state (it has no next state) and shift observations by one row.
    terminals = raw["terminals"].astype(np.float32)
    keep = terminals == 0
    keep_next = np.concatenate([[False], keep[:-1]])
    info = {key: raw[key][keep] for key in _INFO_KEYS if key in raw}
    if pixels:  # every frame stays, once; a transition names its two frames by row
        frames, observations = raw["observations"], np.arange(len(keep), dtype=np.int64)
    else:
        frames, observations = None, raw["observations"].astype(np.float32, copy=False)
    rewards, masks = _relabel(source, env_id, env, raw["observations"].shape[1:], info)
    ds = Dataset(
        observations=observations[keep],
        actions=raw["actions"].astype(np.float32, copy=False)[keep],
        rewards=rewards,
        next_observations=observations[keep_next],
        frames=frames,
        terminals=np.concatenate([terminals[1:], [1.0]])[keep].astype(np.float32),
        masks=masks,
        extras=info,
        attrs={"source_kind": "ogbench", "source_name": path.name, "env_id": env_id, "task_id": task_id,
               "dataset_name": plain, "split": split, "reward_convention": "ogbench-singletask"},
    )
    validate(ds, source)
    return ds


def ensure_ogbench_file(dataset_name: str, dataset_dir: str | Path) -> Path:
    """Return ``{dataset_dir}/{dataset_name}.npz``, downloading it (and its -val file) with OGBench if absent.

    A failed download (offline, HTTP error) is a VgfError that says how to work offline, and leaves no
    partial ``.tmp`` file behind.
    """
    plain, split, _ = _split_name(dataset_name)
    directory = Path(dataset_dir).expanduser()
    path = directory / (f"{plain}-val.npz" if split == "val" else f"{plain}.npz")
    if path.is_file():
        return path
    import http.client
    import urllib.error

    from ogbench.utils import download_datasets

    try:
        # OGBench prints progress to stdout; keep stdout clean for the CLI's --json output.
        with contextlib.redirect_stdout(sys.stderr):
            download_datasets([plain], str(directory))
    except (OSError, http.client.HTTPException) as e:
        _remove_partials(directory, plain)
        # URLError wraps the real cause (DNS failure, refused connection) in .reason; HTTPError reads well as is.
        reason = e.reason if type(e) is urllib.error.URLError else (str(e) or type(e).__name__)
        raise VgfError(f"could not download OGBench dataset '{plain}' ({reason}); offline? put {plain}.npz and "
                       f"{plain}-val.npz in {directory} or pass dataset.path=FILE") from None
    except BaseException:
        _remove_partials(directory, plain)
        raise
    return path


def _remove_partials(directory: Path, plain: str) -> None:
    for name in (f"{plain}.npz.tmp", f"{plain}-val.npz.tmp"):
        (directory / name).unlink(missing_ok=True)


def _split_name(name: str) -> tuple[str, str, int | None]:
    """'X-singletask-task2-v0-val' -> ('X-v0', 'val', 2): the plain dataset name, the split, the named task."""
    base, split = (name[: -len("-val")], "val") if name.endswith("-val") else (name, "train")
    parts = base.split("-")
    name_task = None
    if "singletask" in parts:
        pos = parts.index("singletask")
        between = parts[pos + 1 : -1]
        if len(between) > 1 or (between and not re.fullmatch(r"task[1-9][0-9]*", between[0])):
            raise VgfError(f"'{name}' is not an OGBench single-task name (expected e.g. "
                           "cube-single-play-singletask-task2-v0)")
        name_task = int(between[0][len("task"):]) if between else None
        parts = parts[:pos] + parts[-1:]
    if len(parts) < 3 or not re.fullmatch(r"v[0-9]+", parts[-1]):
        raise VgfError(f"'{name}' is not an OGBench dataset name (expected e.g. cube-single-play-v0)")
    return "-".join(parts), split, name_task


def _default_task(dataset_name: str) -> int:
    parts = dataset_name.split("-")
    if parts[0] == "visual":
        parts = parts[1:]
    for family in ("-".join(parts[:2]), parts[0]):
        if family in _DEFAULT_TASK:
            return _DEFAULT_TASK[family]
    raise VgfError(f"no default single-task task is known for OGBench dataset '{dataset_name}'; set the task")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The known keys of an npz as arrays; anything unreadable -> VgfError naming the file."""
    if not path.is_file():
        raise VgfError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(2) == b"PK"
    except OSError as e:
        raise VgfError(f"{path}: cannot read ({e.strerror or e})") from None
    if not is_zip:
        raise VgfError(f"{path}: not an .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            arrays = {key: npz[key] for key in _REQUIRED + _INFO_KEYS if key in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # Truncated archives fail in zipfile, cut or bit-flipped members in zlib/CRC checks, object arrays
        # in numpy's allow_pickle guard.
        raise VgfError(f"{path}: corrupt or truncated .npz ({str(e).strip() or type(e).__name__})") from None
    for key in _REQUIRED:
        if key not in arrays:
            raise VgfError(f"{path}: missing key '{key}' (found: {', '.join(sorted(names)) or 'nothing'})")
    return arrays


def _relabel(source: str, env_id: str, env, obs_shape: tuple,
             info: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and masks for ``env_id``'s task, computed by OGBench from qpos (and button states)."""
    needed = ["qpos"] + (["button_states"] if "scene" in env_id or "puzzle" in env_id else [])
    for key in needed:
        if key not in info:
            raise VgfError(f"{source}: missing key '{key}', needed to compute the rewards of {env_id}")
    if tuple(env.observation_space.shape) != tuple(obs_shape):
        raise VgfError(f"{source}: observations have shape {tuple(obs_shape)} but {env_id} observes "
                       f"{env.observation_space.shape}; is the dataset name right?")
    from ogbench.relabel_utils import relabel_dataset

    labelled = dict(info)  # relabel_dataset adds 'rewards' and 'masks' to the dict it is given
    try:
        relabel_dataset(env_id, env, labelled)
    except (ValueError, IndexError) as e:
        raise VgfError(f"{source}: could not compute the rewards of {env_id} ({e})") from None
    return labelled["rewards"], labelled["masks"]


@functools.lru_cache(maxsize=None)
def _singletask_env(env_id: str):
    """The gymnasium env for ``env_id``; cached because building a MuJoCo scene takes seconds and the
    train and val files of one dataset share it (relabel only reads the task's fixed goal from it)."""
    with warnings.catch_warnings():
        # Building the env warns about a missing X display and float64 Box bounds: noise for a CLI user.
        warnings.simplefilter("ignore")
        import gymnasium
        import ogbench  # noqa: F401  (registers the OGBench envs with gymnasium)

        try:
            return gymnasium.make(env_id)
        except gymnasium.error.Error as e:
            raise VgfError(f"unknown OGBench environment '{env_id}' ({e})") from None
