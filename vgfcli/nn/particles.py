"""VGF particle transport: move reference samples along the value gradient (SVGD-like).

For each state s, N particles a_1..a_N (shape ``[B, N, d]`` for a batch) move along

    phi(x) = (1/N) sum_j [ k(a_j, x) grad_a Q(s, a_j) / alpha + grad_{a_j} k(a_j, x) ]

with the RBF kernel ``k(x, y) = exp(-||x - y||^2 / (2 h))`` and the median bandwidth
``h = median_{i,j} ||a_i - a_j||^2 / (2 log(N + 1))`` per state (the median over all N^2 entries,
diagonal zeros included, the middle two averaged, as ``jnp.median``).

The repulsive term, by default exactly as the reference code computes it (``bandwidth_grad=True``):
``-grad_x sum_ij k(x_i, stopgrad(x_j))`` with h computed from x INSIDE the differentiated function, so
the gradient also flows through the median bandwidth. The distances are symmetric, so the median
entries are tied pairs (i, j) / (j, i); the median's gradient goes to the entry the sort puts in the
middle, i.e. to particle i or to particle j. ``jnp.median`` sorts stably (ties keep their flat order),
and so does ``median_bandwidth``: any other tie-break moves different particles and changes the chosen
action after a few steps. ``bandwidth_grad=False`` is textbook SVGD (h constant), whose repulsion has
the closed form

    sum_j grad_{a_j} k(a_j, a_i) = 2 gamma sum_j k_ij (a_i - a_j),    gamma = 1 / (2 h).
``grad_a Q`` is the gradient of the ONLINE critic's members aggregated (mean by default) with
respect to the actions only; no parameter gradient is formed or accumulated.

Step rules:
- ``"adam"`` (reference code, default): -phi is fed as the gradient to a fresh Adam (beta 0.9/0.999,
  eps 1e-8, lr ``lr``) created per call of ``transport``; each coordinate moves about lr per step.
- ``"plain"`` (paper): ``a <- a + lr * phi``.
Particles are clipped to [-1, 1] after every step. No noise is added.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# The reference code's guards: h floored at 1e-12, gamma = 1 / (1e-6 + 2 h).
H_FLOOR = 1e-12
GAMMA_EPS = 1e-6

QFn = Callable[[Tensor, Tensor], Tensor]  # (obs [B, 1, D], actions [B, N, d]) -> [members, B, N]


def pairwise_sqdist(x: Tensor) -> Tensor:
    """``[B, N, d] -> [B, N, N]`` squared Euclidean distances (exact, symmetric)."""
    diff = x.unsqueeze(-2) - x.unsqueeze(-3)
    return diff.square().sum(-1)


def median_entries(sqdist: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``[..., N, N]``: the median of each N x N block as ``jnp.median`` (the middle two averaged for
    even N^2) and the flat indices ``i * N + j`` it was taken from (one or two tensors ``[...]``).

    The sort is STABLE, as jnp.median's: among tied entries the lower flat index comes first, which
    decides the particle that receives the median's gradient (see the module docstring).
    """
    values, order = sqdist.flatten(-2).sort(dim=-1, stable=True)
    mid = values.shape[-1] // 2
    if values.shape[-1] % 2:
        return values[..., mid], [order[..., mid]]
    return 0.5 * (values[..., mid - 1] + values[..., mid]), [order[..., mid - 1], order[..., mid]]


def median_bandwidth(sqdist: Tensor) -> Tensor:
    """``[B, N, N] -> [B]``: h = median(sqdist) / (2 log(N + 1)), the median as ``jnp.median``."""
    return median_entries(sqdist)[0] / (2.0 * math.log(sqdist.shape[-1] + 1.0))


def rbf_kernel(x: Tensor, bandwidth: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Kernel matrix ``[B, N, N]`` of the particles ``x`` ``[B, N, d]`` and ``2 * gamma`` ``[B, 1, 1]``.

    ``bandwidth`` is h (a number, or ``[B]``); None uses the per-state median heuristic.
    """
    d2 = pairwise_sqdist(x)
    if bandwidth is None:
        h = median_bandwidth(d2)
    else:
        h = torch.as_tensor(bandwidth, dtype=x.dtype, device=x.device).expand(x.shape[:-2])
    gamma = 1.0 / (GAMMA_EPS + 2.0 * h.clamp_min(H_FLOOR))
    gamma = gamma[..., None, None]
    return torch.exp(-gamma * d2), 2.0 * gamma


def svgd_direction(x: Tensor, score: Tensor, alpha: float,
                   bandwidth: float | Tensor | None = None, bandwidth_grad: bool = True) -> Tensor:
    """phi at every particle, given ``score = grad_a Q(s, a_j)`` ``[B, N, d]``.

    ``bandwidth_grad=True`` (default) reproduces the reference code exactly: its repulsive term is
    ``-grad_x sum_ij k(x_i, stopgrad(x_j))`` with the median bandwidth computed from x inside the
    differentiated function, so the gradient also flows through h into the particle of the median
    entry that the stable sort picks (an extra pull). False: h constant, the textbook SVGD term.
    A fixed ``bandwidth`` has no gradient, so both forms agree then.
    """
    k, two_gamma = rbf_kernel(x, bandwidth)
    n = x.shape[-2]
    drive = torch.matmul(k, score) / alpha
    if bandwidth_grad and bandwidth is None:
        repulse = -_kernel_sum_grad(x)
    else:
        # sum_j k_ij (x_i - x_j) = x_i * rowsum_i(k) - (k @ x)_i
        repulse = two_gamma * (x * k.sum(-1, keepdim=True) - torch.matmul(k, x))
    return (drive + repulse) / n


def _kernel_sum_grad(x: Tensor) -> Tensor:
    """``grad_x sum_ij k(x_i, stopgrad(x_j))`` with the median bandwidth differentiated too."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        d2 = (xr.unsqueeze(-2) - x.detach().unsqueeze(-3)).square().sum(-1)
        h = median_bandwidth(d2)
        gamma = 1.0 / (GAMMA_EPS + 2.0 * h.clamp_min(H_FLOOR))
        total = torch.exp(-gamma[..., None, None] * d2).sum()
        (grad,) = torch.autograd.grad(total, xr)
    return grad


def aggregate_members(qs: Tensor, how: str) -> Tensor:
    """Reduce the leading members axis: ``min`` or ``mean``."""
    if how == "mean":
        return qs.mean(0)
    if how == "min":
        return qs.min(0).values
    raise ValueError(f"unknown member aggregation '{how}' (expected min or mean)")


def aggregate_particles(q: Tensor, how: str) -> Tensor:
    """``[B, N] -> [B]``: mean or max over particles."""
    if how == "mean":
        return q.mean(-1)
    if how == "max":
        return q.max(-1).values
    raise ValueError(f"unknown particle aggregation '{how}' (expected mean or max)")


def td_target(next_qs: Tensor, rewards: Tensor, masks: Tensor, discount: float,
              q_agg: str = "mean", particle_agg: str = "mean") -> Tensor:
    """VGF's and A-VGF's TD target ``y = r + discount * mask * agg_particles(agg_members(next_qs))``
    at transported next-state particles; ``next_qs`` is ``[M, B, N]``."""
    next_v = aggregate_particles(aggregate_members(next_qs, q_agg), particle_agg)
    return rewards + discount * masks * next_v


def value_grad(q_fn: QFn, obs: Tensor, actions: Tensor, q_agg: str = "mean") -> tuple[Tensor, Tensor]:
    """``grad_a agg_members Q(s, a)`` at every particle ``[B, N, d]`` and the aggregated Q ``[B, N]``.

    Gradients are taken with respect to the actions alone (``torch.autograd.grad``): the critic's
    parameters get no ``.grad`` and no weight-gradient GEMMs run.
    """
    with torch.enable_grad():
        a = actions.detach().requires_grad_(True)
        q = aggregate_members(q_fn(obs, a), q_agg)
        (g,) = torch.autograd.grad(q.sum(), a)
    return g, q.detach()


@dataclass
class AdamParticleState:
    """Adam moments of one particle set (elementwise, so batched for free) and the step count."""

    m: Tensor
    v: Tensor
    t: int = 0

    @classmethod
    def zeros_like(cls, x: Tensor) -> "AdamParticleState":
        return cls(torch.zeros_like(x), torch.zeros_like(x), 0)


def adam_step(x: Tensor, grad: Tensor, state: AdamParticleState, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Tensor:
    """One Adam descent step on ``x`` with ``grad`` (optax.adam's arithmetic); updates ``state``."""
    b1, b2 = betas
    state.t += 1
    state.m.lerp_(grad, 1.0 - b1)                          # m = b1 m + (1 - b1) g
    state.v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)  # v = b2 v + (1 - b2) g^2
    m_hat = state.m / (1.0 - b1 ** state.t)
    denom = (state.v / (1.0 - b2 ** state.t)).sqrt_().add_(eps)
    return x - lr * m_hat / denom


def particle_step(q_fn: QFn, obs: Tensor, x: Tensor, *, alpha: float, lr: float,
                  rule: str = "adam", state: AdamParticleState | None = None, q_agg: str = "mean",
                  bandwidth: float | Tensor | None = None, bandwidth_grad: bool = True,
                  clip: float | None = 1.0) -> Tensor:
    """One transport step of the particles ``x`` ``[B, N, d]`` at ``obs`` ``[B, 1, D]``."""
    score, _ = value_grad(q_fn, obs, x, q_agg)
    phi = svgd_direction(x, score, alpha, bandwidth, bandwidth_grad)
    if rule == "adam":
        if state is None:
            raise ValueError("the adam rule needs an AdamParticleState")
        x = adam_step(x, -phi, state, lr)
    elif rule == "plain":
        x = x + lr * phi
    else:
        raise ValueError(f"unknown particle step rule '{rule}' (expected adam or plain)")
    return x.clamp(-clip, clip) if clip is not None else x


def transport(q_fn: QFn, obs: Tensor, particles: Tensor, steps: int, *, alpha: float, lr: float,
              rule: str = "adam", q_agg: str = "mean", bandwidth: float | Tensor | None = None,
              bandwidth_grad: bool = True, clip: float | None = 1.0) -> Tensor:
    """Move ``particles`` ``[B, N, d]`` for ``steps`` steps; a fresh Adam state per call.

    ``obs`` is ``[B, D]`` or ``[B, 1, D]``; ``q_fn(obs[:, None], actions)`` must return
    ``[members, B, N]`` (an ``EnsembleCritic`` does). Returns detached particles.
    """
    if obs.dim() == particles.dim() - 1:
        obs = obs.unsqueeze(-2)
    x = particles.detach()
    state = AdamParticleState.zeros_like(x) if rule == "adam" else None
    for _ in range(steps):
        x = particle_step(q_fn, obs, x, alpha=alpha, lr=lr, rule=rule, state=state, q_agg=q_agg,
                          bandwidth=bandwidth, bandwidth_grad=bandwidth_grad, clip=clip)
    return x.detach()
