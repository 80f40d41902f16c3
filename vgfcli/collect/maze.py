"""Point-maze episodes driven by the maze's own BFS subgoal oracle plus Gaussian action noise.

The point agent's ideal action is the unit vector towards the next cell on a shortest path to the goal (the
subgoal the env's ``get_oracle_subgoal`` returns); the recorded action is that plus N(0, noise), clipped.
``navigate`` starts anywhere and, each time the goal is reached, draws a new goal among the maze's junction and
corner cells (cells that are not plain corridor segments); ``stitch`` starts anywhere and heads for a cell
exactly 4 steps away, with short episodes.
"""

from __future__ import annotations

import warnings
from collections import deque

import numpy as np

from vgfcli.collect.npzio import episode_arrays
from vgfcli.seeds import CollectSeeds

_STITCH_DISTANCE = 4


def make_env(env_name: str, episode_length: int):
    import gymnasium

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ogbench.locomaze  # noqa: F401  (registers the envs)

        env = gymnasium.make(env_name, terminate_at_goal=False, max_episode_steps=episode_length)
    return env


def _free_cells(maze_map: np.ndarray) -> tuple[list, list]:
    """All free cells, and those that are not straight corridor segments (goal candidates for navigate)."""
    free, goals = [], []
    rows, cols = maze_map.shape
    for i in range(rows):
        for j in range(cols):
            if maze_map[i, j] != 0:
                continue
            free.append((i, j))
            up, down = maze_map[i - 1, j] == 0, maze_map[i + 1, j] == 0
            left, right = maze_map[i, j - 1] == 0, maze_map[i, j + 1] == 0
            vertical_corridor = up and down and not left and not right
            horizontal_corridor = left and right and not up and not down
            if not (vertical_corridor or horizontal_corridor):
                goals.append((i, j))
    return free, goals


def _cells_at_distance(maze_map: np.ndarray, start: tuple, distance: int) -> list:
    """Free cells whose shortest 4-connected path from ``start`` has exactly ``distance`` steps."""
    dist = {start: 0}
    queue = deque([start])
    found = []
    while queue:
        cell = queue.popleft()
        if dist[cell] == distance:
            found.append(cell)
            continue
        i, j = cell
        for ni, nj in ((i - 1, j), (i, j - 1), (i + 1, j), (i, j + 1)):
            if (
                0 <= ni < maze_map.shape[0]
                and 0 <= nj < maze_map.shape[1]
                and maze_map[ni, nj] == 0
                and (ni, nj) not in dist
            ):
                dist[(ni, nj)] = dist[cell] + 1
                queue.append((ni, nj))
    return found


class MazeCollector:
    def __init__(self, rs):
        self.rs = rs
        self.env = make_env(rs.env_name, rs.episode_length)
        self.maze = self.env.unwrapped
        self.maze_map = np.asarray(self.maze.maze_map)
        self.free, self.goals = _free_cells(self.maze_map)
        self._stitch_targets: dict[tuple, list] = {}
        # The oracle subgoal depends only on the (start cell, goal cell) pair: cache the env's answer.
        self._subgoals: dict[tuple, np.ndarray] = {}

    def close(self):
        self.env.close()

    def episode(self, seeds_for_attempt) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        data, stats = self._run(seeds_for_attempt(0))
        stats["retries"] = 0
        return data, stats

    def _subgoal_direction(self, xy: np.ndarray, goal_xy) -> np.ndarray:
        maze = self.maze
        key = (maze.xy_to_ij(xy), maze.xy_to_ij(goal_xy))
        subgoal = self._subgoals.get(key)
        if subgoal is None:
            subgoal = np.asarray(maze.get_oracle_subgoal(xy, goal_xy)[0], dtype=np.float64)
            self._subgoals[key] = subgoal
        direction = subgoal - xy
        return direction / (np.linalg.norm(direction) + 1e-6)

    def _run(self, seeds: CollectSeeds):
        rs, env, maze, rng = self.rs, self.env, self.maze, seeds.rng
        np.random.seed(seeds.legacy)
        init_ij = self.free[rng.integers(len(self.free))]
        if rs.dataset_type == "navigate":
            goal_ij = self.goals[rng.integers(len(self.goals))]
        else:
            targets = self._stitch_targets.get(init_ij)
            if targets is None:
                targets = self._stitch_targets[init_ij] = _cells_at_distance(self.maze_map, init_ij, _STITCH_DISTANCE)
            goal_ij = targets[rng.integers(len(targets))] if targets else init_ij
        maze.action_space.seed(seeds.env)
        ob, info = env.reset(seed=seeds.env, options={"task_info": {"init_ij": init_ij, "goal_ij": goal_ij}})

        T = rs.episode_length
        obs = np.empty((T, np.size(ob)), np.float32)
        actions = np.empty((T, 2), np.float32)
        qpos = np.empty((T, maze.model.nq), np.float32)
        qvel = np.empty((T, maze.model.nv), np.float32)
        noise = rs.noise
        navigate = rs.dataset_type == "navigate"
        goals_reached = 0
        was_success = False
        n = T
        for t in range(T):
            direction = self._subgoal_direction(maze.get_xy(), maze.cur_goal_xy)
            action = np.clip(direction + rng.normal(0.0, noise, size=2), -1.0, 1.0)
            next_ob, _, terminated, truncated, info = env.step(action)
            success = bool(info["success"])
            if success and navigate:
                goals_reached += 1  # every success step reaches a goal, then a new goal is set
                maze.set_goal(self.goals[rng.integers(len(self.goals))])
            elif success and not was_success:
                goals_reached += 1
            was_success = success
            obs[t] = ob
            actions[t] = action
            qpos[t] = info["prev_qpos"]
            qvel[t] = info["prev_qvel"]
            ob = next_ob
            if terminated or truncated:
                n = t + 1
                break

        data = episode_arrays(n, {"observations": obs, "actions": actions, "qpos": qpos, "qvel": qvel})
        return data, {"subtasks": goals_reached, "successes": goals_reached}
