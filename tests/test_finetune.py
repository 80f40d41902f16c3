"""`vgf finetune`: online steps after train-critic, exact resume after kill -9, buffer and all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.config import compose

runner = CliRunner()
SMOKE = ["preset=smoke", "evaluate.budgets=[0]", "threads=1", "online.eval_every=20", "online.eval_episodes=2",
         "online.max_episode_steps=15", "online.log_every=10"]


def _vgf(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "VGF_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "vgfcli", *args], env=env, capture_output=True, text=True)


# qam: action chunks; qgf: its online loop (no warm-up, guided exploration)
@pytest.mark.parametrize("method,extra", [("vgf", []), ("qam", ["chunk=5"]), ("fql", []), ("qgf", [])])
def test_finetune_resumes_exactly_after_kill(method, extra, tmp_path, empty_store):
    """A kill -9 mid-run resumes from the checkpoint (buffer, open episode, random streams) and ends with
    the same agent, curves and episodes as a run never interrupted."""
    import shutil

    homes = {name: tmp_path / name for name in ("whole", "killed")}
    args = ["finetune", f"method={method}", *SMOKE, *extra, "online.steps=120", "online.checkpoint_every=25", "--json"]
    for home in homes.values():
        home.mkdir()
        shutil.copy(empty_store, home / "mlflow.db")
        made = _vgf(["pipeline", f"method={method}", *SMOKE, *extra], home)
        assert made.returncode == 0, made.stderr[-2000:]
    whole = _vgf(args, homes["whole"])
    assert whole.returncode == 0, whole.stderr[-2000:]

    env = {**os.environ, "VGF_HOME": str(homes["killed"])}
    proc = subprocess.Popen([sys.executable, "-m", "vgfcli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = homes["killed"] / "work"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoints.rglob("last.pt")):
        time.sleep(0.05)
    state = torch.load(next(checkpoints.rglob("last.pt")), weights_only=False)  # noqa: F841  a complete file
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _vgf(args, homes["killed"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = json.loads(whole.stdout), json.loads(resumed.stdout)
    assert b["summary"]["resumed_from_step"] >= 25 and a["summary"]["resumed_from_step"] == 0
    assert b["summary"]["episodes"] == a["summary"]["episodes"] > 1
    curves = [json.loads(open(x["outputs"]["curves"]).read()) for x in (a, b)]
    assert curves[0] == curves[1]
    assert [c["step"] for c in curves[0]["curves"]] == [0, 20, 40, 60, 80, 100, 120]
    agents = [torch.load(x["outputs"]["agent"], weights_only=False)["agent"] for x in (a, b)]
    for part in agents[0]:
        if isinstance(agents[0][part], dict) and "state" not in agents[0][part]:  # network weights
            for name, tensor in agents[0][part].items():
                if isinstance(tensor, torch.Tensor):
                    assert torch.equal(tensor, agents[1][part][name]), (part, name)


def test_finetune_in_the_pipeline_and_its_table():
    out = runner.invoke(app, ["pipeline", *SMOKE, "finetune=true", "online.steps=40", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert "finetune" in result["stages"]
    table = runner.invoke(app, ["finetune", *SMOKE, "online.steps=40"])
    assert table.exit_code == 0 and "before (offline)" in table.stdout and "env steps/s" in table.stdout
    bc = runner.invoke(app, ["finetune", *SMOKE, "method=bc"])
    assert bc.exit_code == 2 and "no critic to fine-tune" in bc.stderr


def _dataset(n: int = 10):
    from vgfcli.training import TensorData

    return TensorData(torch.zeros(n, 2), torch.zeros(n, 1), torch.zeros(n), torch.zeros(n, 2), torch.ones(n),
                      torch.tensor([0.0] * 4 + [1.0] + [0.0] * 4 + [1.0]), {})


def test_replay_buffer_mixing_and_chunks():
    from vgfcli.replay import ReplayBuffer, ReplaySampler

    data = _dataset()

    def filled(sampling: str) -> ReplayBuffer:
        buffer = ReplayBuffer(data, 6, sampling=sampling)
        for i in range(6):  # online rows carry reward 1, the dataset's 0
            buffer.add([0.0, 0.0], [0.5], 1.0, [0.0, 0.0], 1.0, terminal=i in (2, 5))
        return buffer

    buffer = filled("uniform")
    assert buffer.size == 16 and buffer.online == 6
    uniform = ReplaySampler(buffer, 4000, seed=0).sample()
    assert 1200 < uniform["rewards"].sum() < 1800  # 6 of 16 rows online
    assert ReplaySampler(filled("balanced"), 1000, seed=0).sample()["rewards"].sum() == 500  # half online (rlpd)
    assert ReplaySampler(filled("online"), 1000, seed=0).sample()["rewards"].sum() == 1000  # online only (wsrl)
    assert ReplaySampler(ReplayBuffer(data, 6, sampling="online"), 50, seed=0).sample()["rewards"].sum() == 0
    chunked = ReplaySampler(buffer, 2000, seed=0, chunk=3, discount=1.0)
    starts = set(chunked.sample()["indices"].tolist())  # the last row of each 3-step sequence
    assert starts <= {2, 3, 4, 7, 8, 9, 12, 15}  # never across a trajectory end; online episodes of 3 rows
    saved = buffer.online_state()
    again = ReplayBuffer(data, 6)
    again.load_online_state(saved)
    assert again.size == 16 and torch.equal(again.rewards, buffer.rewards) and again.episode_start == 16


def test_replay_buffer_wraps_around_like_the_reference():
    """uniform: max(buffer_size, |D| + 1) rows seeded with the dataset, then FIFO over the oldest rows,
    the dataset's first (VGF/FQL utils/datasets.py add_transition); the separate ring of balanced/online
    keeps the dataset whole; a checkpoint of a wrapped buffer restores it exactly."""
    from vgfcli.replay import ReplayBuffer, ReplaySampler

    data = _dataset()
    buffer = ReplayBuffer(data, 8, sampling="uniform", buffer_size=12)
    assert buffer.observations.shape[0] == 12 and buffer.wraps
    for i in range(8):
        buffer.add([0.0, 0.0], [0.5], float(i + 1), [0.0, 0.0], 1.0, terminal=False)
    # rows 10, 11 took online transitions 1, 2; then rows 0..5 took 3..8, over the dataset's first rows
    assert buffer.rewards.tolist() == [3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 1, 2] and buffer.size == 12
    assert buffer.pointer == 6
    again = ReplayBuffer(data, 8, sampling="uniform", buffer_size=12)
    again.load_online_state(buffer.online_state())
    assert torch.equal(again.rewards, buffer.rewards) and again.pointer == 6
    assert ReplayBuffer(data, 8, sampling="uniform", buffer_size=5).observations.shape[0] == 11  # |D| + 1
    ring = ReplayBuffer(data, 8, sampling="online", buffer_size=3)
    for i in range(8):
        ring.add([0.0, 0.0], [0.5], float(i + 1), [0.0, 0.0], 1.0, terminal=False)
    assert ring.rewards[:10].sum() == 0 and ring.rewards[10:].tolist() == [7, 8, 6]  # the dataset untouched
    assert set(ReplaySampler(ring, 300, seed=0).sample()["rewards"].tolist()) == {6.0, 7.0, 8.0}
    unbounded = ReplayBuffer(data, 8, sampling="uniform", buffer_size=None)
    assert not unbounded.wraps and unbounded.observations.shape[0] == 18
    with pytest.raises(ValueError, match="would wrap around"):
        ReplayBuffer(data, 8, buffer_size=12, chunk=2)


def test_exploration_defaults_to_best_of_n_without_transport():
    """The reference main.py collects with sample_actions(..., temperature=1) and no eval_vgf_steps:
    L = 0. online.explore_budget keeps L_train (train) or any L as an option."""
    from vgfcli.methods import avgf, fql, vgf

    agent = vgf.create(vgf.Config(num_particles=3, train_steps=5, critic_hidden=(8,), actor_hidden=(8,),
                                  bank_size=0), 4, 2, "cpu")
    assert agent.explore_options() == {"steps": 0}
    assert agent.explore_options("train") == {"steps": 5} and agent.explore_options("2") == {"steps": 2}
    with pytest.raises(ValueError, match="explore_budget"):
        agent.explore_options("-1")
    a = avgf.create(avgf.Config(num_particles=3, train_steps=4, critic_hidden=(8,), actor_hidden=(8,)), 4, 2, "cpu")
    assert a.explore_options() == {"steps": 0} and a.explore_options("train") == {"steps": 4}
    f = fql.create(fql.Config(critic_hidden=(8,), actor_hidden=(8,), onestep_hidden=(8,)), 4, 2, "cpu")
    assert f.explore_options() == {}
    with pytest.raises(ValueError, match="transport budget"):
        f.explore_options("train")
    out = runner.invoke(app, ["finetune", *SMOKE, "method=fql", "online.explore_budget=train"])
    assert out.exit_code == 2 and "explore_budget" in out.stderr


def test_warm_up_recalibration_and_headline(tmp_path):
    """No update before online.start_training; the adaptive rows' calibration is measured again as the
    critic changes and saved with the fine-tuned agent; the headline is the method's own acting rule."""
    made = runner.invoke(app, ["pipeline", *SMOKE, "--json"])
    assert made.exit_code == 0, made.output
    critic = torch.load(json.loads(made.stdout)["stages"]["critic"]["outputs"]["critic"], weights_only=False)
    out = runner.invoke(app, ["finetune", *SMOKE, "online.steps=40", "online.start_training=31", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    tuned = torch.load(result["outputs"]["agent"], weights_only=False)
    assert tuned["agent"]["step"] - critic["agent"]["step"] == 40 - 30  # updates after steps 31..40 only
    before, after = critic["agent"]["member_std_percentiles"], tuned["agent"]["member_std_percentiles"]
    assert not torch.equal(before, after)
    m = result["metrics"]
    # evaluate.budgets=[0] has no row of vgf's own rule (L = test_steps): it is scored as an extra row
    rows = json.loads(open(result["outputs"]["curves"]).read())["curves"][-1]["rows"]
    test_steps = compose("train", SMOKE).method.test_steps
    assert [r["key"] for r in rows] == ["budget_0", f"budget_{test_steps}"]
    assert m["final_score_default_rule"] == rows[1]["score"]
    assert m["final_score_best_row_posthoc"] == max(r["score"] for r in rows)


def test_online_rewards_are_mapped_as_in_training():
    """D4RL antmaze's r - 1 (critic.reward_transform=minus_one) reaches the online rows too, as the
    reference loops shift online rewards (VGF main.py l.209-212, FQL main.py l.140-144)."""
    from vgfcli.stages.finetune import OnlineActor

    from vgfcli.replay import ReplayBuffer
    from vgfcli.training import transform_rewards
    from vgfcli.value_checks import reward_map

    data = _dataset()
    data.rewards.fill_(0.0)
    summary = transform_rewards(data, "minus_one")  # offline, as train-critic does
    assert torch.all(data.rewards == -1.0)

    class StillAgent:  # acts with zeros: the env's rewards are what matter here
        chunk, device = 1, torch.device("cpu")

        def act(self, obs, **options):
            return torch.zeros(obs.shape[0], 5)

    data = _dataset()
    data.observations = torch.zeros(10, 28)
    data.next_observations = torch.zeros(10, 28)
    data.actions = torch.zeros(10, 5)
    buffer = ReplayBuffer(data, 30)
    actor = OnlineActor("cube-single-play-singletask-task2-v0", StillAgent(), buffer, reward_map(summary), 0, 10,
                        lambda *a, **k: None, {})
    for _ in range(25):  # two 10-step episodes and half of a third
        actor.step()
    online = buffer.rewards[10:35]
    raw = sum(e["return"] for e in actor.finished) + actor.ret  # the env's own rewards
    assert len(actor.finished) == 2 and abs(float(online.sum()) - (raw - 25)) < 1e-6 and float(online.max()) <= -1.0


def test_the_online_options_run_end_to_end():
    """online.sampling, buffer_size and explore_budget through the stage; a ring that would wrap under
    action chunks is a clear exit 2."""
    made = runner.invoke(app, ["pipeline", *SMOKE])
    assert made.exit_code == 0, made.output
    out = runner.invoke(app, ["finetune", *SMOKE, "online.steps=30", "online.start_training=10",
                              "online.sampling=online", "online.buffer_size=8", "online.explore_budget=1", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["summary"]["online_steps"] == 30
    balanced = runner.invoke(app, ["finetune", *SMOKE, "online.steps=30", "online.sampling=balanced"])
    assert balanced.exit_code == 0, balanced.output
    bad = runner.invoke(app, ["finetune", *SMOKE, "online.sampling=rlpd"])
    assert bad.exit_code == 2 and "online.sampling must be one of" in bad.stderr
    qam = runner.invoke(app, ["pipeline", *SMOKE, "method=qam", "chunk=5"])
    assert qam.exit_code == 0, qam.output
    wraps = runner.invoke(app, ["finetune", *SMOKE, "method=qam", "chunk=5", "online.buffer_size=1"])
    assert wraps.exit_code == 2 and "would wrap around" in wraps.stderr


def test_qams_random_warmup_under_balanced_sampling():
    """QAM's main.py (l.298-300) acts uniformly at random in [-1, 1] for its first start_training online
    steps under balanced sampling; the stream is the run's own (seeded), the method's acting takes over after."""
    import numpy as np

    from stages.finetune import OnlineActor
    from vgfcli.replay import ReplayBuffer
    from vgfcli.training import TensorData

    class Agent:  # acts 0.25 everywhere, counting its calls
        chunk, device, calls = 1, torch.device("cpu"), 0

        def act(self, obs, **options):
            Agent.calls += 1
            return torch.full((1, 5), 0.25)

    def actions(random_steps: int) -> np.ndarray:
        n = 4
        data = TensorData(torch.zeros(n, 28), torch.zeros(n, 5), torch.zeros(n), torch.zeros(n, 28), torch.ones(n),
                          torch.tensor([0.0] * (n - 1) + [1.0]), {})
        buffer = ReplayBuffer(data, 10, sampling="balanced")
        actor = OnlineActor("cube-single-noisy-singletask-task1-v0", Agent(), buffer, lambda r: r, 0, 50,
                            lambda *a, **k: None, {}, random_steps)
        for _ in range(8):
            actor.step()
        return buffer.actions[n:n + 8].numpy()

    first = actions(5)
    assert Agent.calls == 3 and np.all(first[5:] == 0.25)
    assert np.all(np.abs(first[:5]) <= 1) and len(np.unique(first[:5])) == 25  # 5 steps of 5 random numbers
    assert np.array_equal(actions(5), first)  # the same seed, the same warm-up
    Agent.calls = 0
    assert np.all(actions(0) == 0.25) and Agent.calls == 8
