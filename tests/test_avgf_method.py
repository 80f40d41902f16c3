"""A-VGF (vgfcli.methods.avgf): the gradient field, its transport, its clipping, its counts."""

import pytest
import torch
from torch import nn

from vgfcli.methods.avgf import AVGFAgent, clip_global_norm, field_transport
from vgfcli.nn.networks import PlainInput


class AnalyticCritic(PlainInput, nn.Module):
    """Two members, Q_m(s, a) = -|a - s|^2 + m: grad_a mean Q = -2 (a - s), known everywhere."""

    members = 2

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # something for the update's clip and step to hold

    def forward(self, obs, actions):
        q = -(actions - obs).square().sum(-1)
        return torch.stack([q, q + 1.0])

    def polyak_(self, source, tau):  # the update's target blend: nothing to blend
        pass


def test_field_regression_recovers_the_gradient_of_an_analytic_q():
    torch.manual_seed(0)
    agent = AVGFAgent.create(None, 2, 2, critic_hidden=(64, 64), actor_hidden=(8,), num_particles=2,
                             train_steps=1, field_lr=3e-3, critic_norm=None)
    agent.critic = agent.target_critic = AnalyticCritic()
    gen = torch.Generator().manual_seed(1)

    def batch(n):
        obs = torch.rand(n, 2, generator=gen) * 2 - 1
        return {"observations": obs, "actions": torch.rand(n, 2, generator=gen) * 2 - 1,
                "rewards": torch.zeros(n), "masks": torch.ones(n), "next_observations": obs}

    first = agent.update(batch(256))["field_loss"].item()
    for _ in range(600):
        info = agent.update(batch(256))
    held = batch(512)
    truth = -2 * (held["actions"] - held["observations"])
    with torch.no_grad():
        err = (agent.field(held["observations"], held["actions"]) - truth).square().mean()
    # the target's variance is 8/3 per coordinate: the field explains > 99 % of it
    assert info["field_loss"].item() < first / 50 and err.item() < 0.01 * 8 / 3


def test_clip_is_optax_clip_by_global_norm_over_the_batch_or_per_state():
    g = torch.zeros(2, 1, 2)
    g[0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    g[1, 0] = torch.tensor([0.3, 0.4])  # norm 0.5
    whole = clip_global_norm(g, 1.0, per_state=False)  # global norm sqrt(25.25)
    torch.testing.assert_close(whole, g / torch.tensor(25.25).sqrt())
    each = clip_global_norm(g, 1.0, per_state=True)
    torch.testing.assert_close(each[0, 0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(each[1, 0], g[1, 0])  # under the norm: untouched
    assert clip_global_norm(g, None, per_state=True) is g


def test_acting_is_per_state_so_batching_does_not_change_an_action():
    torch.manual_seed(0)
    agent = AVGFAgent.create(None, 3, 2, critic_hidden=(16,), actor_hidden=(8,))
    obs, x = torch.randn(4, 3), torch.rand(4, 5, 2) * 2 - 1
    with torch.no_grad():
        together = field_transport(agent.field, obs, x, 3, 0.1, 1.0, per_state=True)
        alone = torch.cat([field_transport(agent.field, obs[i:i + 1], x[i:i + 1], 3, 0.1, 1.0, per_state=True)
                           for i in range(4)])
        pooled = field_transport(agent.field, obs, x, 3, 0.1, 1.0, per_state=False)
    torch.testing.assert_close(together, alone)
    assert together.abs().max() <= 1.0 and not torch.allclose(together, x)
    assert pooled.shape == x.shape


def test_acting_counts_field_and_critic_passes():
    torch.manual_seed(0)
    agent = AVGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,), num_particles=5)
    agent.act(torch.randn(4, 3), steps=3)
    per = agent.compute.per_action()
    assert per == {"critic_forward": 5.0, "critic_backward": 0.0, "critic_evals": 5.0, "field_forward": 15.0,
                   "steps_mean": 3.0, "steps_hist": [0, 0, 0, 4]}


def test_update_changes_critic_and_field_and_checkpoints_both(tmp_path):
    torch.manual_seed(0)
    agent = AVGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,))
    b = {"observations": torch.randn(16, 3), "actions": torch.rand(16, 2) * 2 - 1, "rewards": -torch.rand(16),
         "masks": torch.ones(16), "next_observations": torch.randn(16, 3)}
    field0 = [p.clone() for p in agent.field.parameters()]
    info = agent.update(b)
    assert {"critic_loss", "field_loss", "vgf_var", "bc_flow_var"} <= set(info)
    assert any(not torch.equal(a, p) for a, p in zip(field0, agent.field.parameters()))
    other = AVGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,))
    other.load_state_dict(agent.state_dict())
    obs = torch.randn(2, 3)
    agent.act_generator.manual_seed(3)
    other.act_generator.manual_seed(3)
    torch.testing.assert_close(agent.act(obs), other.act(obs))


def test_avgf_refuses_adaptive_budgets():
    agent = AVGFAgent.create(None, 3, 2, critic_hidden=(8,), actor_hidden=(8,))
    with pytest.raises(ValueError, match="adaptive budgets are vgf's"):
        agent.eval_settings({"budgets": [0, "auto"]})
    assert [s.label for s in agent.eval_settings({"budgets": [0, 2]})] == ["L=0", "L=2"]
