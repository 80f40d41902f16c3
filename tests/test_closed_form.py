"""The closed-form transport (vgfcli.nn.closed_form) against the autograd one (vgfcli.nn.particles).

The reference code's values are checked in test_reference_transport.py (the direction) and here by
transitivity: the autograd transport matches them, and the closed form matches it to float64 rounding
for every critic layout the project builds.
"""

import itertools
import os

import pytest
import torch

from vgfcli.methods.vgf import VGFAgent
from vgfcli.nn import closed_form, particles
from vgfcli.nn.networks import EnsembleCritic

LAYOUTS = list(itertools.product(["relu", "gelu", "swish"], ["pre", "post", None]))


def perturbed_critic(activation, norm, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    critic = EnsembleCritic(7, 3, (16, 16, 16), 2, activation, norm).to(dtype)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return critic


def inputs(b=4, n=6, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 7, generator=g, dtype=dtype), torch.rand(b, n, 3, generator=g, dtype=dtype) * 2 - 1


@pytest.mark.parametrize("activation,norm", LAYOUTS)
@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_action_gradient_and_q_equal_autograd(activation, norm, q_agg):
    critic = perturbed_critic(activation, norm)
    obs, x = inputs()
    g_ref, q_ref = particles.value_grad(critic, obs.unsqueeze(1), x, q_agg)
    tensors, shape = closed_form.critic_tensors(critic), closed_form.CriticShape.of(critic)
    q, g = closed_form.q_and_action_grad(tensors, shape, closed_form.project_obs(tensors, shape, obs), x, q_agg)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(q, q_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(closed_form.q_values(tensors, shape, obs, x), critic(obs.unsqueeze(1), x).detach(),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [5, 6])  # odd N^2 (one median entry) and even (two)
@pytest.mark.parametrize("bandwidth,bandwidth_grad", [(None, True), (None, False), (0.3, True)])
@pytest.mark.parametrize("rule,layout,q_agg,clip", [("adam", ("relu", "pre"), "mean", 1.0),
                                                    ("plain", ("gelu", "post"), "min", None),
                                                    ("adam", ("swish", None), "min", 1.0)])
def test_transport_equals_autograd_transport(n, bandwidth, bandwidth_grad, rule, layout, q_agg, clip):
    critic = perturbed_critic(*layout)
    obs, x = inputs(n=n)
    opts = dict(alpha=0.5, lr=0.05, rule=rule, bandwidth=bandwidth, bandwidth_grad=bandwidth_grad, q_agg=q_agg,
                clip=clip)
    ref = particles.transport(critic, obs.unsqueeze(1), x, 3, **opts)
    got = closed_form.transport(closed_form.critic_tensors(critic), closed_form.CriticShape.of(critic), obs, x,
                                3, **opts)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_median_pull_matches_autograd_of_the_kernel_sum():
    # the bandwidth term alone: autograd's gradient of sum k minus the direct (textbook) term
    obs, x = inputs(b=3, n=5, seed=7)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        d2 = (xr.unsqueeze(-2) - x.unsqueeze(-3)).square().sum(-1)
        h = particles.median_bandwidth(d2)
        total = torch.exp(-(1.0 / (1e-6 + 2.0 * h))[..., None, None] * d2).sum()
        (full,) = torch.autograd.grad(total, xr)
        d2c = particles.pairwise_sqdist(x)
        gamma = (1.0 / (1e-6 + 2.0 * h.detach()))[..., None, None]
        k = torch.exp(-gamma * d2c)
    direct = -2.0 * gamma * (x * k.sum(-1, keepdim=True) - k @ x)
    _, picks = particles.median_entries(d2c)
    pull = closed_form.repulsion_median_grad(x, k, d2c, h.detach(), picks)
    torch.testing.assert_close(direct + pull, full, atol=1e-12, rtol=0)
    assert pull.abs().sum() > 1e-6  # the pull is there, and on exactly one particle per state
    assert ((pull.abs().sum(-1) > 0).sum(-1) == 1).all()


def test_agent_paths_agree_in_float32():
    # the agent's two switches, same weights and inputs: update targets and acting
    torch.manual_seed(0)
    kw = dict(critic_hidden=(32, 32), actor_hidden=(32, 32), num_particles=4, flow_steps=3, bank_size=0, amp="off")
    a = VGFAgent.create(None, 7, 3, closed_form=True, **kw)
    b = VGFAgent.create(None, 7, 3, closed_form=False, **kw)
    b.critic.load_state_dict(a.critic.state_dict())
    b.reference.load_state_dict(a.reference.state_dict())
    obs, x = inputs(dtype=torch.float32)
    torch.testing.assert_close(a.transport(obs, x, 3), b.transport(obs, x, 3), atol=1e-5, rtol=0)
    acts_a = a.act(obs, steps=2, generator=torch.Generator().manual_seed(3))
    acts_b = b.act(obs, steps=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(acts_a, acts_b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", [("relu", "pre"), ("gelu", "post"), ("swish", None)])
def test_bf16_matmuls_keep_float32_results_close(layout):
    critic = perturbed_critic(*layout, dtype=torch.float32)
    obs, x = inputs(dtype=torch.float32)
    shape = closed_form.CriticShape.of(critic)
    full = closed_form.transport(closed_form.critic_tensors(critic), shape, obs, x, 2, alpha=0.5, lr=0.05)
    half = closed_form.transport(closed_form.critic_tensors(critic, torch.bfloat16), shape, obs, x, 2,
                                 alpha=0.5, lr=0.05)
    assert half.dtype == torch.float32
    assert (half - full).abs().mean() < 0.01


def test_observations_must_be_one_row_per_state():
    critic = perturbed_critic("relu", "pre")
    obs, x = inputs(b=2)  # as many states as members: a [B, 1, D] input would silently mis-batch
    with pytest.raises(ValueError, match="obs_dim"):
        closed_form.q_values(closed_form.critic_tensors(critic), closed_form.CriticShape.of(critic), obs[:, None], x)


FALLBACK_SCRIPT = """
import warnings, torch
import torch._inductor.config as inductor_config
from vgfcli.nn.compiled import Compiled
inductor_config.cpp.cxx = ("/nonexistent/g++",)   # a machine without a C++ compiler
fn = Compiled(lambda a, b: torch.relu(a @ b) + 1, enabled=True, name="f")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = fn(torch.ones(2, 3), torch.ones(3, 2))
print([str(w.message) for w in caught if "torch.compile of f failed" in str(w.message)])
print(torch.equal(out, torch.full((2, 2), 4.0)), fn.active)
"""


def test_compiled_falls_back_to_eager_only_when_compilation_fails():
    import subprocess
    import sys

    from vgfcli.nn.compiled import Compiled

    # In a child process: inductor remembers a compiler it found unusable for the rest of a process.
    out = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, check=True)
    warned, result = out.stdout.strip().splitlines()[-2:]
    assert "running it eagerly" in warned          # one warning naming the function
    assert result == "True False"                  # the eager numbers, and compilation is off from then on
    # a genuine error is not a compile failure: it propagates and compilation stays on
    fn = Compiled(lambda a, b: a @ b, enabled=False)
    fn.compiled = lambda a, b: a @ b
    with pytest.raises(RuntimeError):
        fn(torch.ones(2, 3), torch.ones(4, 2))
    assert fn.active


def test_amp_auto_follows_the_hardware(monkeypatch):
    from vgfcli.methods import vgf
    from vgfcli.nn import precision

    for has_bf16, expected in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda has=has_bf16: has)
        monkeypatch.setattr(vgf, "cpu_has_bf16", lambda has=has_bf16: has)
        assert precision.resolve_amp("auto", torch.device("cpu")) == expected
        assert precision.resolve_amp("off", torch.device("cpu")) == "off"
        agent = VGFAgent.create(None, 7, 3, critic_hidden=(8,), actor_hidden=(8,), num_particles=2, bank_size=0,
                                amp="auto")
        assert agent.amp == expected


def test_bf16_weight_copies_are_made_once_and_renewed_when_weights_change():
    torch.manual_seed(0)
    kw = dict(critic_hidden=(16, 16), actor_hidden=(16, 16), num_particles=4, flow_steps=2, bank_size=0, amp="bf16")
    agent = VGFAgent.create(None, 7, 3, **kw)
    obs, _ = inputs(dtype=torch.float32)
    flow, critic = agent._sampling_flow(), agent._online_tensors()
    assert agent._sampling_flow() is flow and agent._online_tensors() is critic   # cached while acting
    assert flow.inner.net.layers[0].weight.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    batch = {"observations": torch.randn(8, 7, generator=g), "actions": torch.rand(8, 3, generator=g) * 2 - 1,
             "rewards": torch.randn(8, generator=g), "masks": torch.ones(8),
             "next_observations": torch.randn(8, 7, generator=g)}
    agent.update(batch)
    assert agent._sampling_flow() is flow          # the reference is frozen: same copy
    renewed = agent._online_tensors()
    assert renewed is not critic                   # the critic moved: a fresh cast
    assert torch.equal(renewed[0][1], agent.critic.weights[1].detach().to(torch.bfloat16))
    other = VGFAgent.create(None, 7, 3, seed=5, **kw)
    with torch.no_grad():
        for p in other.reference.parameters():
            p.add_(1.0)
    agent.load_state_dict(other.state_dict())
    # a load replaces the reference's weights: the same copy, refreshed in place (compiled code that takes
    # it as an argument stays valid, as when the flow learns online)
    assert agent._sampling_flow() is flow
    acting = agent._online_tensors()
    agent.critic.load_state_dict(other.critic.state_dict())   # a write straight to the module counts too
    assert agent._online_tensors() is not acting
    torch.testing.assert_close(agent._sampling_flow().inner.net.layers[0].weight.float(),
                               other.reference.net.layers[0].weight.to(torch.bfloat16).float())


@pytest.mark.parametrize("embedding", ["raw", "sinusoidal"])
def test_sampling_with_the_observation_share_hoisted_is_exact(embedding):
    from vgfcli.nn.flow import FlowPolicy, euler_sample
    from vgfcli.nn.networks import CastCopy

    torch.manual_seed(0)
    flow = FlowPolicy(7, 3, (16, 16), time_embedding=embedding)
    obs, noise = torch.randn(4, 1, 7), torch.randn(4, 5, 3)
    with torch.no_grad():
        plain = euler_sample(lambda o, x, t: flow(o, x, t), obs, noise, 4)   # no `conditioned`: per step
        assert torch.equal(euler_sample(flow, obs, noise, 4), plain)
        cast = CastCopy(flow, torch.bfloat16)
        per_step = euler_sample(lambda o, x, t: cast(o, x, t), obs, noise, 4)
        assert torch.equal(euler_sample(cast, obs, noise, 4), per_step)


def test_compiled_update_and_acting_match_eager():
    # real torch.compile (inductor, C++): the compiled agent trains and acts as the eager one does
    torch._dynamo.reset()
    torch.manual_seed(0)
    kw = dict(critic_hidden=(32, 32), actor_hidden=(32, 32), num_particles=4, flow_steps=3, bank_size=0, amp="off")
    fast, slow = VGFAgent.create(None, 7, 3, compile=True, **kw), VGFAgent.create(None, 7, 3, compile=False, **kw)
    slow.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(0)
    batch = {"observations": torch.randn(16, 7, generator=g), "actions": torch.rand(16, 3, generator=g) * 2 - 1,
             "rewards": torch.randn(16, generator=g), "masks": torch.ones(16),
             "next_observations": torch.randn(16, 7, generator=g)}
    for _ in range(2):
        a, b = fast.update(batch), slow.update(batch)
        torch.testing.assert_close(a["critic_loss"], b["critic_loss"], rtol=1e-5, atol=1e-5)
    obs = torch.randn(5, 7, generator=g)
    with torch.inference_mode():
        acts = fast.act(obs, steps=2, generator=torch.Generator().manual_seed(1))
        ref = slow.act(obs, steps=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(acts, ref, rtol=1e-5, atol=1e-5)
    assert all(c.active for c in fast._compiled.values())          # nothing fell back to eager
    assert fast.compile_seconds > 0 and slow.compile_seconds == 0  # the one-off cost is counted


def test_stage_switches_reach_the_method():
    from vgfcli.agents import method_config
    from vgfcli.config import compose

    policy = {"hidden": [8], "flow_steps": 2}
    _, on = method_config(compose("train", ["method=vgf", "critic.compile=true"]), policy)
    _, off = method_config(compose("train", ["method=vgf", "critic.compile=false"]), policy)
    assert on.compile is True and off.compile is False
    _, bc = method_config(compose("train", ["method=bc", "critic.compile=true"]), policy)  # no such knob
    assert not hasattr(bc, "compile")


def test_inductor_cache_is_kept_apart_per_cpu_isa(monkeypatch, tmp_path):
    # inductor's cache does not key kernels on the vector ISA: AVX2 kernels rebuilt for AVX-512 corrupt
    # the heap, so each ISA gets its own directory, unless the user chose one
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from vgfcli.nn.compiled import Compiled, isolate_inductor_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # as importing torch._dynamo leaves it
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    Compiled(lambda x: x, enabled=True)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(os.path.abspath(default_cache_dir()), "avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert isolate_inductor_cache() == str(tmp_path) and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
