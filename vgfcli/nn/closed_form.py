"""The particle transport without autograd: every gradient it needs, written out in closed form.

``vgfcli.nn.particles`` takes ``grad_a Q`` and the repulsive term's gradient with ``torch.autograd``.
Here the same two gradients are explicit tensor expressions, so one transport step is a plain graph of
matmuls and elementwise work: no tape, no per-op autograd bookkeeping, nothing that stops
``torch.compile`` from fusing the elementwise work between the GEMMs (the reason for this module:
at the quick sizes per-op overhead, not arithmetic, is most of an update). The results equal the
autograd path's up to float rounding; ``tests/test_closed_form.py`` checks both paths against each
other and against the reference code's values.

- ``EnsembleCritic`` forward at ``[M, R, H]`` with the activations kept, then the backward pass with
  respect to the ACTIONS only (no weight gradient). The observation's share of the first layer does
  not change during a transport: it is projected once per transport, not once per step.
  Layer i (norm "pre"): ``u = LN(z)``, ``n = u * scale + shift``, ``h = act(n)``; LayerNorm's input
  gradient is ``rstd * (g_u - mean(g_u) - u * mean(g_u * u))``.
- The reference code's repulsion ``-grad_x sum_ij k(x_i, stopgrad(x_j))`` with the bandwidth computed
  from x (``bandwidth_grad``): the direct term is textbook SVGD's ``2 gamma sum_j k_ij (x_i - x_j)``;
  the term through the median adds ``-c * d median / d x`` with ``c = d(sum k) / d median``, and the
  median (as ``jnp.median``, stable sort) depends on x only through the first index p of the picked
  entry (p, q): ``d d2_pq / d x_p = 2 (x_p - x_q)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vgfcli.nn.networks import LN_EPS, EnsembleCritic
from vgfcli.nn.particles import GAMMA_EPS, H_FLOOR, median_entries, pairwise_sqdist


@dataclass(frozen=True)
class CriticShape:
    """What the closed-form pass needs to know about an ``EnsembleCritic`` besides its tensors."""

    obs_dim: int
    act_dim: int
    members: int
    activation: str
    norm: str | None

    @classmethod
    def of(cls, critic: EnsembleCritic) -> "CriticShape":
        return cls(critic.obs_dim, critic.act_dim, critic.members, critic.activation, critic.norm)


def critic_tensors(critic: EnsembleCritic, matmul_dtype: torch.dtype | None = None
                   ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """The critic's weights, biases, LayerNorm scales and shifts, detached (views; the weights are
    copies when cast).

    ``matmul_dtype`` (e.g. ``torch.bfloat16``): the weights are cast to it, and every matmul runs in
    it while everything else (LayerNorm, activations, the kernel, the step) stays in float32.
    """
    ws = [w.detach() if matmul_dtype is None else w.detach().to(matmul_dtype) for w in critic.weights]
    bs = [b.detach() for b in critic.biases]
    if critic.norm:
        return ws, bs, [s.detach() for s in critic.ln_scale], [s.detach() for s in critic.ln_shift]
    return ws, bs, [], []


def _mm(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w`` in w's dtype, returned in x's."""
    return torch.matmul(x, w) if x.dtype == w.dtype else torch.matmul(x.to(w.dtype), w).to(x.dtype)


def _bmm(x: Tensor, w: Tensor) -> Tensor:
    return torch.bmm(x, w) if x.dtype == w.dtype else torch.bmm(x.to(w.dtype), w).to(x.dtype)


def _linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.baddbmm(b, x, w) if x.dtype == w.dtype else _bmm(x, w) + b


def _act(x: Tensor, name: str) -> Tensor:
    if name == "relu":
        return torch.relu(x)
    if name == "gelu":
        return F.gelu(x, approximate="tanh")
    return F.silu(x)


def _act_backward(g: Tensor, x: Tensor, y: Tensor, name: str) -> Tensor:
    """``g * act'(x)`` given x and y = act(x) (aten's own backward kernels)."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(g, y, 0)
    if name == "gelu":
        return torch.ops.aten.gelu_backward(g, x, approximate="tanh")
    return torch.ops.aten.silu_backward(g, x)


def _layer_norm(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm without affine over the last axis (one fused kernel): ``u``, mean and rstd."""
    return torch.native_layer_norm(z, z.shape[-1:], None, None, LN_EPS)


def _layer_norm_grad(g_u: Tensor, z: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """Input gradient of ``_layer_norm`` at ``z``: ``rstd * (g_u - mean(g_u) - u * mean(g_u * u))``."""
    return torch.ops.aten.native_layer_norm_backward(
        g_u, z, z.shape[-1:], mean, rstd, None, None, [True, False, False])[0]


def project_obs(tensors, shape: CriticShape, obs: Tensor) -> Tensor:
    """``[B, D] -> [M, B, 1, H0]``: the observation's share of the first layer plus its bias."""
    if obs.dim() != 2:  # a [B, 1, D] input would batch states against members when B == M
        raise ValueError(f"observations must be [B, obs_dim], got shape {tuple(obs.shape)}")
    ws, bs, _, _ = tensors
    w_obs = ws[0][:, :shape.obs_dim]
    return (_mm(obs, w_obs) + bs[0]).unsqueeze(2)


def q_values(tensors, shape: CriticShape, obs: Tensor, actions: Tensor) -> Tensor:
    """Every member's Q ``[M, B, N]`` at ``obs`` ``[B, D]`` and ``actions`` ``[B, N, d]`` (no gradient
    kept): ``EnsembleCritic.forward(obs[:, None], actions)`` as one graph of plain ops."""
    ws, bs, scales, shifts = tensors
    m = shape.members
    b, n, d = actions.shape
    z = _mm(actions.reshape(b * n, d), ws[0][:, shape.obs_dim:]).reshape(m, b, n, -1)
    z = (z + project_obs(tensors, shape, obs)).reshape(m, b * n, -1)
    for i in range(1, len(ws)):
        z, _ = _hidden_forward(z, i - 1, scales, shifts, shape)
        z = _linear(z, ws[i], bs[i])
    return z.reshape(m, b, n)


def q_and_action_grad(tensors, shape: CriticShape, obs_proj: Tensor, actions: Tensor,
                      q_agg: str, members: bool = False) -> tuple[Tensor, Tensor]:
    """Members-aggregated Q ``[B, N]`` and its gradient with respect to ``actions`` ``[B, N, d]``.

    ``obs_proj`` is ``project_obs`` of the states. Equals ``particles.value_grad`` with the same
    critic, up to rounding. ``members``: return every member's Q ``[M, B, N]`` instead of the
    aggregate (the gradient is still the ``q_agg`` aggregate's).
    """
    qs, saved = q_forward(tensors, shape, obs_proj, actions)
    q, grad = action_grad(tensors, shape, qs, saved, q_agg)
    return (qs if members else q), grad


def q_forward(tensors, shape: CriticShape, obs_proj: Tensor, actions: Tensor) -> tuple[Tensor, list]:
    """Every member's Q ``[M, B, N]`` at ``actions`` ``[B, N, d]``, and what ``action_grad`` needs
    (the activations, with rows in (state, particle) order)."""
    ws, bs, scales, shifts = tensors
    m = shape.members
    b, n, d = actions.shape
    z = _mm(actions.reshape(b * n, d), ws[0][:, shape.obs_dim:]).reshape(m, b, n, -1) + obs_proj
    z = z.reshape(m, b * n, -1)
    saved = []
    for i in range(1, len(ws)):
        z, keep = _hidden_forward(z, i - 1, scales, shifts, shape)
        saved.append(keep)
        z = _linear(z, ws[i], bs[i])
    return z.reshape(m, b, n), saved


def keep_states(saved: list, keep: Tensor, particles: int) -> list:
    """``q_forward``'s activations of the states ``keep`` (a bool mask or indices over states) only."""
    def pick(t):
        if t is None:
            return None
        m, rows = t.shape[:2]
        return t.reshape(m, rows // particles, particles, *t.shape[2:])[:, keep].reshape(m, -1, *t.shape[2:])
    return [tuple(pick(t) for t in layer) for layer in saved]


def action_grad(tensors, shape: CriticShape, qs: Tensor, saved: list, q_agg: str) -> tuple[Tensor, Tensor]:
    """The ``q_agg`` aggregate of the members' Q ``[B, N]`` and its gradient with respect to the actions
    ``[B, N, d]``, from ``q_forward``'s ``qs`` and activations (the backward pass alone)."""
    ws, _, scales, _ = tensors
    m, b, n = qs.shape
    flat = qs.reshape(m, b * n)
    if q_agg == "mean":
        q = flat.mean(0)
        dq = torch.full_like(flat, 1.0 / m)
    else:
        q, which = flat.min(0)
        dq = F.one_hot(which, m).t().to(flat.dtype)
    g = dq.unsqueeze(-1) * ws[-1].transpose(1, 2).to(dq.dtype)          # [M, R, H_last]
    for i in range(len(ws) - 1, 0, -1):
        g = _hidden_backward(g, saved[i - 1], i - 1, scales, shape)      # grad at z_i
        g = _bmm(g, ws[i - 1].transpose(1, 2)) if i > 1 else g
    w_act = ws[0][:, shape.obs_dim:]                                    # [M, d, H0]
    grad = _bmm(g, w_act.transpose(1, 2)).sum(0)                         # [R, d]
    return q.reshape(b, n), grad.reshape(b, n, -1)


def _hidden_forward(z: Tensor, i: int, scales, shifts, shape: CriticShape):
    """Hidden layer i on its pre-activation ``z``; returns its output and what the backward needs."""
    if shape.norm == "pre":
        u, mean, rstd = _layer_norm(z)
        pre = torch.addcmul(shifts[i], u, scales[i])
        h = _act(pre, shape.activation)
        return h, (z, mean, rstd, pre, h)   # LayerNorm's input and stats, the activation's in/out
    h = _act(z, shape.activation)
    if shape.norm == "post":
        u, mean, rstd = _layer_norm(h)
        return torch.addcmul(shifts[i], u, scales[i]), (h, mean, rstd, z, h)
    return h, (None, None, None, z, h)


def _hidden_backward(g: Tensor, keep, i: int, scales, shape: CriticShape) -> Tensor:
    """Gradient at the layer's pre-activation ``z`` from the gradient ``g`` at its output."""
    ln_in, mean, rstd, act_in, h = keep
    if shape.norm == "pre":
        g = _act_backward(g, act_in, h, shape.activation)
        return _layer_norm_grad(g * scales[i], ln_in, mean, rstd)
    if shape.norm == "post":
        g = _layer_norm_grad(g * scales[i], ln_in, mean, rstd)
    return _act_backward(g, act_in, h, shape.activation)


def repulsion_median_grad(x: Tensor, k: Tensor, d2: Tensor, h: Tensor, picks: list[Tensor]) -> Tensor:
    """``d(sum_ij k_ij) / dx`` through the median bandwidth alone (the reference code's extra pull).

    ``h`` is the unclamped median bandwidth ``[B]``; ``k`` and ``d2`` ``[B, N, N]``; ``picks`` the
    median's flat entries (``particles.median_entries``). Only the first index p of an entry (p, q) moves it.
    """
    b, n, _ = x.shape
    denom = GAMMA_EPS + 2.0 * h.clamp_min(H_FLOOR)
    # d sum k / d gamma = -sum k d2;  d gamma / d h = -2 / denom^2 (0 where h is floored)
    dsum_dmed = (k * d2).sum((-1, -2)) * 2.0 / denom.square() * (h >= H_FLOOR).to(x.dtype)
    weight = dsum_dmed / (2.0 * math.log(n + 1.0)) / len(picks)       # [B]
    rows = torch.arange(b, device=x.device)
    out = torch.zeros_like(x)
    for flat in picks:
        p, q = flat // n, flat % n
        pull = 2.0 * (x[rows, p] - x[rows, q]) * weight.unsqueeze(-1)     # [B, d]
        out = out + F.one_hot(p, n).to(x.dtype).unsqueeze(-1) * pull.unsqueeze(1)
    return out


def svgd_direction(x: Tensor, score: Tensor, alpha: float, bandwidth: float | None,
                   bandwidth_grad: bool) -> Tensor:
    """phi ``[B, N, d]``, as ``particles.svgd_direction``, in closed form."""
    n = x.shape[-2]
    d2 = pairwise_sqdist(x)
    if bandwidth is None:
        med, picks = median_entries(d2)
        h = med / (2.0 * math.log(n + 1.0))
    else:
        h = torch.full(x.shape[:-2], float(bandwidth), dtype=x.dtype, device=x.device)
    gamma = (1.0 / (GAMMA_EPS + 2.0 * h.clamp_min(H_FLOOR)))[..., None, None]
    k = torch.exp(-gamma * d2)
    drive = torch.matmul(k, score) / alpha
    repulse = 2.0 * gamma * (x * k.sum(-1, keepdim=True) - torch.matmul(k, x))
    if bandwidth_grad and bandwidth is None:
        repulse = repulse - repulsion_median_grad(x, k, d2, h, picks)
    return (drive + repulse) / n


def transport(tensors, shape: CriticShape, obs: Tensor, particles: Tensor, steps: int, *,
              alpha: float, lr: float, rule: str = "adam", q_agg: str = "mean",
              bandwidth: float | None = None, bandwidth_grad: bool = True,
              clip: float | None = 1.0) -> Tensor:
    """``particles.transport`` in closed form: ``obs`` ``[B, D]``, particles ``[B, N, d]``.

    A pure function of its tensors (no autograd, no Python state), so it can be compiled whole.
    """
    obs_proj = project_obs(tensors, shape, obs)
    x = particles
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    for t in range(1, steps + 1):
        _, score = q_and_action_grad(tensors, shape, obs_proj, x, q_agg)
        phi = svgd_direction(x, score, alpha, bandwidth, bandwidth_grad)
        x, m, v = particle_update(x, phi, m, v, t, lr, rule, clip)
    return x


def particle_update(x: Tensor, phi: Tensor, m: Tensor, v: Tensor, t: int, lr: float, rule: str,
                    clip: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """Step ``t`` (1-based) of the particles along ``phi``: ``rule`` "adam" feeds -phi to Adam (moments
    ``m``, ``v``; optax.adam's arithmetic), "plain" is ``x + lr * phi``; then the clamp to the box."""
    if rule == "adam":
        b1, b2, eps = 0.9, 0.999, 1e-8
        g = -phi
        m = torch.lerp(m, g, 1.0 - b1)
        v = v * b2 + (1.0 - b2) * g * g
        x = x - lr * (m / (1.0 - b1 ** t)) / ((v / (1.0 - b2 ** t)).sqrt() + eps)
    else:
        x = x + lr * phi
    if clip is not None:
        x = x.clamp(-clip, clip)
    return x, m, v
