"""Which task a training config is about, and the papers' per-task settings chosen from it.

The official run scripts set some hyperparameters per task family (discount, Q aggregation, transport
budget, temperature, chunk, reward shaping). ``conf/protocol/<method>_<family>.yaml`` holds them, each
value with its source; ``vgfcli.config.compose`` picks the file for the config's method and task, so
``vgf pipeline task=puzzle-4x4-play-singletask-task4-v0 method=qam`` runs with QAM's puzzle-4x4
settings. The most specific family wins (``antmaze-large`` before ``antmaze``); a user's
``protocol=<name>`` picks another file, ``protocol=none`` none; a plain ``key=value`` override still
wins over every file.

The task label of a run is the OGBench single-task name, or for D4RL/Minari data (``data.source=file``
with ``data.kind=d4rl|minari``) the dataset's env id (``data.env_id``) or its file name, so that such
runs are filed, tuned and reported under their own name rather than the default cube task.
"""

from __future__ import annotations

import re
from pathlib import Path

# D4RL/Minari env names -> the family their run scripts treat alike.
_D4RL_FAMILIES = (
    ("antmaze", "d4rl-antmaze"),
    ("hopper", "d4rl-locomotion"), ("halfcheetah", "d4rl-locomotion"), ("walker2d", "d4rl-locomotion"),
    ("pen", "d4rl-adroit"), ("door", "d4rl-adroit"), ("hammer", "d4rl-adroit"), ("relocate", "d4rl-adroit"),
    ("kitchen", "d4rl-kitchen"),
)
_OGBENCH_TYPES = r"(play|noisy|navigate|stitch|explore)"
_D4RL_ANTMAZE = r"^antmaze-(umaze|medium|large)(-(play|diverse))?-v\d+$"  # D4RL's six antmaze datasets


def task_label(cfg) -> str:
    """The task a training config trains and evaluates on (see the module docstring)."""
    data = cfg.data
    if data.source == "file" and data.kind != "ogbench":
        if data.env_id:
            return str(data.env_id)
        if data.path:
            return file_label(data.path)
    return str(cfg.task)


def file_label(path) -> str:
    """A D4RL/Minari dataset's name from its file or folder: ``/data/hopper-medium-v2.hdf5`` -> ``hopper-medium-v2``."""
    return re.sub(r"\.(hdf5|h5)$", "", Path(str(path).rstrip("/")).name)


def family_candidates(label: str) -> list[str]:
    """Task families of ``label``, most specific first: ``cube-single-play-singletask-task2-v0`` ->
    ``[cube-single, cube]``; ``antmaze-large-navigate-...`` -> ``[antmaze-large, antmaze]``;
    ``visual-cube-single-play-...`` -> ``[visual-cube-single, visual-cube, cube-single, cube]``;
    ``hopper-medium-v2`` -> ``[d4rl-locomotion]``. Empty when the label matches no known family."""
    name = label.lower()
    if re.match(_D4RL_ANTMAZE, name):  # antmaze-medium-play-v2 would otherwise read as an OGBench "play" env
        return ["d4rl-antmaze"]
    if name.startswith("visual-"):  # the camera task's own settings first, then its state task's
        state = family_candidates(name.removeprefix("visual-"))
        return [f"visual-{f}" for f in state] + state
    match = re.match(rf"^(?P<env>[a-z0-9]+(?:-[a-z0-9]+)*?)-{_OGBENCH_TYPES}(-|$)", name)
    if match:
        env = match.group("env")
        domain = env.split("-")[0]
        return [env, domain] if domain != env else [env]
    for prefix, family in _D4RL_FAMILIES:
        if name.startswith(prefix):  # the dataset's own settings first (pen-cloned-v1 -> d4rl-pen-cloned)
            return ["d4rl-" + re.sub(r"-v\d+$", "", name), family]
    return []


def observation_for(label: str) -> str:
    """``conf/observation``'s option for a task: ``pixels`` for OGBench's camera tasks (visual-*), else
    ``state``."""
    return "pixels" if label.lower().startswith("visual-") else "state"


def protocol_for(method_cfg, label: str, conf_dir: Path) -> str | None:
    """The option of ``conf/protocol`` for the method (its ``name``, and its ``variant`` where it has
    one other than ``base``: ``qam-fql_scene`` before ``qam_scene``) on the task ``label``; None if
    there is none."""
    name = str(method_cfg.name)
    variant = method_cfg.get("variant")
    names = [f"{name}-{variant}", name] if variant not in (None, "base") else [name]
    for family in family_candidates(label):
        for method in names:
            option = f"{method}_{family}"
            if (conf_dir / "protocol" / f"{option}.yaml").is_file():
                return option
    return None
