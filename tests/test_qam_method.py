"""The QAM agent: lean adjoint, sigma schedule, pessimistic TD target, updates, acting, variants."""

import dataclasses
import io
import math

import pytest
import torch
import yaml
from torch import nn

from tests import batches
from vgfcli.config import config_dir
from vgfcli.methods import load
from vgfcli.methods.base import scalars
from vgfcli.methods.qam import (
    QAMAgent,
    QAMConfig,
    adjoint_matching_loss,
    lean_adjoint,
    memoryless_rollout,
    pessimistic_value,
    sigma_schedule,
)
from vgfcli.nn.flow import FlowPolicy
from vgfcli.nn.networks import PlainInput

OBS, ACT = 3, 2
TINY = dict(critic_hidden=(16, 16), actor_hidden=(16, 16), num_critics=3, flow_steps=3)


def tiny_agent(act_dim=ACT, **overrides) -> QAMAgent:
    torch.manual_seed(0)
    return QAMAgent.create(None, OBS, act_dim, "cpu", **{**TINY, **overrides})


def random_batch(n=8, seed=0, act_dim=ACT):
    return batches.random_batch(OBS, act_dim, n, seed)


class ConstantCritic(PlainInput, nn.Module):
    """Member m returns values[m] + slope * sum(a), shaped like EnsembleCritic's output [M, *lead]."""

    def __init__(self, values, slope=0.0):
        super().__init__()
        self.values, self.slope = torch.tensor(values), slope

    def forward(self, obs, actions):
        lead = torch.broadcast_shapes(obs.shape[:-1], actions.shape[:-1])
        return self.values.reshape(-1, *[1] * len(lead)) + self.slope * actions.sum(-1).expand(lead)

    def polyak_(self, source, tau):
        pass


def saved(agent):
    """``agent.state_dict()`` through torch.save/torch.load, as a checkpoint (no shared tensors)."""
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# --- adjoint matching pieces --------------------------------------------------------------------------

def test_lean_adjoint_equals_autograd_through_the_discretised_dynamics():
    torch.manual_seed(0)
    flow = FlowPolicy(2, 2, hidden=(8,), activation="gelu").double()
    steps, h = 6, 1 / 6
    obs = torch.randn(4, 2, dtype=torch.float64)
    fixed = 0.3 * torch.randn(steps, 4, 2, dtype=torch.float64)       # the (frozen) noise terms
    xs = [torch.randn(4, 2, dtype=torch.float64, requires_grad=True)]
    for k in range(steps):
        x, s = xs[-1], k * h + h                                        # the base drift at t_k + h
        x.retain_grad()
        t = torch.full((4, 1), s, dtype=torch.float64)
        xs.append(x + h * (2 * flow(obs, x, t) - x / s) + fixed[k])
    w = torch.tensor([1.5, -0.7], dtype=torch.float64)
    x_final = xs[-1]
    x_final.retain_grad()
    cost = (torch.sin(3 * x_final) * w).sum() + x_final.square().sum()
    cost.backward()
    adjoints = lean_adjoint(flow, obs, torch.stack([x.detach() for x in xs]), x_final.grad, steps)
    assert adjoints.shape == (steps, 4, 2) and adjoints.dtype == torch.float64
    for k in range(steps):
        torch.testing.assert_close(adjoints[k], xs[k].grad, rtol=1e-10, atol=1e-12)


def test_memoryless_rollout_steps_and_deterministic_last_step():
    torch.manual_seed(0)
    pol, base = FlowPolicy(2, 2, (8,)).double(), FlowPolicy(2, 2, (8,)).double()
    steps, h = 4, 0.25
    obs, x0 = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    noises = torch.randn(steps - 1, 5, 2, dtype=torch.float64)
    with torch.no_grad():
        xs = memoryless_rollout(pol, base, obs, x0, noises, steps)
        assert xs.shape == (steps + 1, 5, 2) and torch.equal(xs[0], x0)
        sig = sigma_schedule(steps, torch.float64)
        for k in range(steps):
            t = torch.full((5, 1), k * h, dtype=torch.float64)
            if k < steps - 1:
                expect = (xs[k] + h * (2 * pol(obs, xs[k], t) - xs[k] / (k * h + h))
                          + math.sqrt(h) * sig[k] * noises[k])
            else:
                expect = xs[k] + h * base(obs, xs[k], t)
            torch.testing.assert_close(xs[k + 1], expect)


def test_sigma_schedule_closed_form_for_ten_steps():
    sig = sigma_schedule(10, torch.float64)
    expected = [math.sqrt(2 * (1 - k / 10 + 0.1) / (k / 10 + 0.1)) for k in range(10)]
    torch.testing.assert_close(sig, torch.tensor(expected, dtype=torch.float64))
    assert sig[0].item() == pytest.approx(math.sqrt(22.0))
    assert sig[9].item() == pytest.approx(math.sqrt(0.4))
    assert (sig.diff() < 0).all()


def test_adjoint_matching_loss_by_hand():
    diff = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])                  # [T=2, B=1, d=2]
    adj = torch.tensor([[[0.5, 1.0]], [[-1.0, 0.0]]])
    sig = torch.tensor([2.0, 1.0])
    # k=0: (1 + 1, 0 + 2) -> 8 ; k=1: (0 - 1, 4 + 0) -> 17
    assert adjoint_matching_loss(diff, adj, sig).item() == pytest.approx(25.0)


# --- TD target ------------------------------------------------------------------------------------------

def test_pessimistic_value_by_hand():
    qs = torch.tensor([[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]])            # [M=3, B=2]
    v = pessimistic_value(qs, 0.5)
    torch.testing.assert_close(v, torch.tensor([3 - 0.5 * math.sqrt(14 / 3), 1 - 0.5 * math.sqrt(2.0)]))
    torch.testing.assert_close(pessimistic_value(qs, 0.0), qs.mean(0))


@pytest.mark.parametrize("chunk", [1, 3])
def test_target_uses_mean_minus_rho_std_and_discount_per_chunk(chunk):
    agent = tiny_agent(act_dim=2 * chunk, discount=0.9, rho=0.5) if chunk == 1 else \
        QAMAgent.create(None, OBS, 2 * chunk, "cpu", chunk=chunk, discount=0.9, rho=0.5, **TINY)
    assert agent.bootstrap_discount == pytest.approx(0.9 ** chunk)
    agent.target_critic = ConstantCritic([1.0, 2.0, 6.0])
    batch = random_batch(6, act_dim=2 * chunk)
    y, info = agent.target(batch)
    v = 3 - 0.5 * math.sqrt(14 / 3)
    expected = batch["rewards"] + 0.9 ** chunk * batch["masks"] * v
    torch.testing.assert_close(y, expected)
    assert info["next_q_std"].item() == pytest.approx(math.sqrt(14 / 3))


# --- update, state, acting ------------------------------------------------------------------------------

def test_update_trains_policy_and_critic_and_leaves_the_reference_alone():
    agent = tiny_agent()
    ref, pol, crit = params(agent.reference), params(agent.policy), params(agent.critic)
    target_before = params(agent.target_critic)
    batch = random_batch()
    info = scalars(agent.update(batch))
    assert all(math.isfinite(v) for v in info.values()), info
    assert {"critic_loss", "actor_loss", "adj_loss", "q_mean", "adj_mean", "target_mean", "grad_norm"} <= set(info)
    assert changed(pol, agent.policy) and changed(crit, agent.critic)
    assert not changed(ref, agent.reference)
    assert all(p.grad is None and not p.requires_grad for p in agent.reference.parameters())
    tau = agent.cfg.tau            # the code's order: blend the critic's PRE-step parameters
    for t0, c0, t1 in zip(target_before, crit, agent.target_critic.parameters()):
        torch.testing.assert_close(t1, (1 - tau) * t0 + tau * c0)
    for _ in range(3):
        info = scalars(agent.update(random_batch(seed=agent.step)))
    assert agent.step == 4 and all(math.isfinite(v) for v in info.values())


def test_losses_do_not_step_and_policy_starts_fresh():
    agent = tiny_agent()
    # the code initialises the policy flow with its own weights, in the reference's architecture
    assert [p.shape for p in agent.policy.parameters()] == [p.shape for p in agent.reference.parameters()]
    assert changed(params(agent.reference), agent.policy)
    before = params(agent.policy)
    loss, _ = agent.losses(random_batch())
    assert loss.requires_grad and not changed(before, agent.policy)


def test_zero_temperature_from_the_reference_has_zero_adjoint_loss_and_acts_like_it():
    agent = tiny_agent(tau_inv=0.0, policy_init="reference")
    _, info = agent.losses(random_batch())
    assert info["adj_loss"].item() == pytest.approx(0.0, abs=1e-10)
    obs = torch.randn(4, OBS)
    torch.testing.assert_close(agent.act(obs, generator=torch.Generator().manual_seed(2)),
                               agent.act_reference(obs, generator=torch.Generator().manual_seed(2)))


def test_adjoint_matching_tilts_the_policy_toward_higher_q():
    # pi* ~ pi_b exp(tau_inv Q): with Q = sum(a) (a fixed critic) actions must move up from v_b's.
    agent = tiny_agent(tau_inv=2.0, policy_init="reference", lr=3e-3, flow_steps=4)
    agent.target_critic = ConstantCritic([0.0, 0.0, 0.0], slope=1.0)
    obs = torch.randn(16, OBS, generator=torch.Generator().manual_seed(1))
    before = agent.act(obs.repeat(8, 1), generator=torch.Generator().manual_seed(3)).sum(-1).mean()
    batch = random_batch(16)
    batch["observations"] = obs
    for _ in range(40):
        agent.update(batch)
    after = agent.act(obs.repeat(8, 1), generator=torch.Generator().manual_seed(3)).sum(-1).mean()
    assert after > before + 0.3, (before, after)


def test_state_dict_round_trip_reproduces_the_next_update_exactly():
    agent = tiny_agent()
    agent.update(random_batch(seed=1))
    clone = tiny_agent(seed=5)
    clone.load_state_dict(saved(agent))
    assert clone.step == 1
    batch = random_batch(seed=2)
    a, b = scalars(agent.update(batch)), scalars(clone.update(batch))
    assert a == b
    for m in ("critic", "target_critic", "policy"):
        assert not changed(params(getattr(agent, m)), getattr(clone, m)), m
    obs = torch.randn(3, OBS)
    assert torch.equal(agent.act(obs), clone.act(obs))


def test_act_shapes_best_of_n_and_inference_mode():
    agent = tiny_agent()
    obs = torch.randn(5, OBS)
    assert agent.act(obs).shape == (5, ACT)
    assert agent.act(obs[0]).shape == (ACT,)
    assert agent.act(obs, num_particles=4).abs().max() <= 1
    cand = agent.candidates(obs, 8, torch.Generator().manual_seed(4))          # [B, N, d]
    chosen = agent.act(obs, num_particles=8, generator=torch.Generator().manual_seed(4))
    q = agent.critic(obs.unsqueeze(1), cand).mean(0)
    assert torch.equal(chosen, cand[torch.arange(5), q.argmax(1)])
    assert all((cand[i] == chosen[i]).all(-1).any() for i in range(5))
    with torch.inference_mode():
        inf = agent.act(torch.randn(3, OBS), num_particles=3)
    assert inf.shape == (3, ACT)


def test_eval_settings_one_policy_row():
    agent = tiny_agent()
    (row,) = agent.eval_settings({"budgets": [0, 1], "guidance": None, "particles": None})
    assert (row.label, row.key, row.particles, dict(row.options)) == ("qam", "policy", 1, {"num_particles": 1})
    (row,) = agent.eval_settings({"particles": 4})
    assert row.particles == 4 and row.options["num_particles"] == 4


# --- variants -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["fql", "edit"])
def test_variants_shapes_one_step_and_round_trip(variant):
    agent = tiny_agent(variant=variant)
    extra = agent.onestep if variant == "fql" else agent.edit
    before, pol = params(extra), params(agent.policy)
    info = scalars(agent.update(random_batch()))
    assert all(math.isfinite(v) for v in info.values()), info
    assert changed(before, extra) and changed(pol, agent.policy)
    key = "fql_distill_loss" if variant == "fql" else "edit_entropy"
    assert key in info
    if variant == "edit":
        assert info["edit_alpha"] == pytest.approx(1.0)          # alpha's value before its first step
        assert agent.log_alpha.item() != 0.0
    obs = torch.randn(4, OBS)
    assert agent.act(obs).shape == (4, ACT) and agent.act(obs[0]).shape == (ACT,)
    assert agent.act(obs, num_particles=3).abs().max() <= 1
    clone = tiny_agent(variant=variant, seed=9)
    clone.load_state_dict(saved(agent))
    batch = random_batch(seed=3)
    assert scalars(agent.update(batch)) == scalars(clone.update(batch))


def test_edit_policy_log_prob_matches_a_direct_density():
    from vgfcli.methods.qam import EditPolicy

    torch.manual_seed(0)
    edit = EditPolicy(OBS, ACT, (8, 8), "gelu").double()
    obs, a = torch.randn(5, OBS, dtype=torch.float64), torch.rand(5, ACT, dtype=torch.float64) * 2 - 1
    e, logp = edit(obs, a, torch.Generator().manual_seed(0))
    feat = edit.act(edit.trunk(obs, a))
    mean, std = edit.mean(feat), edit.log_std(feat).clamp(-20, 2).exp()
    u = torch.atanh(e)
    direct = torch.distributions.Normal(mean, std).log_prob(u).sum(-1) - torch.log1p(-e.square()).sum(-1)
    torch.testing.assert_close(logp, direct, rtol=1e-6, atol=1e-6)


def test_residual_policy_updates():
    agent = tiny_agent(residual=True)
    info = scalars(agent.update(random_batch()))
    assert all(math.isfinite(v) for v in info.values())


# --- config -------------------------------------------------------------------------------------------

def test_config_validation_and_registry():
    module = load("qam")
    assert module.Agent is QAMAgent and module.Config is QAMConfig and module.create == QAMAgent.create
    for bad in (dict(variant="fancy"), dict(variant="fql", fql_alpha=-1.0), dict(variant="edit", edit_scale=-0.1),
                dict(policy_init="ema"), dict(residual=True, policy_init="reference"), dict(tau_inv=-1.0),
                dict(best_of_n=0), dict(grad_clip=0.0)):
        with pytest.raises(ValueError):
            tiny_agent(**bad)
    with pytest.raises(ValueError, match="unknown"):
        tiny_agent(inv_temp=1.0)


def test_method_yaml_lists_every_config_field_with_its_default():
    values = yaml.safe_load((config_dir() / "method" / "qam.yaml").read_text())
    assert values.pop("name") == "qam"
    assert values.pop("defaults") == ["qam_schema", "_self_"]  # the types: vgfcli.methods.register_schemas
    defaults = dataclasses.asdict(QAMConfig())
    # set from the policy section, critic.hidden and the top-level seed
    assert set(values) == set(defaults) - {"actor_hidden", "flow_steps", "critic_hidden", "seed", "encoder"}
    for key, value in values.items():
        assert (tuple(value) if isinstance(value, list) else value) == defaults[key], key
