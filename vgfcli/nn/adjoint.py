"""Adjoint matching (Domingo-Enrich et al.) for flow policies, as QAM uses it (``vgfcli.methods.qam``):
the memoryless SDE rollout of the fine-tuned velocity, the lean adjoint backward through the frozen
base velocity, and the loss between them. Pure functions of tensors and velocity fields
(``Velocity``: ``v(obs, x, t)``); the tests check them in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor, Tensor], Tensor]


def sigma_schedule(steps: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """``[T]``: sigma_k = sqrt(2 (1 - t_k + h) / (t_k + h)), t_k = k h, h = 1/T (the memoryless noise)."""
    h = 1.0 / steps
    t = torch.arange(steps, dtype=torch.float64) * h
    return (2 * (1 - t + h) / (t + h)).sqrt().to(dtype=dtype, device=device)


def memoryless_rollout(policy_v: Velocity, base_v: Velocity, obs: Tensor, x0: Tensor, noises: Tensor,
                       steps: int) -> Tensor:
    """``[T + 1, B, d]``: x_0..x_T of the memoryless SDE driven by ``policy_v``; ``noises`` ``[T - 1,
    B, d]`` are the eps_k of the stochastic steps. The last step is a deterministic Euler step of
    ``base_v`` (the code follows the adjoint-matching paper there). Call without gradients."""
    h = 1.0 / steps
    xs = [x0]
    x = x0
    for k in range(steps):
        t = torch.full((*x.shape[:-1], 1), k * h, dtype=x.dtype, device=x.device)
        if k < steps - 1:
            sigma = math.sqrt(2 * (1 - k * h + h) / (k * h + h))
            x = x + h * (2 * policy_v(obs, x, t) - x / (k * h + h)) + math.sqrt(h) * sigma * noises[k]
        else:
            x = x + h * base_v(obs, x, t)
        xs.append(x)
    return torch.stack(xs)


def lean_adjoint(base_v: Velocity, obs: Tensor, xs: Tensor, a_final: Tensor, steps: int) -> Tensor:
    """``[T, B, d]``: adjoint states a_0..a_{T-1} from a_T = ``a_final`` backward through
    a_k = a_{k+1} + h J_k^T a_{k+1}, J_k = d/dx [2 v_b(s, x, t_k + h) - x / (t_k + h)] at x_k = xs[k].

    The base drift is evaluated at t_k + h, as the code's backward pass does (the step's end, where
    x / t is finite). Only v_b is differentiated, with respect to x alone (one VJP per step); the
    -x / (t_k + h) term's Jacobian is -I / (t_k + h) and is applied in closed form.
    """
    h = 1.0 / steps
    adjoints = [a_final] * steps
    a = a_final.detach()
    with torch.inference_mode(False), torch.enable_grad():
        obs = obs.clone() if obs.is_inference() else obs
        for k in reversed(range(steps)):
            s = k * h + h
            x = xs[k].detach().clone().requires_grad_(True)
            t = torch.full((*x.shape[:-1], 1), s, dtype=x.dtype, device=x.device)
            (vjp,) = torch.autograd.grad(base_v(obs, x, t), x, grad_outputs=a)
            a = a + h * (2 * vjp - a / s)
            adjoints[k] = a
    return torch.stack(adjoints)


def adjoint_matching_loss(drift_diff: Tensor, adjoints: Tensor, sigmas: Tensor) -> Tensor:
    """sum_k || (2 / sigma_k) drift_diff_k + sigma_k a_k ||^2, mean over the batch; ``drift_diff`` is
    v_theta - v_b (or the residual) at x_k, ``[T, B, d]``; ``sigmas`` ``[T]``."""
    sig = sigmas.reshape(-1, *([1] * (adjoints.dim() - 1)))
    return ((2 / sig) * drift_diff + sig * adjoints).square().sum(-1).sum(0).mean()
