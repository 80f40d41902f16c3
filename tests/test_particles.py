"""VGF particle transport against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from vgfcli.nn.networks import EnsembleCritic
from vgfcli.nn.particles import median_bandwidth, pairwise_sqdist, svgd_direction, transport, value_grad

# Two members, each a concave quadratic: Q_m(s, a) = -w_m / 2 * ||a - c_m||^2 (s ignored).
W = np.array([1.0, 3.0])
C = np.array([[0.2, -0.1], [0.4, 0.3]])


def quadratic_q(obs, actions):
    w = torch.tensor(W, dtype=actions.dtype)[:, None, None]
    c = torch.tensor(C, dtype=actions.dtype)[:, None, None, :]
    return -0.5 * w * (actions.unsqueeze(0) - c).square().sum(-1)          # [M, B, N]


def hand_phi(a, alpha):
    """phi for N = 2 particles a [2, d] of ONE state, by hand."""
    # grad_a mean_m Q_m = -mean_m w_m (a - c_m)
    score = -np.mean([W[m] * (a - C[m]) for m in range(2)], axis=0)      # [2, d]
    dist2 = float(np.sum((a[0] - a[1]) ** 2))
    # the N^2 = 4 squared distances are {0, 0, D, D}: median (0 + D) / 2
    h = (dist2 / 2) / (2 * math.log(3))
    gamma = 1 / (1e-6 + 2 * h)
    k01 = math.exp(-gamma * dist2)
    phi = np.zeros_like(a)
    for i, j in ((0, 1), (1, 0)):
        drive = (1.0 * score[i] + k01 * score[j]) / alpha
        # grad_{a_j} k(a_j, a_i) = 2 gamma k (a_i - a_j); the j = i term is zero
        repulse = 2 * gamma * k01 * (a[i] - a[j])
        phi[i] = (drive + repulse) / 2
    return phi


A0 = np.array([[0.1, 0.5], [-0.3, 0.2]])


def test_direction_matches_hand_computation_for_two_particles():
    alpha = 0.5
    x = torch.tensor(A0[None], dtype=torch.float64)
    score, q = value_grad(quadratic_q, None, x, "mean")
    expected_score = -np.mean([W[m] * (A0 - C[m]) for m in range(2)], axis=0)
    np.testing.assert_allclose(score[0].numpy(), expected_score, rtol=1e-12)
    phi = svgd_direction(x, score, alpha, bandwidth_grad=False)  # hand_phi: textbook SVGD, h constant
    np.testing.assert_allclose(phi[0].numpy(), hand_phi(A0, alpha), rtol=1e-10)


def test_min_aggregation_uses_the_lower_member():
    x = torch.tensor(A0[None], dtype=torch.float64)
    score, q = value_grad(quadratic_q, None, x, "min")
    qs = np.stack([-0.5 * W[m] * np.sum((A0 - C[m]) ** 2, -1) for m in range(2)])
    lower = qs.argmin(0)
    expected = np.stack([-W[lower[i]] * (A0[i] - C[lower[i]]) for i in range(2)])
    np.testing.assert_allclose(score[0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(q[0].numpy(), qs.min(0), rtol=1e-12)


def test_plain_step_is_a_plus_eps_phi():
    alpha, eps = 0.5, 0.1
    x = torch.tensor(A0[None], dtype=torch.float64)
    out = transport(quadratic_q, torch.zeros(1, 1), x, 1, alpha=alpha, lr=eps, rule="plain",
                    bandwidth_grad=False)
    np.testing.assert_allclose(out[0].numpy(), A0 + eps * hand_phi(A0, alpha), rtol=1e-10)
    # two plain steps: the second phi is taken at the moved particles
    a1 = A0 + eps * hand_phi(A0, alpha)
    out2 = transport(quadratic_q, torch.zeros(1, 1), x, 2, alpha=alpha, lr=eps, rule="plain",
                     bandwidth_grad=False)
    np.testing.assert_allclose(out2[0].numpy(), a1 + eps * hand_phi(a1, alpha), rtol=1e-10)


def test_adam_first_step_moves_every_coordinate_by_lr_along_phi():
    alpha, lr = 0.5, 0.01
    x = torch.tensor(A0[None], dtype=torch.float64)
    out = transport(quadratic_q, torch.zeros(1, 1), x, 1, alpha=alpha, lr=lr, rule="adam",
                    bandwidth_grad=False)
    phi = hand_phi(A0, alpha)
    # Adam's first step: m_hat = g, v_hat = g^2, so the move is lr * phi / (|phi| + 1e-8)
    np.testing.assert_allclose(out[0].numpy(), A0 + lr * phi / (np.abs(phi) + 1e-8), rtol=1e-10)
    np.testing.assert_allclose(np.abs(out[0].numpy() - A0), lr, rtol=1e-5)


def test_adam_two_steps_match_optax_arithmetic():
    alpha, lr, b1, b2, e = 0.5, 0.05, 0.9, 0.999, 1e-8
    x = torch.tensor(A0[None], dtype=torch.float64)
    out = transport(quadratic_q, torch.zeros(1, 1), x, 2, alpha=alpha, lr=lr, rule="adam", clip=None,
                    bandwidth_grad=False)
    a, m, v = A0.copy(), np.zeros_like(A0), np.zeros_like(A0)
    for t in (1, 2):
        g = -hand_phi(a, alpha)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        a = a - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + e)
    np.testing.assert_allclose(out[0].numpy(), a, rtol=1e-9)


def test_adam_step_size_is_about_lr_for_a_network_critic():
    torch.manual_seed(0)
    critic = EnsembleCritic(6, 3, hidden=(32, 32), members=2)
    x = torch.rand(8, 5, 3) * 1.6 - 0.8
    out = transport(critic, torch.randn(8, 6), x, 1, alpha=0.3, lr=0.02)
    moved = (out - x).abs()
    assert torch.allclose(moved, torch.full_like(moved, 0.02), rtol=1e-3)


def test_particles_are_clipped_to_the_action_box_after_every_step():
    def pull_out(obs, actions):       # Q increases without bound towards +inf in every coordinate
        return 10.0 * actions.sum(-1).unsqueeze(0)

    x = torch.full((2, 3, 2), 0.95) + torch.tensor([0.0, 0.01, 0.02])[None, :, None]
    out = transport(pull_out, torch.zeros(2, 1), x, 3, alpha=0.1, lr=0.2, rule="adam")
    assert out.max() <= 1.0 and out.min() >= -1.0
    assert torch.equal(out, torch.ones_like(out))
    plain = transport(pull_out, torch.zeros(2, 1), -x, 2, alpha=0.1, lr=5.0, rule="plain")
    assert plain.min() >= -1.0 and plain.max() <= 1.0


def test_no_gradient_reaches_critic_weights():
    torch.manual_seed(0)
    critic = EnsembleCritic(4, 2, hidden=(16, 16), members=2)
    obs = torch.randn(3, 4, requires_grad=True)
    out = transport(critic, obs, torch.rand(3, 4, 2) - 0.5, 2, alpha=1.0, lr=0.05)
    assert not out.requires_grad
    assert all(p.grad is None for p in critic.parameters())
    assert obs.grad is None


def test_median_bandwidth_and_repulsion_against_autograd():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 5, 3, generator=gen, dtype=torch.float64)
    d2 = pairwise_sqdist(x)
    h = median_bandwidth(d2)
    expected_h = [np.median(d2[b].numpy()) / (2 * math.log(6)) for b in range(4)]
    np.testing.assert_allclose(h.numpy(), expected_h, rtol=1e-12)
    # repulsion = -grad_x sum_ij k(x_i, stopgrad(x_j)) with the kernel (and h) held constant
    gamma = (1 / (1e-6 + 2 * h))[:, None, None]
    xr = x.clone().requires_grad_(True)
    k = torch.exp(-gamma * (xr.unsqueeze(2) - x.unsqueeze(1)).square().sum(-1))
    (grad_k,) = torch.autograd.grad(k.sum(), xr)
    zero_score = torch.zeros_like(x)
    phi = svgd_direction(x, zero_score, alpha=1.0, bandwidth_grad=False)
    np.testing.assert_allclose(phi.numpy(), (-grad_k / 5).numpy(), rtol=1e-9, atol=1e-12)


def test_batched_transport_equals_per_state_transport():
    torch.manual_seed(1)
    critic = EnsembleCritic(5, 2, hidden=(16,), members=2).double()
    obs = torch.randn(6, 5, dtype=torch.float64)
    x = torch.rand(6, 4, 2, dtype=torch.float64) - 0.5
    batched = transport(critic, obs, x, 3, alpha=0.5, lr=0.05)
    for b in range(6):
        single = transport(critic, obs[b:b + 1], x[b:b + 1], 3, alpha=0.5, lr=0.05)
        assert torch.allclose(batched[b], single[0], atol=1e-12)


@pytest.mark.parametrize("rule", ["adam", "plain"])
def test_transport_raises_the_value_of_particles(rule):
    x = torch.rand(16, 6, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    before = quadratic_q(None, x).mean(0).mean()
    out = transport(quadratic_q, torch.zeros(16, 1), x, 5, alpha=0.05, lr=0.05, rule=rule)
    assert quadratic_q(None, out).mean(0).mean() > before


def test_bandwidth_gradient_default_adds_the_reference_codes_median_pull():
    # The reference code differentiates h = median(d2) / (2 log(N + 1)) too. For two particles the
    # N^2 = 4 entries (flat order d2_00, d2_01, d2_10, d2_11) sort STABLY as {0 (00), 0 (11), D (01),
    # D (10)}: the median (0 + D) / 2 takes the diagonal zero d2_11 (no gradient) and d2_01, the first
    # of the tied pair, so particle 0 (the row of that entry) alone gets an extra pull towards
    # particle 1: -(1/N) dsumK/dh * dh/dd2 * 2 (a_0 - a_1).
    x = torch.tensor(A0[None], dtype=torch.float64)
    zero = torch.zeros_like(x)
    plain = svgd_direction(x, zero, 1.0, bandwidth_grad=False)[0].numpy()
    with_h = svgd_direction(x, zero, 1.0)[0].numpy()
    extra = with_h - plain
    moved = np.abs(extra).sum(-1) > 1e-12
    assert moved.tolist() == [True, False]
    r, c = 0, 1
    dist2 = float(np.sum((A0[0] - A0[1]) ** 2))
    h = (dist2 / 2) / (2 * math.log(3))
    denom = 1e-6 + 2 * h
    k01 = math.exp(-dist2 / denom)
    dsum_dh = 2 * k01 * dist2 * 2 / denom ** 2          # sum K = 2 + 2 exp(-D / (1e-6 + 2h))
    dh_dd2 = 0.5 / (2 * math.log(3))
    expected = -(1 / 2) * dsum_dh * dh_dd2 * 2 * (A0[r] - A0[c])
    np.testing.assert_allclose(extra[r], expected, rtol=1e-9)
    # it points from a_r towards a_c (shrinks the bandwidth)
    assert np.dot(extra[r], A0[c] - A0[r]) > 0
