"""Manipulation episodes (cube, scene, puzzle) driven by the scripted oracles that ship with ogbench.

One episode: reset the env in data-collection mode (goals never end the episode), hand control to the oracle
for the task the env picked, and whenever that oracle reports it is done ask the env for a new target and
switch to the oracle for that target's task. ``play`` data uses the open-loop plan oracles, whose plans carry
temporally smoothed noise; ``noisy`` data uses the closed-loop Markov oracles plus per-dimension Gaussian noise
whose scale is drawn once per episode. Either may replace an oracle action by a uniform random one.
"""

from __future__ import annotations

import warnings

import numpy as np

from vgfcli.collect.npzio import episode_arrays
from vgfcli.errors import VgfError
from vgfcli.seeds import CollectSeeds

_MAX_ATTEMPTS = 100  # scene episodes that leave the cube in an ambiguous place are redrawn

# Scale of the Markov-oracle action noise per action dimension (x, y, z, yaw, gripper), times xi.
_MARKOV_NOISE_DIMS = np.array([1.0, 1.0, 1.0, 3.0, 10.0])


def make_env(env_name: str, episode_length: int):
    import gymnasium

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ogbench.manipspace  # noqa: F401  (registers the envs)

        env = gymnasium.make(
            env_name, terminate_at_goal=False, mode="data_collection", max_episode_steps=episode_length
        )
    return env


def _make_oracles(env, env_name: str, dataset_type: str, noise: float, smoothing: float, min_norm: float):
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    if dataset_type == "play":
        plan = dict(env=env, noise=noise, noise_smoothing=smoothing)
        if env_name.startswith("cube"):
            return {"cube": CubePlanOracle(**plan)}
        if env_name.startswith("scene"):
            return {
                "cube": CubePlanOracle(**plan),
                "button": ButtonPlanOracle(**plan),
                "drawer": DrawerPlanOracle(**plan),
                "window": WindowPlanOracle(**plan),
            }
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **plan)}
    markov = dict(env=env, min_norm=min_norm)
    if env_name.startswith("cube"):
        return {"cube": CubeMarkovOracle(**markov)}
    if env_name.startswith("scene"):
        return {
            "cube": CubeMarkovOracle(max_step=100, **markov),
            "button": ButtonMarkovOracle(**markov),
            "drawer": DrawerMarkovOracle(**markov),
            "window": WindowMarkovOracle(**markov),
        }
    return {"button": ButtonMarkovOracle(gripper_always_closed=True, **markov)}


def _stack_probability(env_name: str, rng: np.random.Generator) -> float:
    """Chance that a new cube target is on top of another cube, drawn once per episode (more cubes, more stacking)."""
    ranges = {"single": None, "double": (0.0, 0.25), "triple": (0.05, 0.35), "quadruple": (0.1, 0.5)}
    for key, bounds in ranges.items():
        if f"-{key}-" in f"-{env_name}":
            return 0.0 if bounds is None else float(rng.uniform(*bounds))
    return 0.5  # scene (one cube, value unused by puzzle)


def _scene_is_healthy(qpos: np.ndarray) -> bool:
    """The cube must stay visible: not too far right, and not far left unless it sits in the drawer."""
    cube = qpos[:, 14:17]
    if (cube[:, 1] >= 0.29).any():
        return False
    far_left = cube[:, 1] <= -0.3
    out_of_drawer = (cube[:, 2] < 0.06) | (cube[:, 2] > 0.08)
    return not (far_left & out_of_drawer).any()


class ManipCollector:
    def __init__(self, rs):
        self.rs = rs
        self.env = make_env(rs.env_name, rs.episode_length)
        self.task = rs.env_name.removeprefix("visual-")  # the scene, whatever the camera shows of it
        self.oracles = _make_oracles(self.env, self.task, rs.dataset_type, rs.noise, rs.noise_smoothing, rs.min_norm)
        self.markov = rs.dataset_type == "noisy"
        self.has_buttons = hasattr(self.env.unwrapped, "_cur_button_states")

    def close(self):
        self.env.close()

    def episode(self, seeds_for_attempt) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Run one episode; ``seeds_for_attempt(k)`` gives the seeds of the k-th try (scene may retry)."""
        for attempt in range(_MAX_ATTEMPTS):
            data, stats = self._run(seeds_for_attempt(attempt))
            if not self.task.startswith("scene") or _scene_is_healthy(data["qpos"]):
                stats["retries"] = attempt
                return data, stats
        raise VgfError(f"{self.rs.name}: no healthy scene episode in {_MAX_ATTEMPTS} attempts")

    def _run(self, seeds: CollectSeeds):
        rs, env, rng = self.rs, self.env, seeds.rng
        unwrapped = env.unwrapped
        np.random.seed(seeds.legacy)
        ob, info = env.reset(seed=seeds.env)
        p_stack = _stack_probability(self.task, rng)
        noise_scale = rng.uniform(0.0, rs.noise) * _MARKOV_NOISE_DIMS if self.markov else None
        p_random = rs.p_random_action
        agent = self.oracles[info["privileged/target_task"]]
        agent.reset(ob, info)

        T = rs.episode_length
        # state vectors as float32, camera frames (visual-*) as the uint8 images the env renders
        obs = np.empty((T, np.size(ob)), np.float32) if ob.dtype != np.uint8 else np.empty((T, *ob.shape), np.uint8)
        actions = np.empty((T, 5), np.float32)
        qpos = np.empty((T, np.size(info["qpos"])), np.float32)
        qvel = np.empty((T, np.size(info["qvel"])), np.float32)
        buttons = np.empty((T, np.size(info["button_states"])), np.int64) if self.has_buttons else None

        subtasks = successes = 0
        was_success = False
        n = T
        for t in range(T):
            if p_random > 0.0 and rng.random() < p_random:
                action = rng.uniform(-1.0, 1.0, size=5)
            else:
                action = np.asarray(agent.select_action(ob, info), dtype=np.float64)
                if noise_scale is not None:
                    action = action + rng.normal(0.0, 1.0, size=5) * noise_scale
            action = np.clip(action, -1.0, 1.0)
            next_ob, _, terminated, truncated, info = env.step(action)

            if agent.done:
                subtasks += 1
                agent_ob, agent_info = unwrapped.set_new_target(p_stack=p_stack)
                agent = self.oracles[agent_info["privileged/target_task"]]
                agent.reset(agent_ob, agent_info)

            obs[t] = ob
            actions[t] = action
            qpos[t] = info["prev_qpos"]
            qvel[t] = info["prev_qvel"]
            if buttons is not None:
                buttons[t] = info["prev_button_states"]
            success = bool(info["success"])
            successes += success and not was_success
            was_success = success
            ob = next_ob
            if terminated or truncated:
                n = t + 1
                break

        data = episode_arrays(n, {"observations": obs, "actions": actions, "qpos": qpos, "qvel": qvel,
                                  "button_states": buttons})
        return data, {"subtasks": subtasks, "successes": successes}
