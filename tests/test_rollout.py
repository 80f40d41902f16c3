"""The evaluation engine (vgfcli.rollout) and D4RL normalised scores (vgfcli.scores).

Rollouts use pointmaze-medium (the cheapest OGBench env: a 2-D point mass, ~6k steps/s) with short time limits.
"""

import warnings

import numpy as np
import pytest

from vgfcli.errors import VgfError
from vgfcli.rollout import evaluate_policy, make_env
from vgfcli.scores import gym_env_for, normalized_score, reference_returns

MAZE = "pointmaze-medium-singletask-task1-v0"

pytestmark = pytest.mark.filterwarnings("ignore")


def _oracle_policy():
    """Steer the point towards the maze's BFS subgoal: reaches task 1's goal in ~170 steps."""
    helper = make_env(MAZE, seed=0).unwrapped
    goal = np.asarray(helper.ij_to_xy(helper.task_infos[0]["goal_ij"]))

    def policy(obs):
        out = []
        for xy in obs[:, :2].astype(np.float64):
            sub = np.asarray(helper.get_oracle_subgoal(xy, goal)[0])
            d = sub - xy
            out.append(d / (np.linalg.norm(d) + 1e-6))
        return np.asarray(out, np.float32)

    return policy


def test_maze_shapes_counts_progress():
    calls = []
    seen = []

    def random_policy(obs):
        seen.append(obs.dtype)
        return np.random.default_rng(len(seen)).uniform(-1, 1, size=(obs.shape[0], 2))

    r = evaluate_policy(MAZE, random_policy, episodes=5, num_envs=2, seed=0, max_episode_steps=20, progress=calls.append)
    assert r.episodes == 5 and r.returns.shape == (5,) and r.lengths.shape == (5,)
    assert np.all(r.lengths == 20)  # a random walk does not cross the maze in 20 steps: all truncated
    assert r.steps == 100
    assert np.all(r.returns == -20.0)  # single-task reward: -1 per step without success
    assert r.successes is not None and r.successes.shape == (5,)
    assert r.success_rate == 0.0
    assert calls == [1, 2, 3, 4, 5]
    assert set(seen) == {np.dtype(np.float32)}
    assert r.policy_calls == 20 * 3  # two envs in lockstep for 2 rounds, then one env for the 5th episode
    assert r.summary()["success_rate"] == 0.0


def test_num_envs_does_not_change_episodes():
    # The oracle's episode lengths depend on the noisy start (drawn from numpy's global RNG by OGBench), and
    # episodes finish at different times, so copies pick up later episodes in a num_envs-dependent order.
    oracle = _oracle_policy()
    kw = dict(episodes=4, seed=3, max_episode_steps=400)
    one = evaluate_policy(MAZE, oracle, num_envs=1, **kw)
    three = evaluate_policy(MAZE, oracle, num_envs=3, **kw)
    assert len(set(one.lengths.tolist())) > 1
    np.testing.assert_array_equal(one.returns, three.returns)
    np.testing.assert_array_equal(one.lengths, three.lengths)
    # Episodes start from different positions, the same ones whichever env copy runs them.
    def starts(num_envs):
        seen = []

        def recording(obs):
            seen.append(obs.copy())
            return np.zeros((obs.shape[0], 2))

        evaluate_policy(MAZE, recording, episodes=3, num_envs=num_envs, seed=7, max_episode_steps=1)
        return np.concatenate(seen)

    batched = starts(3)
    assert len({tuple(s) for s in batched}) == 3
    np.testing.assert_array_equal(starts(1), batched)


def test_success_read_from_last_step():
    oracle = evaluate_policy(MAZE, _oracle_policy(), episodes=2, num_envs=2, seed=0, max_episode_steps=400)
    assert oracle.success_rate == 1.0
    assert np.all(oracle.lengths < 400)  # terminated at the goal, not truncated
    # reward is 0 on the success step, -1 before it
    np.testing.assert_array_equal(oracle.returns, -(oracle.lengths - 1.0))
    idle = evaluate_policy(MAZE, lambda o: np.zeros((o.shape[0], 2)), episodes=2, num_envs=1, seed=0,
                           max_episode_steps=50)
    assert idle.success_rate == 0.0 and np.all(idle.successes == 0.0)


def test_action_chunks_run_open_loop():
    calls = []

    def chunked(obs):
        calls.append(obs.shape[0])
        return np.zeros((obs.shape[0], 3 * 2), np.float32)

    r = evaluate_policy(MAZE, chunked, episodes=2, num_envs=1, seed=0, max_episode_steps=10, action_repeat_chunk=3)
    # 10 steps per episode need ceil(10/3) = 4 chunks; the 4th is cut short when the episode ends.
    assert r.policy_calls == len(calls) == 8 and r.steps == 20
    r3 = evaluate_policy(MAZE, lambda o: np.zeros((o.shape[0], 3, 2)), episodes=2, num_envs=2, seed=0,
                         max_episode_steps=9, action_repeat_chunk=3)
    assert r3.policy_calls == 3 and r3.steps == 18  # [n, H, act_dim] is accepted too
    with pytest.raises(VgfError, match="shape"):
        evaluate_policy(MAZE, lambda o: np.zeros((o.shape[0], 2)), episodes=1, num_envs=1, seed=0,
                        max_episode_steps=5, action_repeat_chunk=3)


def test_gym_mujoco_env_returns():
    env_id = "Hopper-v5"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_env(env_id).close()
    except VgfError:
        env_id = "Pendulum-v1"
    act_dim = 3 if env_id == "Hopper-v5" else 1

    def policy(obs):  # deterministic and state-dependent, so Hopper falls at different times per episode
        return np.tanh(3 * obs[:, 1:2] + obs[:, :act_dim])

    r = evaluate_policy(env_id, policy, episodes=4, num_envs=3, seed=3, max_episode_steps=100)
    assert r.successes is None and r.success_rate is None
    assert np.all(np.isfinite(r.returns)) and r.returns.shape == (4,)
    assert "success_rate" not in r.summary()
    one = evaluate_policy(env_id, policy, episodes=4, num_envs=1, seed=3, max_episode_steps=100)
    np.testing.assert_array_equal(one.returns, r.returns)


def test_normalized_score_and_env_mapping():
    returns = np.array([1000.0, 3234.3])
    expected = 100 * (returns - (-20.272305)) / (3234.3 - (-20.272305))  # D4RL hopper reference returns
    np.testing.assert_allclose(normalized_score("hopper-medium-v2", returns), expected)
    np.testing.assert_allclose(normalized_score("mujoco/hopper/medium-v0", returns), expected)
    np.testing.assert_allclose(normalized_score("Hopper-v5", returns), expected)
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    np.testing.assert_allclose(normalized_score("antmaze-large-diverse-v2", [0.0, 1.0]), [0.0, 100.0])
    assert reference_returns("D4RL/antmaze/medium-play-v1") == (0.0, 1.0)
    assert normalized_score("cube-single-play-v0", returns) is None
    assert normalized_score("hopper-bogus-v2", returns) is None
    assert gym_env_for("hopper-medium-v2") == "Hopper-v4"
    assert gym_env_for("mujoco/walker2d/expert-v0") == "Walker2d-v5"
    assert gym_env_for("antmaze-umaze-v2") is None


def test_unknown_env_and_bad_arguments():
    with pytest.raises(VgfError, match="no-such-env-v0"):
        make_env("no-such-env-v0")
    with pytest.raises(VgfError, match="Hopper-v4"):  # a D4RL dataset name is not an env id, but hints at one
        evaluate_policy("hopper-medium-v2", lambda o: o, episodes=1, num_envs=1, seed=0)
    with pytest.raises(VgfError, match="episodes"):
        evaluate_policy(MAZE, lambda o: o, episodes=0, num_envs=1, seed=0)


def test_ogbench_dataset_name_and_d4rl_ant_alias():
    env = make_env("pointmaze-medium-navigate-singletask-task1-v0")  # OGBench maps dataset -> env this way
    assert env.spec.id == MAZE and env.spec.max_episode_steps == 1000
    env.close()
    ant = make_env(gym_env_for("ant-medium-v2"), seed=0)
    assert ant.observation_space.shape == (111,)  # D4RL ant-v2 layout
    ant.close()


def test_env_helper_processes_give_the_same_numbers():
    # Copies stepped in a helper process (vgfcli.env_workers): the same episodes, in the same batch order,
    # with numpy's global RNG (the maze's start noise) carried to the helper and back.
    from vgfcli import rollout

    seen = {0: [], 1: []}

    def policy(key):
        def act(obs):
            seen[key].append(obs.copy())
            return np.tanh(obs[:, :2] * 3.0 + np.arange(obs.shape[0])[:, None] * 0.1)
        return act

    kw = dict(episodes=5, num_envs=3, seed=4, max_episode_steps=15, record=True)
    local = evaluate_policy(MAZE, policy(0), **kw)
    split = evaluate_policy(MAZE, policy(1), env_processes=1, **kw)
    assert np.array_equal(local.returns, split.returns) and np.array_equal(local.lengths, split.lengths)
    assert all(np.array_equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))  # every observation alike
    remote = [e for envs in rollout._POOL.values() for e in envs if rollout.is_remote(e)]
    assert len(remote) == 1  # 3 copies: 2 here, 1 in the helper, pooled for the next call
    worker = remote[0].worker
    again = evaluate_policy(MAZE, policy(1), env_processes=1, **kw)  # the pooled helper serves again
    assert np.array_equal(again.returns, local.returns) and worker.proc.is_alive()
    rollout.release_envs()
    assert not worker.proc.is_alive()
