"""FQL's distillation and updates, and BC as the reference policy alone."""

import copy

import pytest
import torch

from vgfcli.methods import bc, fql
from vgfcli.methods.base import best_by_q, frozen_call
from vgfcli.nn.flow import FlowPolicy, euler_sample

OBS, ACT = 3, 2
SMALL = dict(critic_hidden=(16, 16), onestep_hidden=(16, 16), actor_hidden=(16, 16), flow_steps=4)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"observations": torch.randn(n, OBS, generator=g), "actions": torch.rand(n, ACT, generator=g) * 2 - 1,
            "rewards": -torch.rand(n, generator=g), "masks": torch.ones(n),
            "next_observations": torch.randn(n, OBS, generator=g)}


def test_distillation_target_is_the_flow_ode_of_the_same_noise():
    torch.manual_seed(0)
    flow = FlowPolicy(OBS, ACT, (8,))
    obs, noise = torch.randn(5, OBS), torch.randn(5, ACT)
    target = fql.distillation_target(flow, obs, noise, 3)
    # by hand: three Euler steps of 1/3 from the noise, then the clip to the box
    x = noise.clone()
    with torch.no_grad():
        for k in range(3):
            x = x + flow(obs, x, torch.full((5, 1), k / 3)) / 3
    assert torch.allclose(target, x.clamp(-1, 1))
    assert not target.requires_grad


def test_actor_loss_trains_the_onestep_policy_not_the_critic():
    agent = fql.create(None, OBS, ACT, alpha=0.0, **SMALL)  # Q term only
    b = batch()
    noise = torch.randn(8, ACT)
    q = frozen_call(agent.critic, b["observations"], agent.policy(b["observations"], noise).clamp(-1, 1)).mean()
    q.backward()
    assert all(p.grad is None for p in agent.critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.onestep.parameters())


def test_critic_target_uses_the_onestep_policy_and_chunk_discount():
    agent = fql.create(None, OBS, 2 * ACT, chunk=2, discount=0.9, **SMALL)
    assert agent.bootstrap_discount == pytest.approx(0.81)
    b = batch()
    b["actions"] = torch.rand(8, 2 * ACT) * 2 - 1
    _, info = agent.losses(b)
    assert torch.isfinite(info["target_mean"])


def test_update_moves_critic_and_policy_and_resumes_exactly():
    agent = fql.create(None, OBS, ACT, alpha=3.0, **SMALL)
    before_ref = [p.clone() for p in agent.reference.parameters()]
    before_pol = [p.clone() for p in agent.onestep.parameters()]
    before_q = [p.clone() for p in agent.critic.parameters()]
    info = agent.update(batch())
    assert all(torch.isfinite(v) for v in info.values())
    assert all(torch.equal(a, b) for a, b in zip(before_ref, agent.reference.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before_pol, agent.onestep.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before_q, agent.critic.parameters()))
    state = copy.deepcopy(agent.state_dict())  # a checkpoint is a copy (torch.save), not live tensors
    twin = fql.create(None, OBS, ACT, alpha=3.0, **SMALL)
    twin.load_state_dict(state)
    b = batch(seed=1)
    a_info, t_info = agent.update(b), twin.update(b)
    assert all(torch.equal(a_info[k], t_info[k]) for k in a_info)
    assert all(torch.equal(a, b) for a, b in zip(agent.onestep.parameters(), twin.onestep.parameters()))


def test_target_critic_blends_the_pre_step_weights_as_the_fql_code():
    # agents/fql.py: target_update(new_network) reads self.network.params, the weights BEFORE the step.
    agent = fql.create(None, OBS, ACT, alpha=3.0, tau=0.1, **SMALL)
    before = [p.clone() for p in agent.critic.parameters()]
    target = [p.clone() for p in agent.target_critic.parameters()]
    agent.update(batch())
    for new_t, old_t, old_q in zip(agent.target_critic.parameters(), target, before):
        assert torch.allclose(new_t, 0.1 * old_q + 0.9 * old_t)


def test_fql_acts_in_the_box_and_best_of_n_picks_a_candidate():
    agent = fql.create(None, OBS, ACT, **SMALL)
    with torch.inference_mode():
        single = agent.act(torch.randn(OBS))
        many = agent.act(torch.randn(4, OBS), num_particles=5)
    assert single.shape == (ACT,) and many.shape == (4, ACT)
    assert many.abs().max() <= 1.0
    obs, cand = torch.randn(4, OBS), torch.rand(4, 5, ACT) * 2 - 1
    best = best_by_q(agent.critic, obs, cand, "mean")
    q = agent.critic(obs.unsqueeze(1), cand).mean(0)
    assert torch.equal(best, cand[torch.arange(4), q.argmax(1)])


def test_bc_is_the_reference_flow_and_trains_nothing():
    torch.manual_seed(0)
    flow = FlowPolicy(OBS, ACT, (8,))
    agent = bc.create(None, OBS, ACT, reference=flow, flow_steps=3)
    assert not agent.trains and agent.eval_settings({"particles": None}) == []
    obs = torch.randn(6, OBS)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = euler_sample(flow, obs, torch.randn(6, ACT, generator=g2), 3)
    assert torch.equal(agent.act(obs, generator=g1), expected)
    with pytest.raises(ValueError, match="no critic"):
        agent.act(obs, num_particles=4)
    with pytest.raises(RuntimeError, match="nothing to train"):
        agent.update(batch())


def test_the_base_agent_declares_what_the_stages_read():
    """critic, amp and compile_seconds exist on every agent: None / None / 0.0 where the method has none."""
    b, f = bc.create(None, OBS, ACT, flow_steps=3), fql.create(None, OBS, ACT, **SMALL)
    assert b.critic is None and b.q_values(torch.randn(2, OBS), torch.zeros(2, ACT)) is None and b.calibrate([]) == {}
    assert f.critic is not None and f.amp is None and f.compile_seconds == 0.0 == b.compile_seconds


def test_create_checks_the_config_once_and_names_the_bad_key():
    with pytest.raises(ValueError, match="^lr must be > 0, got -1$"):
        fql.create(None, OBS, ACT, lr=-1, **SMALL)
    with pytest.raises(ValueError, match="^q_agg must be min or mean, not 'max'$"):
        fql.create(None, OBS, ACT, q_agg="max", **SMALL)
    with pytest.raises(ValueError, match="^flow_steps must be >= 1, got 0$"):
        bc.create(None, OBS, ACT, flow_steps=0)
    with pytest.raises(ValueError, match="^unknown BCConfig key"):
        bc.create(None, OBS, ACT, alpha=1.0)
