"""Flow-matching primitives: Euler sampling, the flow-matching loss, and FlowPolicy training."""

import math

import pytest
import torch

from vgfcli.nn.flow import FlowPolicy, euler_sample, flow_matching_loss, linear_path


def test_linear_path_endpoints_and_velocity():
    x0, x1 = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -2.0]])
    xt, v = linear_path(x0, x1, torch.tensor([[0.25]]))
    assert torch.allclose(xt, torch.tensor([[0.25, 1.0]]))
    assert torch.allclose(v, x1 - x0)


def test_euler_constant_field_is_exact_for_any_steps():
    noise = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    c = torch.tensor([0.5, -0.25])
    for k in (1, 3, 10):
        out = euler_sample(lambda s, x, t: c.expand_as(x), None, noise, k, clip=None)
        assert torch.allclose(out, noise + c, atol=1e-6)


def test_euler_on_straight_conditional_field_lands_on_target():
    # v(x, t) = (x1 - x) / (1 - t) is the conditional OT field towards x1; along the straight path it
    # equals x1 - x0, so Euler stays on the path and ends exactly at x1 for every K.
    x1 = torch.tensor([[0.7, -0.4, 0.1]])
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    for k in (1, 2, 10):
        out = euler_sample(lambda s, x, t: (x1 - x) / (1 - t), None, noise, k, clip=None)
        assert torch.allclose(out, x1.expand(5, 3), atol=1e-5)


def test_euler_error_shrinks_like_one_over_k_on_nonconstant_field():
    # dx/dt = x: exact endpoint x0 * e; Euler gives x0 * (1 + 1/K)^K, error ~ x0 e / (2K).
    x0 = torch.tensor([[1.0]], dtype=torch.float64)
    errors = {}
    for k in (5, 10, 20, 40):
        out = euler_sample(lambda s, x, t: x, None, x0, k, clip=None)
        assert out.item() == pytest.approx((1 + 1 / k) ** k, rel=1e-12)
        errors[k] = abs(out.item() - math.e)
    for k in (5, 10, 20):
        assert errors[2 * k] < errors[k]
        assert errors[k] / errors[2 * k] == pytest.approx(2.0, rel=0.1)  # first order
    # dx/dt = t: endpoint x0 + 1/2; Euler's left sums give x0 + (K - 1) / (2K).
    for k in (1, 4, 10):
        out = euler_sample(lambda s, x, t: t.expand_as(x), None, x0, k, clip=None)
        assert out.item() == pytest.approx(1.0 + (k - 1) / (2 * k), rel=1e-12)


def test_euler_times_are_k_over_k_and_result_is_clipped():
    seen = []

    def field(s, x, t):
        seen.append(float(t.flatten()[0]))
        return torch.full_like(x, 3.0)

    out = euler_sample(field, None, torch.zeros(2, 2), 4)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert torch.equal(out, torch.ones(2, 2))  # 3.0 clipped to the action box


def test_flow_matching_loss_is_zero_for_the_exact_field():
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(64, 3, generator=gen) * 2 - 1   # the action is a function of the state:
    actions = obs.clone()                              # x1 = s, so v(s, x, t) = (s - x) / (1 - t)
    loss = flow_matching_loss(lambda s, x, t: (s - x) / (1 - t), obs, actions, gen)
    assert loss.item() < 1e-8
    wrong = flow_matching_loss(lambda s, x, t: torch.zeros_like(x), obs, actions, gen)
    assert wrong.item() > 0.5


def test_flow_loss_gradients_reach_every_parameter():
    torch.manual_seed(0)
    policy = FlowPolicy(4, 2, hidden=(16, 16))
    loss = policy.loss(torch.randn(32, 4), torch.rand(32, 2) * 2 - 1)
    loss.backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_flow_policy_broadcasts_observation_over_particles():
    torch.manual_seed(0)
    policy = FlowPolicy(3, 2, hidden=(8,))
    obs, x, t = torch.randn(4, 3), torch.randn(4, 5, 2), torch.rand(4, 5, 1)
    out = policy(obs.unsqueeze(1), x, t)
    ref = policy(obs.unsqueeze(1).expand(4, 5, 3), x, t)
    cat = policy.net.layers[0](torch.cat([obs.unsqueeze(1).expand(4, 5, 3), x, t], -1))
    assert out.shape == (4, 5, 2)
    assert torch.allclose(out, ref, atol=1e-6)
    # the split first layer is the Dense layer on concat(s, x, t)
    first = obs.unsqueeze(1) @ policy.net.layers[0].weight[:, :3].t() \
        + x @ policy.net.layers[0].weight[:, 3:5].t() + t @ policy.net.layers[0].weight[:, 5:].t() \
        + policy.net.layers[0].bias
    assert torch.allclose(first, cat, atol=1e-6)
    samples = policy.sample(obs, num=7, steps=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 7, 2) and samples.abs().max() <= 1


def test_flow_policy_learns_a_bimodal_1d_distribution():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    policy = FlowPolicy(1, 1, hidden=(64, 64), activation="gelu")
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)

    def batch(n=256):
        sign = torch.randint(0, 2, (n, 1), generator=gen) * 2 - 1
        return torch.zeros(n, 1), (0.6 * sign + 0.05 * torch.randn(n, 1, generator=gen)).clamp(-1, 1)

    with torch.no_grad():
        first = sum(policy.loss(*batch(), gen).item() for _ in range(5)) / 5
    for _ in range(300):
        loss = policy.loss(*batch(), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = sum(policy.loss(*batch(), gen).item() for _ in range(5)) / 5
    assert last < 0.7 * first
    samples = policy.sample(torch.zeros(2000, 1), steps=10, generator=gen).flatten()
    near_modes = ((samples - 0.6).abs() < 0.25) | ((samples + 0.6).abs() < 0.25)
    assert near_modes.float().mean() > 0.8
    assert 0.3 < (samples > 0).float().mean() < 0.7   # both modes kept


def test_sinusoidal_time_embedding_by_hand():
    from vgfcli.nn.flow import sinusoidal_embedding

    t = torch.tensor([[0.0], [0.25]])
    emb = sinusoidal_embedding(t, size=4, max_period=100.0)
    # half = 2: frequencies 1 and 100^(-1/2) = 0.1; arguments t * 100 * f
    args = torch.tensor([[0.0, 0.0], [25.0, 2.5]])
    assert torch.allclose(emb, torch.cat([args.cos(), args.sin()], dim=1))
    flow = FlowPolicy(3, 2, (8,), time_embedding="sinusoidal")
    assert flow(torch.zeros(5, 3), torch.zeros(5, 2), torch.zeros(5, 1)).shape == (5, 2)
    assert math.isfinite(flow.loss(torch.zeros(5, 3), torch.zeros(5, 2)).item())


def test_grid_time_sampling_draws_euler_grid_points():
    seen = []

    def velocity(obs, x, t):
        seen.append(t)
        return torch.zeros_like(x)

    flow_matching_loss(velocity, torch.zeros(400, 1), torch.zeros(400, 2), torch.Generator().manual_seed(0), t_grid=4)
    t = seen[0].squeeze(1)
    assert set((t * 4).round().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}
    assert torch.allclose(t * 4, (t * 4).round())
