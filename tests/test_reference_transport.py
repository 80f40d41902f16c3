"""VGF's default transport against the official code's, on a fixed case with tied distances.

``tests/data/vgf_reference_transport.json`` holds values computed ONCE with the reference code
(github ryanxhr/vgf, agents/vgf.py ``SVGD_VGF`` and ``rbf_kernel``, unmodified, jax 0.10.2 on CPU in
float64) in a scratch venv outside this repo; its ``command`` field says how. The squared distances
are symmetric, so the median entries come in exactly tied pairs (i, j) / (j, i); the reference takes
the median with jnp.median's STABLE sort and differentiates through it, so the pull of the median goes
to one particular particle of each pair. The test fails if the default stops matching that transport.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vgfcli.methods.vgf import VGFConfig
from vgfcli.nn import closed_form
from vgfcli.nn.particles import pairwise_sqdist, svgd_direction, transport, value_grad

REF = json.loads((Path(__file__).parent / "data" / "vgf_reference_transport.json").read_text())


def analytic_q(obs, a):
    """The fixed case's two-member critic, ``[2, B, N]``."""
    q0 = -(a - 0.5 * obs).square().sum(-1) + (0.3 * torch.sin(3.0 * a)).sum(-1)
    q1 = -2.0 * (a + 0.2 * obs).square().sum(-1) + (0.1 * a * obs).sum(-1)
    return torch.stack([q0, q1])


def case(name, dtype=torch.float64):
    c = REF["cases"][name]
    return (torch.tensor(c["obs"], dtype=dtype), torch.tensor(c["x0"], dtype=dtype), np.array(c["phi"]),
            np.array(c["particles"]), c["median_pick_flat"])


@pytest.mark.parametrize("name", ["A", "B"])  # N = 5 (odd N^2: one median entry), N = 10 (two)
def test_default_transport_reproduces_the_reference_code(name):
    obs, x0, phi_ref, particles_ref, _ = case(name)
    cfg = VGFConfig()  # the defaults users get: bandwidth_grad, stable median, Adam steps
    score, _ = value_grad(analytic_q, obs[:, None], x0, cfg.grad_q_agg)
    phi = svgd_direction(x0, score, REF["alpha"], cfg.bandwidth, cfg.bandwidth_grad)
    np.testing.assert_allclose(phi.numpy(), phi_ref, atol=1e-12)
    # the closed-form direction (no autograd; what the agent runs with closed_form=True) too
    phi_closed = closed_form.svgd_direction(x0, score, REF["alpha"], cfg.bandwidth, cfg.bandwidth_grad)
    np.testing.assert_allclose(phi_closed.numpy(), phi_ref, atol=1e-12)
    for steps in (1, 2, 3):
        moved = transport(analytic_q, obs, x0, steps, alpha=REF["alpha"], lr=REF["lr"], rule=cfg.step_rule,
                          q_agg=cfg.grad_q_agg, bandwidth=cfg.bandwidth, bandwidth_grad=cfg.bandwidth_grad)
        np.testing.assert_allclose(moved.numpy(), particles_ref[steps - 1], atol=1e-12)


@pytest.mark.parametrize("name", ["A", "B"])
def test_float32_transport_matches_within_float32_error(name):
    obs, x0, _, particles_ref, _ = case(name, torch.float32)
    moved = transport(analytic_q, obs, x0, 3, alpha=REF["alpha"], lr=REF["lr"])
    np.testing.assert_allclose(moved.numpy(), particles_ref[2], atol=1e-5)


@pytest.mark.parametrize("name", ["A", "B"])
def test_the_median_pull_goes_to_the_particle_the_stable_sort_picks(name):
    # Which entry of each tied pair the median takes: flat index i*N+j, particle i gets the pull.
    obs, x0, phi_ref, _, picks = case(name)
    n = x0.shape[1]
    d2 = pairwise_sqdist(x0).flatten(1)
    order = d2.sort(dim=-1, stable=True).indices
    mid = [n * n // 2] if (n * n) % 2 else [n * n // 2 - 1, n * n // 2]
    assert order[:, mid].tolist() == picks
    for b, flat in enumerate(picks):
        for f in flat:
            i, j = divmod(f, n)
            assert d2[b, f] == d2[b, j * n + i]  # an exact tie: only the sort's order decides
    # The other tie-break, or no gradient through h, moves the particles differently.
    score, _ = value_grad(analytic_q, obs[:, None], x0)
    textbook = svgd_direction(x0, score, REF["alpha"], bandwidth_grad=False).numpy()
    assert np.abs(textbook - phi_ref).max() > 0.1
