"""Flow-matching primitives for the reference (behaviour-cloning) policy.

The conventions are those of Meta's ``flow_matching`` library and of the VGF/FQL reference code:

- Noise at t = 0, data at t = 1, linear (conditional optimal-transport) path
  ``x_t = (1 - t) x0 + t x1`` whose target velocity is ``dx_t/dt = x1 - x0``.
- Loss: mean over batch and action dimensions of ``(v(s, x_t, t) - (x1 - x0))^2`` with
  ``x0 ~ N(0, I)`` and ``t ~ U[0, 1]`` (the reference code's ``jnp.mean``); QGF's code draws t from
  the Euler grid {0, 1/K, ..., 1} instead (``t_grid = K``) and embeds t sinusoidally.
- Sampling: K explicit Euler steps ``x <- x + v(s, x, k/K) / K`` for ``k = 0..K-1`` from Gaussian noise,
  then clip to the action box [-1, 1].

A velocity field is any callable ``velocity_fn(obs, x, t) -> v`` where ``t`` has shape ``[..., 1]``
and the leading dimensions of ``obs``, ``x``, ``t`` broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vgfcli.nn.networks import MLP, PlainInput
from vgfcli.nn.noise import normal

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def linear_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Point ``x_t`` on the straight path from ``x0`` (t=0) to ``x1`` (t=1) and its velocity."""
    return (1.0 - t) * x0 + t * x1, x1 - x0


def flow_matching_loss(velocity_fn: VelocityFn, obs: Tensor, actions: Tensor,
                       generator: torch.Generator | None = None, t_grid: int | None = None) -> Tensor:
    """Conditional flow-matching loss of ``velocity_fn`` on the pairs (``obs``, ``actions``).

    Draws one ``x0 ~ N(0, I)`` and one t per row from ``generator``: ``t ~ U[0, 1]``, or uniformly
    from the grid {0, 1/K, ..., 1} when ``t_grid`` = K (QGF's reference code).
    """
    x0 = normal(actions.shape, generator, actions.device, actions.dtype)
    shape = (*actions.shape[:-1], 1)
    if t_grid is None:
        t = torch.rand(shape, generator=generator, device=actions.device, dtype=actions.dtype)
    else:
        t = torch.randint(0, t_grid + 1, shape, generator=generator, device=actions.device).to(actions.dtype) / t_grid
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
    if hasattr(velocity_fn, "conditioned"):  # what depends on obs alone, computed once for all steps
        velocity_fn = velocity_fn.conditioned(obs)
    x = noise
    dt = 1.0 / steps
    t_shape = (*noise.shape[:-1], 1)
    for k in range(steps):
        t = torch.full(t_shape, k * dt, device=noise.device, dtype=noise.dtype)
        x = x + velocity_fn(obs, x, t) * dt
    return x.clamp(-clip, clip) if clip is not None else x


TIME_EMBEDDINGS = ("raw", "sinusoidal")


def sinusoidal_embedding(t: Tensor, size: int = 16, max_period: float = 10000.0) -> Tensor:
    """``[..., 1] -> [..., size]``: cos and sin of ``t * max_period * f_i``, f_i = max_period^(-i / half)
    for i < half (the QGF code's timestep embedding; t in [0, 1])."""
    half = size // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    args = t * max_period * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class FlowPolicy(PlainInput, nn.Module):
    """Velocity field ``v(s, x, t)``: an MLP on ``concat(s, x, t)`` (4 x 512, no LayerNorm by default);
    ``time_embedding="sinusoidal"`` feeds a 16-wide sinusoidal embedding of t instead of t itself.

    ``forward(obs, x, t)`` broadcasts the leading dimensions of its inputs; the observation's share of
    the first layer is computed at the observation's own shape (once per state, see ``MLP``).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (512, 512, 512, 512),
                 activation: str = "relu", norm: str | None = None, time_embedding: str = "raw"):
        super().__init__()
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be raw or sinusoidal, not {time_embedding!r}")
        self.obs_dim, self.act_dim, self.time_embedding = int(obs_dim), int(act_dim), time_embedding
        t_dim = 1 if time_embedding == "raw" else 16
        self.net = MLP((self.obs_dim, self.act_dim, t_dim), hidden, self.act_dim, activation, norm)

    def forward(self, obs: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return self.net(obs, x, t if self.time_embedding == "raw" else sinusoidal_embedding(t))

    def conditioned(self, obs: Tensor) -> VelocityFn:
        """``v(., x, t)`` at the fixed ``obs``: the observation's share of the first layer is computed
        here once, not at every Euler step (the same numbers; the returned function ignores its obs)."""
        shares = {0: self.net.share(0, obs)}
        embed = (lambda t: t) if self.time_embedding == "raw" else sinusoidal_embedding
        return lambda _obs, x, t: self.net(None, x, embed(t), shares=shares)

    def loss(self, obs: Tensor, actions: Tensor, generator: torch.Generator | None = None,
             t_grid: int | None = None) -> Tensor:
        """Flow-matching loss on a batch; dataset actions should already lie in +-(1 - 1e-5)."""
        return flow_matching_loss(self, obs, actions, generator, t_grid)

    @torch.no_grad()
    def sample(self, obs: Tensor, num: int | None = None, steps: int = 10,
               generator: torch.Generator | None = None, clip: float | None = 1.0) -> Tensor:
        """Actions for ``obs`` ``[B, obs_dim]``: ``[B, act_dim]``, or ``[B, num, act_dim]`` if ``num``."""
        shape = (*obs.shape[:-1], self.act_dim) if num is None else (*obs.shape[:-1], num, self.act_dim)
        noise = normal(shape, generator, obs.device, obs.dtype)
        cond = obs if num is None else obs.unsqueeze(-2)
        return euler_sample(self, cond, noise, steps, clip)
