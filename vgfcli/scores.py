"""D4RL normalised scores, and which gymnasium env a D4RL/Minari dataset is evaluated on.

normalised score = 100 * (return - ref_min) / (ref_max - ref_min): 0 is a random policy, 100 an expert (D4RL's
convention, which papers report for the locomotion and AntMaze tasks).
"""

from __future__ import annotations

import re

import numpy as np

# Reference returns from D4RL, d4rl/infos.py (Farama-Foundation/D4RL, commit 0ace16de), REF_MIN_SCORE /
# REF_MAX_SCORE. There every locomotion dataset of one robot (random, medium, expert, medium-replay,
# full-replay, medium-expert; v0, v1 and v2) copies the '<robot>-random-v0' numbers, so one pair per robot.
LOCOMOTION_REF = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
# AntMaze (v0 and v2 in infos.py; D4RL's v1 used the same): the return is 1 on reaching the goal, else 0, so the
# normalised score is the success rate in percent.
ANTMAZE_REF = (0.0, 1.0)
ANTMAZE_MAZES = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")

# 'simple' is Minari's (mujoco/<robot>/simple-v0); the rest are D4RL's dataset kinds.
_LOCOMOTION_KINDS = ("random", "medium", "expert", "medium-replay", "full-replay", "medium-expert", "simple")
_ROBOTS = "|".join(LOCOMOTION_REF)
_KINDS = "|".join(re.escape(k) for k in _LOCOMOTION_KINDS)
_MAZES = "|".join(re.escape(m) for m in ANTMAZE_MAZES)

_D4RL_LOCO = re.compile(rf"^({_ROBOTS})-({_KINDS})-v\d+$")  # hopper-medium-v2
_MINARI_LOCO = re.compile(rf"^mujoco/({_ROBOTS})/({_KINDS})-v\d+$")  # mujoco/hopper/medium-v0
_D4RL_ANTMAZE = re.compile(rf"^antmaze-({_MAZES})-v\d+$")  # antmaze-medium-play-v2
_MINARI_ANTMAZE = re.compile(rf"^D4RL/antmaze/({_MAZES})-v\d+$")  # D4RL/antmaze/medium-play-v1
# Gymnasium env ids of the same robots, so a score can be asked for by the env a policy was evaluated on.
_GYM_IDS = {"HalfCheetah": "halfcheetah", "Hopper": "hopper", "Walker2d": "walker2d", "Ant": "ant", "AntD4RL": "ant"}
_GYM_LOCO = re.compile(rf"^(?:vgf/)?({'|'.join(_GYM_IDS)})-v\d+$")

# Gymnasium env per robot. D4RL's v2 datasets were recorded with gym's v3 envs, whose dynamics gymnasium's v4
# envs keep (v5 changes some, e.g. Walker2d's left-foot friction), so D4RL names map to v4; Minari's mujoco
# datasets were recorded on v5. D4RL ant needs the 111-dim v3 observation: see rollout.D4RL_ANT_ENV_ID.
_D4RL_GYM = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4", "ant": "vgf/AntD4RL-v4"}
_MINARI_GYM = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "ant": "Ant-v5"}


def reference_returns(name: str) -> tuple[float, float] | None:
    """(ref_min, ref_max) for a D4RL dataset/env name, a Minari id or a gymnasium MuJoCo id; None if unknown."""
    name = name.strip()
    for pattern in (_D4RL_LOCO, _MINARI_LOCO):
        m = pattern.match(name)
        if m:
            return LOCOMOTION_REF[m.group(1)]
    if _D4RL_ANTMAZE.match(name) or _MINARI_ANTMAZE.match(name):
        return ANTMAZE_REF
    m = _GYM_LOCO.match(name)
    if m:
        return LOCOMOTION_REF[_GYM_IDS[m.group(1)]]
    return None


def normalized_score(dataset_or_env_name: str, returns) -> np.ndarray | None:
    """D4RL normalised score(s) of undiscounted episode return(s), or None when the name has no reference."""
    ref = reference_returns(dataset_or_env_name)
    if ref is None:
        return None
    lo, hi = ref
    return 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)


def gym_env_for(dataset_name: str) -> str | None:
    """The gymnasium env id a D4RL or Minari locomotion dataset is evaluated on; None when there is none.

    AntMaze has no gymnasium MuJoCo counterpart (D4RL's maze ant is its own env), so it maps to None.
    """
    name = dataset_name.strip()
    m = _D4RL_LOCO.match(name)
    if m:
        return _D4RL_GYM[m.group(1)]
    m = _MINARI_LOCO.match(name)
    if m:
        return _MINARI_GYM[m.group(1)]
    return None
