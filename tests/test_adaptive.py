"""The adaptive transport budget (vgfcli.nn.adaptive), worked by hand on critics whose members are
linear in the action: Q_m(s, a) = c_m * a_0 + o_m. Their gradient is constant, so with one particle (no
kernel interaction) each Adam step moves a_0 by exactly lr, and the members' std is known in closed form."""

import math

import pytest
import torch

from vgfcli.methods.base import ComputeCounter, member_std_percentiles, percentile_at
from vgfcli.methods.vgf import VGFAgent, parse_budgets
from vgfcli.nn import closed_form
from vgfcli.nn.adaptive import StopRule, adaptive_transport
from vgfcli.nn.networks import EnsembleCritic

LR = 0.1


def linear_critic(slopes, offsets) -> EnsembleCritic:
    """Members Q_m = slopes[m] * a_0 + offsets[m] (obs 1-dim, actions 2-dim; one ReLU unit kept in its
    linear range by a bias of 10)."""
    m = len(slopes)
    critic = EnsembleCritic(1, 2, hidden=(1,), members=m, norm=None)
    with torch.no_grad():
        critic.weights[0].zero_()
        critic.weights[0][:, 1, 0] = torch.tensor(slopes, dtype=torch.float32)
        critic.biases[0].fill_(10.0)
        critic.weights[1].fill_(1.0)
        critic.biases[1][:, 0, 0] = torch.tensor(offsets, dtype=torch.float32) - 10.0
    return critic


def run(critic, start_a0, stop, max_steps, n=1):
    b = len(start_a0)
    x = torch.zeros(b, n, 2)
    x[:, :, 0] = torch.tensor(start_a0).unsqueeze(1)
    return adaptive_transport(closed_form.critic_tensors(critic), closed_form.CriticShape.of(critic),
                              torch.zeros(b, 1), x, max_steps, stop, alpha=1.0, lr=LR)


def test_linear_critic_is_what_the_tests_assume():
    critic = linear_critic([1.0, 3.0], [0.0, 0.5])
    a = torch.tensor([[0.3, -0.7]])
    assert critic(torch.zeros(1, 1), a).flatten().tolist() == pytest.approx([0.3, 1.4])


def test_disagreement_rule_stops_where_the_spread_crosses_the_ceiling_and_never_moves_after():
    # members a0 and 3 a0: std = sqrt(2) |a0|; a0 = 0.1 k after k steps -> 0.141, 0.283, ...
    critic = linear_critic([1.0, 3.0], [0.0, 0.0])
    stop = StopRule(("disagreement",), threshold=0.25)
    out = run(critic, [0.0, 0.0], stop, max_steps=5)
    assert out.steps.tolist() == [1, 1]
    assert out.particles[:, 0, 0].tolist() == pytest.approx([LR, LR], abs=1e-6)  # the rejected 2nd step undone
    assert out.particles[:, 0, 1].tolist() == [0.0, 0.0]
    # the members' Q at the kept particles (what selection reads)
    assert out.member_q[:, 0, 0].tolist() == pytest.approx([LR, 3 * LR], abs=1e-6)
    # passes per particle: the start (fwd + bwd), step 1 (fwd, then bwd as it is kept), step 2 (fwd,
    # rejected: no bwd), then none
    assert (out.forward, out.backward) == (3 * 2, 2 * 2)
    # a state already beyond the ceiling rejects its first step: best-of-N on its reference samples
    out = run(critic, [0.3, 0.0], stop, max_steps=5)
    assert out.steps.tolist() == [0, 1]
    assert out.particles[0, 0, 0].item() == pytest.approx(0.3)


def test_gain_rule_compares_the_step_gain_with_the_members_spread():
    # members 2 a0 and 2 a0 + 1: std = 1/sqrt(2) everywhere, a step gains 2 * lr = 0.2 (mean Q)
    critic = linear_critic([2.0, 2.0], [0.0, 1.0])
    std = 1 / math.sqrt(2)
    keep_going = run(critic, [0.0], StopRule(("gain",), gain_fraction=0.19 / std), max_steps=3)
    assert keep_going.steps.tolist() == [3] and keep_going.particles[0, 0, 0].item() == pytest.approx(3 * LR)
    # the last step of a never-stopping state needs no gradient: 3 fwd+bwd, then a forward at x_3
    assert (keep_going.forward, keep_going.backward) == (4, 3)
    stopped = run(critic, [0.0], StopRule(("gain",), gain_fraction=0.21 / std), max_steps=3)
    assert stopped.steps.tolist() == [0] and stopped.particles[0, 0, 0].item() == 0.0
    assert (stopped.forward, stopped.backward) == (2, 1)  # best-of-N's forward + the step it tried
    # at the box edge a step gains less: 0.85 -> 0.95 (gain 0.2), -> 1.0 clamped (gain 0.1 < 0.19)
    edge = run(critic, [0.85], StopRule(("gain",), gain_fraction=0.19 / std), max_steps=5)
    assert edge.steps.tolist() == [1] and edge.particles[0, 0, 0].item() == pytest.approx(0.95)


def test_a_state_that_never_stops_ends_where_the_fixed_budget_does():
    torch.manual_seed(0)
    critic = EnsembleCritic(3, 2, hidden=(16, 16), members=2)
    obs, x = torch.randn(4, 3), torch.rand(4, 5, 2) * 2 - 1
    tensors, shape = closed_form.critic_tensors(critic), closed_form.CriticShape.of(critic)
    fixed = closed_form.transport(tensors, shape, obs, x, 3, alpha=0.5, lr=0.05)
    never = StopRule(("disagreement",), threshold=float("inf"))
    out = adaptive_transport(tensors, shape, obs, x, 3, never, alpha=0.5, lr=0.05)
    assert out.steps.tolist() == [3] * 4
    torch.testing.assert_close(out.particles, fixed)
    torch.testing.assert_close(out.member_q, closed_form.q_values(tensors, shape, obs, fixed))


def test_single_critic_has_no_disagreement():
    critic = linear_critic([1.0], [0.0])
    with pytest.raises(ValueError, match="at least 2 members"):
        run(critic, [0.0], StopRule(("gain",)), max_steps=2)
    assert member_std_percentiles(critic, [{"observations": torch.zeros(3, 1), "actions": torch.zeros(3, 2)}]) is None


def test_calibration_percentiles_and_their_interpolation():
    critic = linear_critic([1.0, 3.0], [0.0, 0.0])
    a0 = torch.linspace(0, 1, 201)
    batch = {"observations": torch.zeros(201, 1), "actions": torch.stack([a0, torch.zeros(201)], 1)}
    p = member_std_percentiles(critic, [batch])
    # std = sqrt(2) a0 with a0 uniform on [0, 1]: the q-quantile is sqrt(2) q
    assert p.shape == (101,)
    torch.testing.assert_close(p, math.sqrt(2) * torch.linspace(0, 1, 101), atol=1e-5, rtol=0)
    assert percentile_at(p, 0.905) == pytest.approx(math.sqrt(2) * 0.905, abs=1e-5)


def test_vgf_acting_counts_its_passes_exactly():
    torch.manual_seed(0)
    agent = VGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,), num_particles=4, bank_size=0,
                            amp="off")
    obs = torch.randn(5, 3)
    agent.act(obs, steps=2)
    agent.act(obs[:2], steps=0)
    agent.act(obs[:1], steps=1, num_particles=1)
    c = agent.compute
    # 5 states x 4 particles x (2 fwd+bwd + 1 selecting fwd); 2 x 4 selecting fwds; 1 x 1 x 1 fwd+bwd, no selection
    assert (c.states, c.critic_forward, c.critic_backward) == (8, 5 * 4 * 3 + 2 * 4 + 1, 5 * 4 * 2 + 1)
    assert c.steps == [2, 1, 5]
    per = c.per_action()
    assert per["critic_evals"] == pytest.approx((69 + 41) / 8) and per["steps_mean"] == pytest.approx(11 / 8)


def test_adaptive_acting_counts_and_histogram():
    torch.manual_seed(0)
    agent = VGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,), num_particles=4, bank_size=0,
                            amp="off")
    agent.member_std_percentiles = torch.linspace(0, 1, 101)
    obs = torch.randn(6, 3)
    agent.act(obs, steps=3, budget="auto_std", stop_quantile=1.0)  # ceiling 1.0
    assert agent.compute.states == 6 and sum(agent.compute.steps) == 6
    assert agent.compute.critic_forward >= 6 * 4 * 2  # the start and at least one proposal per state
    fresh = VGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,), num_particles=4, bank_size=0)
    with pytest.raises(ValueError, match="no disagreement calibration"):
        fresh.act(obs, steps=3, budget="auto")


def test_counter_histogram_and_budget_names():
    c = ComputeCounter()
    c.add_steps(torch.tensor([0, 2, 2]))
    c.add_steps(1, states=4)
    assert c.steps == [1, 4, 2]
    assert parse_budgets([0, "3", "auto", "auto_gain"]) == [0, 3, "auto", "auto_gain"]
    with pytest.raises(ValueError, match="budgets must be"):
        parse_budgets(["-1"])
    with pytest.raises(ValueError, match="budgets must be"):
        parse_budgets(["fast"])


def test_an_adaptive_row_beside_only_best_of_n_reaches_the_methods_test_steps():
    """`--budget 0,auto`: with no L > 0 listed the adaptive ceiling is test_steps (it used to be 0, an error)."""
    agent = VGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,), num_particles=4, bank_size=0,
                            test_steps=3)
    agent.member_std_percentiles = torch.linspace(0, 1, 101)
    rows = agent.eval_settings({"budgets": [0, "auto"]})
    assert [r.label for r in rows] == ["L=0", "auto(L<=3)"] and rows[1].options["steps"] == 3
    assert agent.eval_settings({"budgets": [0, 2, "auto"]})[2].options["steps"] == 2
    assert agent.eval_settings({"budgets": [0, "auto"], "budget_max": 5})[1].options["steps"] == 5
    with pytest.raises(ValueError, match="budget_max >= 1"):
        agent.eval_settings({"budgets": [0, "auto"], "budget_max": 0})
