"""Flow-matching primitives for the reference (behaviour-cloning) policy.

The conventions are those of Meta's ``flow_matching`` library and of the VGF/FQL reference code:

- Noise at t = 0, data at t = 1, linear (conditional optimal-transport) path
  ``x_t = (1 - t) x0 + t x1`` whose target velocity is ``dx_t/dt = x1 - x0``.
- Loss: mean over batch and action dimensions of ``(v(s, x_t, t) - (x1 - x0))^2`` with
  ``x0 ~ N(0, I)`` and ``t ~ U[0, 1]`` (the reference code's ``jnp.mean``).
- Sampling: K explicit Euler steps ``x <- x + v(s, x, k/K) / K`` for ``k = 0..K-1`` from Gaussian noise,
  then clip to the action box [-1, 1].

A velocity field is any callable ``velocity_fn(obs, x, t) -> v`` where ``t`` has shape ``[..., 1]``
and the leading dimensions of ``obs``, ``x``, ``t`` broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vgfcli.nn.networks import MLP

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def linear_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Point ``x_t`` on the straight path from ``x0`` (t=0) to ``x1`` (t=1) and its velocity."""
    return (1.0 - t) * x0 + t * x1, x1 - x0


def flow_matching_loss(velocity_fn: VelocityFn, obs: Tensor, actions: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
    """Conditional flow-matching loss of ``velocity_fn`` on the pairs (``obs``, ``actions``).

    Draws one ``x0 ~ N(0, I)`` and one ``t ~ U[0, 1]`` per row from ``generator``.
    """
    x0 = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
    t = torch.rand((*actions.shape[:-1], 1), generator=generator, device=actions.device,
                   dtype=actions.dtype)
    x_t, target = linear_path(x0, actions, t)
    return (velocity_fn(obs, x_t, t) - target).square().mean()


def euler_sample(velocity_fn: VelocityFn, obs: Tensor, noise: Tensor, steps: int,
                 clip: float | None = 1.0) -> Tensor:
    """Integrate ``dx/dt = v(obs, x, t)`` from ``noise`` at t=0 to t=1 with ``steps`` Euler steps.

    ``obs`` broadcasts against ``noise`` (``[B, 1, obs_dim]`` with ``[B, N, act_dim]`` draws N samples
    per state). The result is clipped to ``[-clip, clip]`` unless ``clip`` is None. No gradients are
    tracked unless the caller enables them.
    """
    if steps < 1:
        raise ValueError("euler_sample needs steps >= 1")
    x = noise
    dt = 1.0 / steps
    t_shape = (*noise.shape[:-1], 1)
    for k in range(steps):
        t = torch.full(t_shape, k * dt, device=noise.device, dtype=noise.dtype)
        x = x + velocity_fn(obs, x, t) * dt
    return x.clamp(-clip, clip) if clip is not None else x


class FlowPolicy(nn.Module):
    """Velocity field ``v(s, x, t)``: an MLP on ``concat(s, x, t)`` (4 x 512, no LayerNorm by default).

    ``forward(obs, x, t)`` broadcasts the leading dimensions of its inputs; the observation's share of
    the first layer is computed at the observation's own shape (once per state, see ``MLP``).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (512, 512, 512, 512),
                 activation: str = "relu", norm: str | None = None):
        super().__init__()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.net = MLP((self.obs_dim, self.act_dim, 1), hidden, self.act_dim, activation, norm)

    def forward(self, obs: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return self.net(obs, x, t)

    def loss(self, obs: Tensor, actions: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss on a batch; dataset actions should already lie in +-(1 - 1e-5)."""
        return flow_matching_loss(self, obs, actions, generator)

    @torch.no_grad()
    def sample(self, obs: Tensor, num: int | None = None, steps: int = 10,
               generator: torch.Generator | None = None, clip: float | None = 1.0) -> Tensor:
        """Actions for ``obs`` ``[B, obs_dim]``: ``[B, act_dim]``, or ``[B, num, act_dim]`` if ``num``."""
        shape = (*obs.shape[:-1], self.act_dim) if num is None else (*obs.shape[:-1], num, self.act_dim)
        noise = torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)
        cond = obs if num is None else obs.unsqueeze(-2)
        return euler_sample(self, cond, noise, steps, clip)
