"""VGF on a language model's responses: N sampled responses of one prompt are the particles, moved in
the reward model's input-embedding space by the offline transport itself (``nn.particles.particle_step``:
the same RBF kernel with the median bandwidth, the same 1/alpha weighting of the drive, the same Adam
or plain step rule), with the reward model R(x, u) in the critic's place:

    phi(u) = 1/N sum_j [ k(u_j, u) grad_{u_j} R(x, u_j) / alpha + grad_{u_j} k(u_j, u) ]

A particle is a response's token embeddings ``[T, d]`` flattened. Only its real tokens move: the EOS
and the padding after it are held where they are (the reward reads the samples' own embeddings there,
so their gradient is zero), and a particle keeps its length. In the transport's own coordinates the held
positions are 0 for every particle, so the kernel and its median bandwidth measure the moving tokens
only, as the offline transport measures actions. The prompt's embeddings are the "state": fixed, in front of every
particle. No clipping (embeddings have no box). Each budget L is a snapshot of one run of the largest
L: with a fresh Adam per call, L steps of a longer run are exactly the steps of a run of L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.llm.models import RewardModel
from vgfcli.nn.adaptive import StopRule
from vgfcli.nn.particles import AdamParticleState, particle_step


@dataclass(frozen=True)
class TransportSettings:
    alpha: float  # the drive's weight 1/alpha against the kernel's repulsion
    lr: float  # step size (adam: about lr per coordinate per step)
    rule: str = "adam"  # adam (the reference code's) | plain (the paper's a <- a + lr phi)
    bandwidth_grad: bool = True  # the reference code's repulsion (gradient through the median bandwidth)


@dataclass
class Moved:
    embeddings: dict[int, Tensor]  # L -> [N, T, d] particles after L steps (L = 0: the samples' own)
    steps: Tensor | None = None  # adaptive: accepted steps per particle set (a [1] tensor), else None
    forward: dict[int, int] | None = None  # reward passes over one particle each, per row
    backward: dict[int, int] | None = None


class ResponseParticles:
    """One prompt's N responses as particles of the reward model's embedding space."""

    def __init__(self, reward: RewardModel, prompt_ids: Tensor, response: Tensor, lengths: Tensor,
                 movable: Tensor):
        self.reward, self.n, self.t = reward, response.shape[0], response.shape[1]
        with torch.no_grad():
            self.prompt = reward.embed(prompt_ids).float()  # [P, d]
            self.start = reward.embed(response).float()  # [N, T, d]
        self.movable = movable[..., None]  # [N, T, 1]
        p = prompt_ids.numel()
        positions = torch.arange(self.t, device=response.device)
        self.mask = torch.cat([torch.ones(self.n, p, dtype=torch.long, device=response.device),
                               (positions < lengths[:, None]).long()], 1)
        self.last = reward.last_index(torch.cat([prompt_ids.expand(self.n, -1), response], 1), self.mask)
        self.dtype = reward.table.dtype

    def flat(self, u: Tensor) -> Tensor:
        return u.reshape(1, self.n, -1)

    def unflat(self, x: Tensor) -> Tensor:
        return x.reshape(self.n, self.t, -1)

    def held(self, u: Tensor) -> Tensor:
        """``u`` with the fixed positions (EOS, padding) put back at the samples' embeddings."""
        return torch.where(self.movable, u, self.start)

    def moving(self, u: Tensor) -> Tensor:
        """The transport's coordinates: ``u`` with the fixed positions at 0."""
        return torch.where(self.movable, u, torch.zeros_like(u))

    def q_fn(self, obs: Tensor, actions: Tensor) -> Tensor:
        """The transport's critic: ``[1, N, T*d]`` particles -> ``[members, 1, N]`` rewards."""
        u = self.held(self.unflat(actions))
        embeds = torch.cat([self.prompt.expand(self.n, -1, -1), u], 1).to(self.dtype)
        return self.reward.from_embeddings(embeds, self.mask, self.last)[:, None, :]

    @torch.no_grad()
    def members_at(self, u: Tensor) -> Tensor:
        return self.q_fn(None, self.flat(u))[:, 0]  # [M, N]

    def move(self, budgets: list[int], settings: TransportSettings, q_agg: str = "mean") -> Moved:
        """Snapshots after each L in ``budgets`` (integers) of one transport run."""
        x = self.flat(self.moving(self.start))
        state = AdamParticleState.zeros_like(x) if settings.rule == "adam" else None
        out = {0: self.start} if 0 in budgets else {}
        for step in range(1, max(budgets, default=0) + 1):
            x = self._step(x, state, settings, q_agg)
            if step in budgets:
                out[step] = self.held(self.unflat(x))
        fwd = {b: self.n * b for b in budgets}
        return Moved(out, None, fwd, dict(fwd))

    def move_adaptive(self, max_steps: int, stop: StopRule, settings: TransportSettings,
                      q_agg: str = "mean") -> Moved:
        """Step by step up to ``max_steps``, stopping as soon as ``stop`` rejects a proposal (the offline
        rules: members' disagreement above the threshold, or a gain below ``gain_fraction`` x their std);
        the particles before a rejected step are kept. Needs a reward model of >= 2 members."""
        x = self.flat(self.moving(self.start))
        state = AdamParticleState.zeros_like(x) if settings.rule == "adam" else None
        qs = self.members_at(self.start)[:, None]  # [M, 1, N]
        steps, forward, backward = 0, self.n, 0
        for _ in range(max_steps):
            proposal = self._step(x, state, settings, q_agg)
            backward += self.n
            qs_new = self.members_at(self.held(self.unflat(proposal)))[:, None]
            forward += 2 * self.n  # the drive's forward and the proposal's score
            if bool(stop.rejects(qs, qs_new, q_agg)[0]):
                break
            x, qs, steps = proposal, qs_new, steps + 1
        return Moved({-1: self.held(self.unflat(x))}, torch.tensor([steps]), {-1: forward}, {-1: backward})

    def _step(self, x: Tensor, state, settings: TransportSettings, q_agg: str) -> Tensor:
        """One step of the offline transport (``particle_step``), the fixed positions kept at 0."""
        x = particle_step(self.q_fn, x.new_zeros(1, 1, 1), x, alpha=settings.alpha, lr=settings.lr,
                          rule=settings.rule, state=state, q_agg=q_agg, bandwidth_grad=settings.bandwidth_grad,
                          clip=None)
        return self.flat(self.moving(self.unflat(x))).detach()

