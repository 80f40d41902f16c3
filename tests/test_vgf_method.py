"""The VGF agent: TD targets, the particle bank, updates, acting; and the critic ensemble."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from vgfcli.methods import load
from vgfcli.methods.base import config_from, scalars, to_batch
from vgfcli.methods.vgf import ParticleBank, VGFAgent, VGFConfig, build_bank, refresh_bank, td_target
from vgfcli.nn.flow import FlowPolicy
from vgfcli.nn.networks import MLP, EnsembleCritic, PlainInput

OBS, ACT = 4, 2
TINY = dict(critic_hidden=(32, 32), actor_hidden=(32, 32))


def tiny_agent(**overrides) -> VGFAgent:
    torch.manual_seed(0)
    return VGFAgent.create(None, OBS, ACT, "cpu", **{**TINY, **overrides})


def random_batch(n=16, seed=0, indices=True):
    g = torch.Generator().manual_seed(seed)
    batch = dict(observations=torch.randn(n, OBS, generator=g),
                 actions=torch.rand(n, ACT, generator=g) * 2 - 1,
                 rewards=torch.randn(n, generator=g),
                 masks=(torch.rand(n, generator=g) > 0.3).float(),
                 next_observations=torch.randn(n, OBS, generator=g))
    if indices:
        batch["indices"] = torch.arange(n)
    return batch


class FakeCritic(PlainInput, nn.Module):
    """Q_m(s, a) = (m + 1) * sum(a) + s_0 - m, shaped like EnsembleCritic's output [M, *lead]."""

    def __init__(self, members=2):
        super().__init__()
        self.members = members

    def forward(self, obs, actions):
        return torch.stack([(m + 1) * actions.sum(-1) + obs[..., 0] - m for m in range(self.members)])


# --- critic ensemble --------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", [None, "pre", "post"])
def test_ensemble_member_equals_a_plain_mlp_with_its_weights(norm):
    torch.manual_seed(0)
    ens = EnsembleCritic(OBS, ACT, hidden=(8, 8), members=3, activation="gelu", norm=norm)
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(0.1 * torch.randn_like(p))   # LayerNorm scales/shifts away from 1/0
    obs, act = torch.randn(5, OBS), torch.randn(5, ACT)
    out = ens(obs, act)
    assert out.shape == (3, 5)
    for m in range(3):
        mlp = MLP((OBS, ACT), (8, 8), 1, activation="gelu", norm=norm)
        with torch.no_grad():
            for layer, w, b in zip(mlp.layers, ens.weights, ens.biases):
                layer.weight.copy_(w[m].t())
                layer.bias.copy_(b[m, 0])
            if norm:
                for ln, s, t in zip(mlp.norms, ens.ln_scale, ens.ln_shift):
                    ln.weight.copy_(s[m, 0])
                    ln.bias.copy_(t[m, 0])
        assert torch.allclose(out[m], mlp(obs, act).squeeze(-1), atol=1e-5)
        mlp(obs, act).sum().backward()
        ens.zero_grad()
        ens(obs, act)[m].sum().backward()
        for layer, w, b in zip(mlp.layers, ens.weights, ens.biases):
            assert torch.allclose(w.grad[m], layer.weight.grad.t(), atol=1e-5)
            assert torch.allclose(b.grad[m, 0], layer.bias.grad, atol=1e-5)
    # particle layout: obs [B, 1, D] broadcast against actions [B, N, d]
    acts = torch.randn(5, 7, ACT)
    out = ens(obs.unsqueeze(1), acts)
    assert out.shape == (3, 5, 7)
    assert torch.allclose(out, ens(obs.unsqueeze(1).expand(5, 7, OBS), acts), atol=1e-6)
    # gradients with respect to both inputs, against finite differences
    ens64 = ens.double()
    torch.autograd.gradcheck(lambda o, a: ens64(o, a), (obs.double().unsqueeze(1).requires_grad_(),
                                                         acts.double().requires_grad_()))


def test_polyak_blends_parameters():
    torch.manual_seed(0)
    a, b = EnsembleCritic(OBS, ACT, (8,), 2), EnsembleCritic(OBS, ACT, (8,), 2)
    expected = [0.9 * pa + 0.1 * pb for pa, pb in zip(a.parameters(), b.parameters())]
    a.polyak_(b, 0.1)
    for p, e in zip(a.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-7)


# --- TD target ----------------------------------------------------------------------------------------

def test_td_target_function_aggregations_by_hand():
    next_qs = torch.tensor([[[1.0, 4.0, -2.0]], [[3.0, 0.0, 2.0]]])          # [M=2, B=1, N=3]
    r, mask, gamma = torch.tensor([0.5]), torch.tensor([1.0]), 0.9
    cases = {("min", "mean"): (1 + 0 - 2) / 3, ("min", "max"): 1.0,
             ("mean", "mean"): (2 + 2 + 0) / 3, ("mean", "max"): 2.0}
    for (qa, pa), v in cases.items():
        y = td_target(next_qs, r, mask, gamma, qa, pa)
        assert y.item() == pytest.approx(0.5 + 0.9 * v)
    assert td_target(next_qs, r, torch.tensor([0.0]), gamma).item() == pytest.approx(0.5)


@pytest.mark.parametrize("q_agg", ["min", "mean"])
@pytest.mark.parametrize("particle_agg", ["mean", "max"])
def test_agent_target_with_fake_critic_and_known_particles(q_agg, particle_agg):
    agent = tiny_agent(q_agg=q_agg, particle_agg=particle_agg, train_steps=0, num_particles=3,
                       discount=0.9)
    agent.target_critic = FakeCritic()
    batch = random_batch(5)
    bank_np = np.random.default_rng(0).uniform(-1, 1, size=(5, 3, ACT))
    agent.set_bank(ParticleBank(torch.tensor(bank_np, dtype=torch.float32)))
    y, _ = agent.target(batch)
    s0 = batch["next_observations"][:, 0].numpy()[:, None]
    sums = bank_np.sum(-1)                                                   # [B, N]
    qs = np.stack([1 * sums + s0 - 0, 2 * sums + s0 - 1])                   # [M, B, N]
    per_particle = qs.min(0) if q_agg == "min" else qs.mean(0)
    v = per_particle.mean(1) if particle_agg == "mean" else per_particle.max(1)
    expected = batch["rewards"].numpy() + 0.9 * batch["masks"].numpy() * v
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_target_uses_transported_particles_from_online_critic():
    agent = tiny_agent(train_steps=2, num_particles=4, vgf_lr=0.1)
    batch = random_batch(6)
    start = torch.rand(6, 4, ACT, generator=torch.Generator().manual_seed(0)) - 0.5
    bank = ParticleBank(start)
    agent.set_bank(bank)
    _, info = agent.target(batch)
    # Adam moves each coordinate by ~lr per step: 2 steps of 0.1
    assert 0.1 < info["particle_shift"].item() <= 0.2 + 1e-5


# --- particle bank -------------------------------------------------------------------------------------

def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def test_bank_draws_match_fresh_sampling_in_distribution():
    torch.manual_seed(0)
    flow = FlowPolicy(OBS, ACT, hidden=(32, 32))
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(1.5)   # a skewed, state-dependent reference (with mass clipped at +-1)
    agent = VGFAgent.create(None, OBS, ACT, "cpu", reference=flow, num_particles=4, **TINY)
    state = torch.randn(1, OBS, generator=torch.Generator().manual_seed(5))
    rows = 1500
    next_obs = state.expand(rows, OBS).contiguous()
    bank = build_bank(flow, next_obs, per_state=12, steps=10,
                      generator=torch.Generator().manual_seed(1), chunk_rows=4096)
    assert bank.samples.shape == (rows, 12, ACT)
    agent.set_bank(bank)
    drawn = agent.reference_samples(next_obs, 4, torch.arange(rows))            # [rows, 4, d]
    agent.set_bank(None)
    fresh = agent.reference_samples(next_obs, 4)                                # Euler, no bank
    other = agent.reference_samples(next_obs + 0.3, 4)
    n = rows * 4
    crit = 1.95 * np.sqrt(2 / n)    # two-sample KS at the 0.1% level
    for dim in range(ACT):
        a, b = drawn[..., dim].flatten().numpy(), fresh[..., dim].flatten().numpy()
        assert ks_statistic(a, b) < crit, dim
        assert b.std() > 0.3
        # the test has power: samples at another state are told apart
        assert ks_statistic(a, other[..., dim].flatten().numpy()) > crit
        assert abs(a.mean() - b.mean()) < 4 * b.std() * np.sqrt(2 / n)
    # a draw is N DISTINCT slots of its row, each slot equally likely
    bank2 = ParticleBank(torch.arange(12.0).reshape(1, 12, 1).expand(3000, 12, 1).contiguous())
    got = bank2.draw(torch.arange(3000), 4, torch.Generator().manual_seed(2)).squeeze(-1).long()
    assert (got.sort(1).values.diff(dim=1) > 0).all()
    counts = torch.bincount(got.flatten(), minlength=12).float()
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_refresh_bank_rewrites_only_the_given_rows():
    torch.manual_seed(0)
    flow = FlowPolicy(OBS, ACT, hidden=(16,))
    next_obs = np.random.default_rng(0).normal(size=(10, OBS)).astype(np.float32)
    bank = build_bank(flow, next_obs, per_state=5, steps=3, generator=torch.Generator().manual_seed(0))
    before = bank.samples.clone()
    refresh_bank(bank, flow, next_obs, [2, 7], steps=3, generator=torch.Generator().manual_seed(9))
    changed = (bank.samples != before).any(-1).any(-1)
    assert changed.tolist() == [i in (2, 7) for i in range(10)]
    with pytest.raises(ValueError):
        bank.draw(torch.arange(3), 6)


def test_the_bank_renews_on_a_rolling_schedule_and_a_resume_rebuilds_it_exactly():
    batch = random_batch(10, seed=4)  # 10 states: slices of 3 rows -> 4 slices, a refresh every 2 updates
    knobs = dict(num_particles=3, flow_steps=2, train_steps=1, bank_size=4, bank_refresh_every=2,
                 bank_refresh_rows=3)
    agent = tiny_agent(**knobs)
    agent.prepare(batch["next_observations"])
    history = [agent.bank.samples.clone()]
    for _ in range(10):
        agent.update(batch)
        history.append(agent.bank.samples.clone())
    changed = [(b != a).any(-1).any(-1) for a, b in zip(history[:-1], history[1:])]
    rows = [set(torch.nonzero(c).flatten().tolist()) for c in changed]
    # updates 2, 4, 6, 8, 10 redraw slices 0, 1, 2, 3 (row 9 alone), then 0 again; odd updates nothing
    assert rows == [set(), {0, 1, 2}, set(), {3, 4, 5}, set(), {6, 7, 8}, set(), {9}, set(), {0, 1, 2}]
    assert not torch.equal(history[10][:3], history[2][:3])  # slice 0's second refresh is a new draw
    # a resumed agent (prepare, then load the state of step 7) holds exactly the live bank of step 7
    state = copy.deepcopy(agent.state_dict())
    state["step"] = 7
    twin = tiny_agent(**knobs)
    twin.prepare(batch["next_observations"])
    twin.load_state_dict(state)
    assert torch.equal(twin.bank.samples, history[7])
    never = tiny_agent(**{**knobs, "bank_refresh_every": 0})
    never.prepare(batch["next_observations"])
    before = never.bank.samples.clone()
    never.update(batch), never.update(batch)
    assert torch.equal(never.bank.samples, before) and torch.equal(before, history[0])


# --- update ---------------------------------------------------------------------------------------------

def test_update_lowers_td_loss_on_a_tiny_problem():
    agent = tiny_agent(critic_lr=1e-3, num_particles=4, flow_steps=2, train_steps=1)
    batch = random_batch(64, seed=3)
    agent.set_bank(build_bank(agent.reference, batch["next_observations"], per_state=4, steps=2,
                              generator=torch.Generator().manual_seed(0)))
    first = scalars(agent.update(batch))["critic_loss"]
    for _ in range(60):
        info = scalars(agent.update(batch))
    assert agent.step == 61
    assert info["critic_loss"] < 0.3 * first
    assert all(p.grad is None for p in agent.reference.parameters())
    assert all(not p.requires_grad for p in agent.target_critic.parameters())


def test_update_without_bank_and_polyak_order():
    agent = tiny_agent(num_particles=3, flow_steps=2, train_steps=1, polyak_before_step=True)
    batch = random_batch(8, indices=False)
    before = [p.detach().clone() for p in agent.critic.parameters()]
    target_before = [p.detach().clone() for p in agent.target_critic.parameters()]
    agent.update(batch)
    tau = agent.cfg.tau
    # reference order: the target blends the critic's PRE-step parameters
    for t0, c0, t1 in zip(target_before, before, agent.target_critic.parameters()):
        assert torch.allclose(t1, (1 - tau) * t0 + tau * c0, atol=1e-7)
    agent2 = tiny_agent(num_particles=3, flow_steps=2, train_steps=1, polyak_before_step=False)
    agent2.update(batch)
    for t0, c1, t1 in zip(target_before, agent2.critic.parameters(), agent2.target_critic.parameters()):
        assert torch.allclose(t1, (1 - tau) * t0 + tau * c1, atol=1e-7)


def test_losses_do_not_step_and_state_dict_round_trips():
    agent = tiny_agent(num_particles=2, flow_steps=2, train_steps=1)
    batch = to_batch({k: v.numpy() for k, v in random_batch(8).items()})
    assert batch["indices"].dtype == torch.int64
    params = [p.detach().clone() for p in agent.critic.parameters()]
    loss, info = agent.losses(batch)
    assert loss.requires_grad and {"critic_loss", "q_mean", "target_mean"} <= set(info)
    assert all(torch.equal(a, b) for a, b in zip(params, agent.critic.parameters()))
    agent.update(batch)
    clone = tiny_agent(num_particles=2, flow_steps=2, train_steps=1)
    clone.load_state_dict(agent.state_dict())
    obs = torch.randn(3, OBS)
    assert torch.equal(agent.act(obs), clone.act(obs))
    assert clone.step == 1


# --- acting -----------------------------------------------------------------------------------------

def test_act_shapes_and_argmax_selection():
    agent = tiny_agent(num_particles=8, test_steps=0)
    obs = torch.randn(5, OBS)
    assert agent.act(obs).shape == (5, ACT)
    assert agent.act(obs[0]).shape == (ACT,)
    assert agent.act(obs, steps=2).abs().max() <= 1
    agent.critic = FakeCritic()           # Q increases with sum(a): the best particle has max sum
    particles = agent.reference_samples(obs, 8, generator=torch.Generator().manual_seed(4))
    chosen = agent.act(obs, generator=torch.Generator().manual_seed(4))
    best = particles[torch.arange(5), particles.sum(-1).argmax(1)]
    assert torch.equal(chosen, best)
    # N = 1, L = 0 is the plain reference policy
    plain = agent.act(obs, num_particles=1, steps=0, generator=torch.Generator().manual_seed(7))
    ref = agent.reference_samples(obs, 1, generator=torch.Generator().manual_seed(7))[:, 0]
    assert torch.equal(plain, ref)
    # transport at test time moves the candidates uphill before selection
    moved = agent.act(obs, steps=3, generator=torch.Generator().manual_seed(4))
    assert (moved.sum(-1) >= chosen.sum(-1) - 1e-6).all()
    for how in ("softmax", "random"):
        assert agent.act(obs, select=how).shape == (5, ACT)
    # callers may act under inference_mode / no_grad; the transport still gets its gradients
    with torch.inference_mode():
        inf = agent.act(torch.randn(3, OBS), steps=2)
    with torch.no_grad():
        ng = agent.act(torch.randn(3, OBS), steps=2)
    assert inf.shape == ng.shape == (3, ACT)


def test_config_validation_and_registry():
    module = load("vgf")
    assert module.Agent is VGFAgent and module.Config is VGFConfig
    cfg = config_from(VGFConfig, {"critic_hidden": [64, 64], "alpha": 0.2})
    assert cfg.critic_hidden == (64, 64) and cfg.alpha == 0.2
    with pytest.raises(ValueError, match="unknown"):
        config_from(VGFConfig, {"alhpa": 0.2})
    with pytest.raises(ValueError, match="q_agg"):
        tiny_agent(q_agg="max")
    with pytest.raises(ValueError):
        load("nope")


@pytest.mark.filterwarnings("ignore:amp=bf16")
def test_bf16_autocast_option_runs_and_stays_close_to_fp32():
    fp32, bf16 = tiny_agent(num_particles=4, flow_steps=3), tiny_agent(num_particles=4, flow_steps=3,
                                                                       amp="bf16")
    obs = torch.randn(6, OBS, generator=torch.Generator().manual_seed(0))
    start = torch.rand(6, 4, ACT, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    moved32, moved16 = fp32.transport(obs, start, 2), bf16.transport(obs, start, 2)
    assert moved16.dtype == torch.float32
    assert (moved16 - moved32).abs().max() <= 0.2 + 1e-6   # 2 Adam steps of lr 0.05, sign flips
    assert (moved16 - moved32).abs().mean() < 0.01        # ... are rare
    info = bf16.update(random_batch(8))
    assert torch.isfinite(info["critic_loss"])


def test_budgets_are_parsed_in_one_place():
    from vgfcli.budgets import RULES, parse_budgets

    assert set(RULES) == {"auto", "auto_std", "auto_gain"}
    assert parse_budgets("0, 1,,auto") == parse_budgets([0, "1", "auto"]) == [0, 1, "auto"]
    for bad in ("", "1,-2", "fast", [True]):
        with pytest.raises(ValueError):
            parse_budgets(bad)
