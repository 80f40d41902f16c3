"""What can be collected, with which official defaults, and the frozen spec a collection runs from.

The defaults mirror the ones OGBench used to build its released datasets (its generator scripts and the
commands it publishes for them); they are restated here as data, not taken from that code:

* manipulation (``cube``, ``scene``, ``puzzle``), 1001-step episodes:
  ``play``  = plan oracles, plan noise 0.1 with temporal smoothing 0.5, no random actions;
  ``noisy`` = closed-loop (Markov) oracles, per-episode Gaussian noise scale drawn from U(0, 0.1),
  minimum action norm 0.4, random actions with probability 0.1 (cube, scene) or 0.2 (puzzle).
* point mazes: scripted BFS-subgoal oracle with Gaussian action noise 0.5;
  ``navigate`` = 1001-step episodes (2001 for giant) that keep re-targeting a new goal,
  ``stitch``   = 201-step episodes towards a goal 4 cells away.
* the validation file holds ``episodes // 10`` episodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass

from vgfcli.errors import VgfError

FORMAT_VERSION = 1

# dataset name (without '-v0') -> (training episodes, episode length); the validation count is episodes // 10.
_MANIP_EPISODES = {
    "cube-single": 1000,
    "cube-double": 1000,
    "cube-triple": 3000,
    "cube-quadruple": 5000,
    "scene": 1000,
    "puzzle-3x3": 1000,
    "puzzle-4x4": 1000,
    "puzzle-4x5": 3000,
    "puzzle-4x6": 5000,
}
_MAZE_NAVIGATE = {"medium": (1000, 1001), "large": (1000, 1001), "giant": (500, 2001), "teleport": (1000, 1001)}
_MAZE_STITCH = (5000, 201)

_MANIP_LENGTH = 1001
_PLAN_NOISE = 0.1
_PLAN_SMOOTHING = 0.5
_MARKOV_NOISE = 0.1  # upper end of the per-episode noise scale xi ~ U(0, noise)
_MARKOV_MIN_NORM = 0.4
_MAZE_NOISE = 0.5


@dataclass(frozen=True)
class CollectSpec:
    """What the user asked for; ``None`` means the official value for that dataset."""

    name: str
    episodes: int | None
    val_episodes: int | None
    episode_length: int | None
    noise: float | None
    noise_smoothing: float | None
    min_norm: float | None
    p_random_action: float | None
    seed: int
    shard_episodes: int = 10


@dataclass(frozen=True)
class ResolvedSpec:
    """A fully specified collection run; every field is JSON-able and none is ``None``.

    Parameters that do not apply to the dataset type (``min_norm`` for play data, ``noise_smoothing`` for noisy
    data, the manipulation-only ones for mazes) are stored as 0.0.
    """

    name: str  # dataset name the files get, e.g. 'cube-single-play-v0'
    family: str  # 'manipspace' or 'pointmaze'
    env_name: str  # gymnasium id of the environment, e.g. 'cube-single-v0'
    dataset_type: str  # 'play', 'noisy', 'navigate' or 'stitch'
    episodes: int
    val_episodes: int
    episode_length: int
    noise: float
    noise_smoothing: float
    min_norm: float
    p_random_action: float
    seed: int
    shard_episodes: int
    ogbench_version: str
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def collectable_names() -> list[str]:
    """Every dataset name ``resolve_spec`` accepts."""
    names = []
    for base in _MANIP_EPISODES:
        names += [f"{base}-play-v0", f"{base}-noisy-v0"]
    names += [f"visual-{name}" for name in names]  # the same episodes seen by the camera (64 x 64 x 3 frames)
    for maze in _MAZE_NAVIGATE:
        names += [f"pointmaze-{maze}-navigate-v0", f"pointmaze-{maze}-stitch-v0"]
    return names


_COLLECTABLE_SUMMARY = (
    "cube-{single,double,triple,quadruple}-{play,noisy}-v0, scene-{play,noisy}-v0, "
    "puzzle-{3x3,4x4,4x5,4x6}-{play,noisy}-v0, each also as visual-<name> (pixel observations), "
    "pointmaze-{medium,large,giant,teleport}-{navigate,stitch}-v0"
)


def _reject(name: str) -> VgfError:
    """The error for a name outside the collectable set, saying why where we know."""
    parts = name.split("-")
    bare = name[len("visual-") :] if name.startswith("visual-") else name
    if bare.startswith(("antmaze", "humanoidmaze", "antsoccer")):
        return VgfError(
            f"cannot collect '{name}': OGBench generates ant/humanoid maze and antsoccer data with trained "
            f"expert (SAC) policies that do not ship with the ogbench package; collectable families/types are "
            f"manipulation play/noisy (cube, scene, puzzle) and pointmaze navigate/stitch: {_COLLECTABLE_SUMMARY}"
        )
    if "singletask" in parts or "oraclerep" in parts:
        base = "-".join(p for p in parts if p not in ("singletask", "oraclerep") and not p.startswith("task"))
        return VgfError(
            f"dataset '{name}' is an evaluation variant that reads the files of its base dataset; "
            f"collect the base dataset (e.g. '{base}') instead"
        )
    if name.startswith("powderworld"):
        return VgfError(
            f"cannot collect '{name}': powderworld datasets are not supported by vgf collect; "
            f"collectable: {_COLLECTABLE_SUMMARY}"
        )
    return VgfError(f"unknown dataset name '{name}'; collectable: {_COLLECTABLE_SUMMARY}")


def _ogbench_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ogbench")
    except metadata.PackageNotFoundError:
        raise VgfError("collecting datasets needs the ogbench package; install it (pip install ogbench)") from None


def _check(name: str, field: str, value, *, lo=None, hi=None, integer=False):
    kind = "an integer" if integer else "a number"
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
        raise VgfError(f"{field} must be {kind}, got {value!r} (dataset {name})")
    value = int(value) if integer else float(value)
    if lo is not None and value < lo:
        raise VgfError(f"{field} must be >= {lo}, got {value} (dataset {name})")
    if hi is not None and value > hi:
        raise VgfError(f"{field} must be <= {hi}, got {value} (dataset {name})")
    return value


def resolve_spec(spec: CollectSpec) -> ResolvedSpec:
    """Fill every ``None`` of ``spec`` with the official default; raise ``VgfError`` for what cannot be collected."""
    name = spec.name
    if not isinstance(name, str) or name not in collectable_names():
        raise _reject(str(name))
    parts = name.split("-")
    dataset_type = parts[-2]
    if name.startswith("pointmaze-"):
        family = "pointmaze"
        maze = parts[1]
        env_name = f"pointmaze-{maze}-v0"
        episodes, length = _MAZE_NAVIGATE[maze] if dataset_type == "navigate" else _MAZE_STITCH
        applicable = {"noise": _MAZE_NOISE}
    else:
        family = "manipspace"
        base = "-".join(parts[:-2]).removeprefix("visual-")
        # visual-<base>-v0 renders its 64 x 64 camera as the observation; the oracles read the state
        env_name = f"visual-{base}-v0" if name.startswith("visual-") else f"{base}-v0"
        episodes, length = _MANIP_EPISODES[base], _MANIP_LENGTH
        if dataset_type == "play":
            applicable = {"noise": _PLAN_NOISE, "noise_smoothing": _PLAN_SMOOTHING, "p_random_action": 0.0}
        else:
            p_random = 0.2 if base.startswith("puzzle") else 0.1
            applicable = {"noise": _MARKOV_NOISE, "min_norm": _MARKOV_MIN_NORM, "p_random_action": p_random}

    params = {}
    for field in ("noise", "noise_smoothing", "min_norm", "p_random_action"):
        given = getattr(spec, field)
        if field not in applicable:
            if given is not None:
                raise VgfError(f"{field} does not apply to '{name}' ({dataset_type} data); leave it unset")
            params[field] = 0.0
            continue
        value = applicable[field] if given is None else given
        hi = 1.0 if field == "p_random_action" else None
        params[field] = _check(name, field, value, lo=0.0, hi=hi)

    episodes = episodes if spec.episodes is None else _check(name, "episodes", spec.episodes, lo=1, integer=True)
    if spec.val_episodes is None:
        val_episodes = max(1, episodes // 10)
    else:
        val_episodes = _check(name, "val_episodes", spec.val_episodes, lo=1, integer=True)
    if spec.episode_length is not None:
        length = _check(name, "episode_length", spec.episode_length, lo=2, integer=True)
    seed = _check(name, "seed", spec.seed, lo=0, integer=True)
    shard_episodes = _check(name, "shard_episodes", spec.shard_episodes, lo=1, integer=True)

    return ResolvedSpec(
        name=name,
        family=family,
        env_name=env_name,
        dataset_type=dataset_type,
        episodes=int(episodes),
        val_episodes=int(val_episodes),
        episode_length=int(length),
        seed=int(seed),
        shard_episodes=int(shard_episodes),
        ogbench_version=_ogbench_version(),
        **params,
    )
