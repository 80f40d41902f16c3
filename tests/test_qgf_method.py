"""The QGF agent: the guided Euler sampler by hand, the IQL losses by hand, updates, acting, rows."""

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from tests import batches
from vgfcli.methods import load
from vgfcli.methods.base import config_from, scalars, to_batch
from vgfcli.methods.qgf import QGFAgent, QGFConfig, expectile_loss, guidance_grad, guided_sample, q_target
from vgfcli.nn.flow import FlowPolicy, euler_sample
from vgfcli.nn.networks import PlainInput

OBS, ACT = 4, 2
TINY = dict(critic_hidden=(16, 16), actor_hidden=(16, 16), flow_steps=3)


def tiny_agent(**overrides) -> QGFAgent:
    torch.manual_seed(0)
    return QGFAgent.create(None, OBS, ACT, "cpu", **{**TINY, **overrides})


def random_batch(n=8, seed=0):
    return batches.random_batch(OBS, ACT, n, seed)


class FakeCritic(PlainInput, nn.Module):
    """Q_m(s, a) = (m + 1) * sum(a) + s_0 - m, shaped like EnsembleCritic's output [M, *lead]."""

    def forward(self, obs, actions):
        return torch.stack([(m + 1) * actions.sum(-1) + obs[..., 0] - m for m in range(2)])


class FakeValue(PlainInput, nn.Module):
    """V(s) = 0.5 * s_0, shaped like the value MLP's output [*lead, 1]."""

    def forward(self, obs):
        return 0.5 * obs[..., :1]


# --- 1. the guided Euler step by hand ------------------------------------------------------------------

C = torch.tensor([0.5, 0.1], dtype=torch.float64)
Q_STAR = torch.tensor([0.3, 0.6], dtype=torch.float64)
X0 = torch.tensor([[0.2, -0.4]], dtype=torch.float64)


def linear_velocity(obs, x, t):          # v(s, x, t) = c - x
    return C - x


def quadratic_q(obs, a):                  # Q(s, a) = -||a - q||^2, grad = -2 (a - q)
    return -(a - Q_STAR).square().sum(-1)


# K = 2, dt = 1/2, w = 0.1; each line is one step worked by hand.
HAND = {
    # t=0: v=(.3,.5), a1=c=(.5,.1), g=-2(a1-q)=(-.4,1), x1=x0+(v+.1g)/2=(.33,-.1)
    # t=.5: v=(.17,.2), a1=x1+v/2=(.415,0), g=(-.23,1.2), x2=x1+(v+.1g)/2
    "clean": [0.33 + 0.5 * (0.17 - 0.023), -0.1 + 0.5 * (0.2 + 0.12)],
    # t=0: g=-2(x0-q)=(.2,2), x1=(.36,-.05); t=.5: v=(.14,.15), g=-2(x1-q)=(-.12,1.3)
    "noisy": [0.36 + 0.5 * (0.14 - 0.012), -0.05 + 0.5 * (0.15 + 0.13)],
    # a1(a) = a + (1-t)(c-a) = t a + (1-t) c, so da1/da = t: at t=0 no guidance, x1=x0+v/2=(.35,-.15);
    # t=.5: v=(.15,.25), a1=(.425,-.025), g=.5*(-2)(a1-q)=(-.125,.625)
    "jacobian": [0.35 + 0.5 * (0.15 - 0.0125), -0.15 + 0.5 * (0.25 + 0.0625)],
}


@pytest.mark.parametrize("point", ["clean", "noisy", "jacobian"])
def test_guided_euler_matches_hand_computation(point):
    out = guided_sample(linear_velocity, quadratic_q, torch.zeros(1, 3, dtype=torch.float64), X0, 2, 0.1, point)
    expected = torch.tensor([HAND[point]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_clean_estimate_is_clipped_to_the_box():
    # c = 2 lies outside the box: a1_hat is clipped to 1 at both steps, so g = -2(1 - q) = -5 each time
    def v(obs, x, t):
        return 2.0 - x

    def q(obs, a):
        return -(a + 1.5).square().sum(-1)

    out = guided_sample(v, q, None, torch.zeros(1, 1, dtype=torch.float64), 2, 0.25, "clean")
    # t=0: v=2, x1 = (2 - 1.25)/2 = .375; t=.5: v=1.625, a1=clip(1.1875)=1, x2 = .375 + (1.625 - 1.25)/2
    assert out.item() == pytest.approx(0.5625, abs=1e-12)


def test_jacobian_gradient_equals_chain_rule_through_a_real_flow():
    torch.manual_seed(1)
    flow = FlowPolicy(OBS, ACT, hidden=(16, 16)).double().requires_grad_(False)
    critic = FakeCritic()

    def q_fn(obs, a):
        return critic(obs, a).min(0).values * a.sum(-1)   # nonlinear in a

    obs, x = torch.randn(3, OBS, dtype=torch.float64), 0.3 * torch.randn(3, ACT, dtype=torch.float64)
    t = torch.full((3, 1), 0.4, dtype=torch.float64)
    _, g = guidance_grad(flow, q_fn, obs, x, t, "jacobian")
    _, g_clean = guidance_grad(flow, q_fn, obs, x, t, "clean")
    for i in range(3):
        def a1(xi, i=i):
            return (xi + 0.6 * flow(obs[i], xi, t[i])).clamp(-1, 1)
        jac = torch.autograd.functional.jacobian(a1, x[i])                   # [d, d]
        a1_i = a1(x[i]).requires_grad_(True)
        (grad_q,) = torch.autograd.grad(q_fn(obs[i], a1_i), a1_i)
        torch.testing.assert_close(g[i], jac.t() @ grad_q)
        torch.testing.assert_close(g_clean[i], grad_q)                        # no Jacobian


# --- 2. w = 0 is the reference policy, bit for bit ------------------------------------------------------

def test_zero_guidance_is_euler_sampling_bit_for_bit():
    torch.manual_seed(0)
    flow = FlowPolicy(OBS, ACT, hidden=(16, 16)).requires_grad_(False)
    obs = torch.randn(5, OBS)
    for cond, noise in ((obs, torch.randn(5, ACT)), (obs.unsqueeze(1), torch.randn(5, 3, ACT))):
        for point in ("clean", "jacobian", "noisy"):
            out = guided_sample(flow, FakeCritic(), cond, noise, 4, 0.0, point)
            assert torch.equal(out, euler_sample(flow, cond, noise, 4))
    agent = tiny_agent()
    ours = agent.act(obs, guidance=0.0, generator=torch.Generator().manual_seed(3))
    ref = agent.act_reference(obs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, ref)
    with torch.inference_mode():
        assert torch.equal(agent.act(obs, guidance=0.0, generator=torch.Generator().manual_seed(3)), ref)


# --- 3. expectile regression ------------------------------------------------------------------------------

def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -2.0, 0.5, -1.0, 0.0])
    expected = torch.tensor([0.9 * 4, 0.1 * 4, 0.9 * 0.25, 0.1 * 1, 0.0])
    torch.testing.assert_close(expectile_loss(diff, 0.9), expected)


@pytest.mark.parametrize("value_critic", ["target", "online"])
def test_value_loss_regresses_to_min_of_the_chosen_critic(value_critic):
    agent = tiny_agent(value_critic=value_critic)
    agent.value = FakeValue()
    fake = FakeCritic()
    if value_critic == "target":
        agent.target_critic = fake         # the online critic stays a network: it must not be read
    else:
        agent.critic = fake
    batch = random_batch()
    _, info = agent.losses(batch)
    obs, sums = batch["observations"].numpy(), batch["actions"].sum(-1).numpy()
    q = np.minimum(sums + obs[:, 0], 2 * sums + obs[:, 0] - 1)
    diff = q - 0.5 * obs[:, 0]
    expected = np.mean(np.where(diff > 0, 0.9, 0.1) * diff ** 2)
    assert info["value_loss"].item() == pytest.approx(expected, rel=1e-5)


# --- 4. the Q target and the TD loss ----------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("members", ["mean", "sum"])
def test_q_target_and_td_loss_by_hand(chunk, members):
    agent = tiny_agent(discount=0.9, critic_loss_members=members)
    agent = QGFAgent.create(agent.cfg, OBS, ACT, chunk=chunk)
    agent.value, agent.critic = FakeValue(), FakeCritic()
    batch = random_batch()
    y, _ = agent.target(batch)
    r, m, s1 = batch["rewards"].numpy(), batch["masks"].numpy(), batch["next_observations"].numpy()
    expected = r + 0.9 ** chunk * m * 0.5 * s1[:, 0]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q_target(torch.tensor(0.5 * s1[:, 0]), batch["rewards"], batch["masks"],
                                        0.9 ** chunk).numpy(), expected, rtol=1e-6, atol=1e-6)
    _, info = agent.losses(batch)
    obs, sums = batch["observations"].numpy(), batch["actions"].sum(-1).numpy()
    qs = np.stack([sums + obs[:, 0], 2 * sums + obs[:, 0] - 1])
    sq = (qs - expected) ** 2
    want = sq.mean() if members == "mean" else sq.sum(0).mean()
    assert info["critic_loss"].item() == pytest.approx(want, rel=1e-5)


# --- 5. update, resume, acting, rows --------------------------------------------------------------------

def test_update_trains_q_and_v_only_and_never_runs_the_flow():
    agent = tiny_agent()
    ref_before = [p.clone() for p in agent.reference.parameters()]
    q_before = [p.detach().clone() for p in agent.critic.parameters()]
    v_before = [p.detach().clone() for p in agent.value.parameters()]
    t_before = [p.detach().clone() for p in agent.target_critic.parameters()]

    def no_flow(*args):
        raise AssertionError("update() must not run the reference flow")

    agent.reference.forward = no_flow
    batch = to_batch({k: v.numpy() for k, v in random_batch().items()})
    info = scalars(agent.update(batch))
    assert agent.step == 1
    assert all(np.isfinite(v) for v in info.values())
    assert {"critic_loss", "value_loss", "q_mean", "v_mean", "target_mean"} <= set(info)
    assert any(not torch.equal(a, b) for a, b in zip(q_before, agent.critic.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(v_before, agent.value.parameters()))
    # the target blends the critic's PRE-step parameters (the code's order)
    tau = agent.cfg.tau
    for t0, c0, t1 in zip(t_before, q_before, agent.target_critic.parameters()):
        torch.testing.assert_close(t1, (1 - tau) * t0 + tau * c0, atol=1e-7, rtol=0)
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(ref_before, agent.reference.parameters()))
    for _ in range(3):
        assert all(torch.isfinite(v) for v in agent.update(batch).values())
    clipped = tiny_agent(max_grad_norm=1.0, polyak_before_step=False)
    assert "critic_grad_norm" in clipped.update(batch)


def test_state_dict_round_trip_reproduces_the_next_update_exactly():
    agent = tiny_agent()
    agent.update(random_batch(seed=1))
    clone = tiny_agent(seed=5)
    # through bytes, as a checkpoint goes: a live optimiser state_dict shares its tensors
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    clone.load_state_dict(torch.load(buffer))
    assert clone.step == 1
    batch = random_batch(seed=2)
    info_a, info_b = agent.update(batch), clone.update(batch)
    assert all(torch.equal(info_a[k], info_b[k]) for k in info_a)
    for net in ("critic", "target_critic", "value"):
        for a, b in zip(getattr(agent, net).parameters(), getattr(clone, net).parameters()):
            assert torch.equal(a, b), net
    obs = torch.randn(3, OBS)
    assert torch.equal(agent.act(obs, guidance=0.5), clone.act(obs, guidance=0.5))


def test_act_shapes_inference_mode_and_best_of_n():
    agent = tiny_agent(guide_critic="online", guidance_point="jacobian")
    obs = torch.randn(5, OBS)
    with torch.inference_mode():
        a = agent.act(obs, guidance=0.3)
        one = agent.act(obs[0], guidance=0.3, num_particles=4)
    assert a.shape == (5, ACT) and one.shape == (ACT,) and a.abs().max() <= 1
    assert all(p.grad is None for p in agent.critic.parameters())
    with torch.no_grad():
        assert agent.act(obs, guidance_point="noisy").shape == (5, ACT)

    # best-of-N: the executed action is the candidate (a guided sample) with the largest Q
    agent = tiny_agent()
    agent.target_critic = FakeCritic()     # min_m Q = sum(a) + s_0 on [-1, 1]^d (member 0)
    n, w = 6, 0.2
    chosen = agent.act(obs, guidance=w, num_particles=n, generator=torch.Generator().manual_seed(4))
    noise = torch.randn((5, n, ACT), generator=torch.Generator().manual_seed(4))
    q_fn = agent._q_fn("target", "min", obs.unsqueeze(1))
    candidates = guided_sample(agent.reference, q_fn, obs.unsqueeze(1), noise, agent.cfg.flow_steps, w)
    best = candidates[torch.arange(5), q_fn(obs.unsqueeze(1), candidates).argmax(1)]
    assert torch.equal(chosen, best)
    assert all(any(torch.equal(chosen[i], c) for c in candidates[i]) for i in range(5))
    # guidance moves the samples uphill on this Q: their sum grows with w
    plain = euler_sample(agent.reference, obs.unsqueeze(1), noise, agent.cfg.flow_steps)
    assert candidates.sum(-1).mean() > plain.sum(-1).mean()


def test_eval_settings_rows():
    agent = tiny_agent(guidance=0.5)
    rows = agent.eval_settings({"guidance": [0.01, 0.04], "particles": 4, "budgets": [0, 1]})
    assert [(r.label, r.key, r.particles) for r in rows] == [("w=0.01", "guidance_0.01", 4),
                                                             ("w=0.04", "guidance_0.04", 4)]
    assert rows[1].options == {"guidance": 0.04, "num_particles": 4} and rows[1].sweep == {"guidance": 0.04}
    (row,) = agent.eval_settings({"guidance": None, "particles": None})
    assert (row.label, row.key, row.particles, dict(row.options)) == ("w=0.5", "guidance_0.5", 1,
                                                                      {"guidance": 0.5, "num_particles": 1})
    assert tiny_agent(num_particles=3).eval_settings({"guidance": [0.1]})[0].particles == 3


def test_config_validation_registry_and_yaml_defaults():
    module = load("qgf")
    assert module.Agent is QGFAgent and module.Config is QGFConfig
    assert config_from(QGFConfig, {"critic_hidden": [64]}).critic_hidden == (64,)
    for bad in (dict(guidance_point="x"), dict(q_agg="max"), dict(guide_critic="x"), dict(expectile=1.0),
                dict(guidance=-1.0), dict(critic_loss_members="x"), dict(value_critic="x")):
        with pytest.raises(ValueError):
            tiny_agent(**bad)
    with pytest.raises(ValueError):
        tiny_agent().act(torch.randn(2, OBS), guidance_point="x")
    yaml_path = Path(__file__).resolve().parents[1] / "conf" / "method" / "qgf.yaml"
    values = yaml.safe_load(yaml_path.read_text())
    assert values.pop("name") == "qgf"
    assert values.pop("defaults") == ["qgf_schema", "_self_"]  # the types: vgfcli.methods.register_schemas
    fields = {f.name: f.default for f in dataclasses.fields(QGFConfig)}
    # set from the policy, critic.hidden and the top-level seed (stages/train_critic.py)
    assert set(values) == set(fields) - {"actor_hidden", "flow_steps", "critic_hidden", "seed", "encoder"}
    assert config_from(QGFConfig, values) == QGFConfig()
