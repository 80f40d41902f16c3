"""The reference flow learns online (``vgfcli.online_flow``), per method as its reference code trains it:
its weights move on the update's batches with pretrain-policy's Adam state carried over, and a checkpoint
mid-way restores the same run bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.batches import random_batch
from vgfcli import methods
from vgfcli.nn.flow import FlowPolicy
from vgfcli.online_flow import OnlineFlow

METHODS = ["vgf", "avgf", "qgf", "qam", "fql"]
SIZES = {"critic_hidden": (16, 16), "actor_hidden": (16, 16)}


def _pretrained(obs_dim: int = 5, act_dim: int = 2):
    """A flow and the policy.pt facts pretrain-policy saves with it (after a few Adam steps of its own)."""
    torch.manual_seed(0)
    flow = FlowPolicy(obs_dim, act_dim, (16, 16))
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-4)
    for seed in range(3):
        batch = random_batch(obs_dim, act_dim, seed=seed)
        optimizer.zero_grad()
        flow.loss(batch["observations"], batch["actions"], torch.Generator().manual_seed(seed)).backward()
        optimizer.step()
    saved = {"optimizer": optimizer.state_dict(), "train": {"lr": 3e-4, "time_sampling": "uniform", "flow_steps": 4}}
    return flow, saved


def _agent(method: str, flow):
    extra = {"bank_size": 0, "compile": False, "amp": "off"} if method == "vgf" else {}
    extra |= {"num_particles": 4} if method in ("vgf", "avgf") else {}
    return methods.load(method).Agent.create(None, 5, 2, reference=flow, flow_steps=4, **SIZES, **extra)


def _steps(agent, online, first: int, last: int) -> None:
    for step in range(first, last):
        batch = random_batch(5, 2, seed=100 + step)
        agent.update(batch)
        online.update(batch)


@pytest.mark.parametrize("method", METHODS)
def test_the_flow_learns_online_and_a_checkpoint_restores_it_exactly(method):
    flow, saved = _pretrained()
    start = {k: v.clone() for k, v in flow.state_dict().items()}
    agent = _agent(method, flow)
    online = OnlineFlow(agent, saved, seed=0)
    assert online.optimizer.state_dict()["state"][0]["step"] == 3  # pretrain-policy's Adam, carried over
    _steps(agent, online, 0, 3)
    checkpoint = {"agent": agent.state_dict(), "online_flow": online.state_dict()}
    checkpoint = torch.load(_roundtrip(checkpoint), weights_only=False)
    _steps(agent, online, 3, 6)
    moved = [name for name, value in agent.reference.state_dict().items() if not torch.equal(value, start[name])]
    assert moved, "the reference flow did not learn"
    assert all(not p.requires_grad for p in agent.reference.parameters())  # frozen between its own steps

    flow2, saved2 = _pretrained()
    again = _agent(method, flow2)
    online2 = OnlineFlow(again, saved2, seed=0)
    again.load_state_dict(checkpoint["agent"])
    online2.load_state_dict(checkpoint["online_flow"])
    _steps(again, online2, 3, 6)
    final, replayed = agent.state_dict(), again.state_dict()
    assert set(final) == set(replayed)
    for part, state in final.items():
        if isinstance(state, dict) and "state" not in state:  # network weights
            for name, tensor in state.items():
                if isinstance(tensor, torch.Tensor):
                    assert torch.equal(tensor, replayed[part][name]), (part, name)
        elif isinstance(state, torch.Tensor):  # random streams
            assert torch.equal(state, replayed[part]), part


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_qam_keeps_an_ema_of_the_learning_flow():
    flow, saved = _pretrained()
    agent = _agent("qam", flow)
    assert agent.slow is agent.reference  # offline: the frozen flow is its own EMA
    online = OnlineFlow(agent, saved, seed=0)
    before = [p.clone() for p in agent.slow.parameters()]
    _steps(agent, online, 0, 2)
    for b, slow, now in zip(before, agent.slow.parameters(), agent.reference.parameters()):
        if not torch.equal(now, b):  # the EMA moved a tau-share of the way
            assert not torch.equal(slow, b) and not torch.equal(slow, now)


def test_a_policy_without_optimiser_state_is_refused():
    flow, _ = _pretrained()
    with pytest.raises(ValueError, match="run pretrain-policy again, or set online.train_reference=false"):
        OnlineFlow(_agent("vgf", flow), {"flow": flow.state_dict()}, seed=0)


def _vgf(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "VGF_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "vgfcli", *args], env=env, capture_output=True, text=True)


SMOKE = ["preset=smoke", "evaluate.budgets=[0]", "evaluate.guidance=[0.1]", "threads=1", "online.steps=60",
         "online.eval_every=60", "online.eval_episodes=2", "online.max_episode_steps=15", "online.start_training=20"]


@pytest.mark.parametrize("method", METHODS)
def test_a_smoke_finetune_trains_the_reference_flow(method, tmp_path, empty_store):
    import shutil

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    made = _vgf(["pipeline", f"method={method}", *SMOKE], tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    flows = {}
    for train in ("true", "false"):
        out = _vgf(["finetune", f"method={method}", *SMOKE, f"online.train_reference={train}", "--json"], tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout)
        assert result["summary"]["reference_trained_online"] is (train == "true")
        flows[train] = torch.load(result["outputs"]["agent"], weights_only=False)["agent"]["reference"]
    policy = _vgf(["pretrain-policy", f"method={method}", *SMOKE, "--json"], tmp_path)  # a cache hit
    assert policy.returncode == 0 and json.loads(policy.stdout)["cache_hit"], policy.stderr[-2000:]
    pretrained = torch.load(json.loads(policy.stdout)["outputs"]["policy"], weights_only=False)["flow"]
    assert all(torch.equal(flows["false"][k], v) for k, v in pretrained.items())  # frozen: as pretrained
    assert any(not torch.equal(flows["true"][k], v) for k, v in pretrained.items())  # online: it learned
    if method == "vgf":  # vgf report --curves: the two builds' curves side by side
        report = _vgf(["report", "--curves", "--out", str(tmp_path / "report"), "--json"], tmp_path)
        assert report.returncode == 0, report.stderr[-2000:]
        rows = json.loads(report.stdout)["rows"]
        assert {r["curve"] for r in rows} == {"vgf flow learns", "vgf flow frozen"}
        assert {r["step"] for r in rows} == {0, 60} and {r["row"] for r in rows} == {"L=0", "L=3"}
        assert all(0 <= r["mean"] <= 100 and r["seeds"] == 1 for r in rows)
        assert all((tmp_path / "report" / f"curves.{ext}").is_file() for ext in ("md", "csv", "png"))


def test_a_fine_tuned_qam_loads_with_its_ema():
    flow, saved = _pretrained()
    agent = _agent("qam", flow)
    _steps(agent, OnlineFlow(agent, saved, seed=0), 0, 2)
    fresh = _agent("qam", _pretrained()[0])  # as vgf loads finetuned.pt: a new agent, then its state
    fresh.load_state_dict(_roundtrip_state(agent.state_dict()))
    assert fresh.slow is not fresh.reference
    for a, b in zip(fresh.slow.parameters(), agent.slow.parameters()):
        assert torch.equal(a, b)


def _roundtrip_state(state):
    return torch.load(_roundtrip(state), weights_only=False)
