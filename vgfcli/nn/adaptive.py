"""An adaptive, per-state transport budget: move the particles one step at a time, up to ``max_steps``,
and stop a state as soon as a rule says the critic can no longer be trusted there or no longer helps.

A step is a proposal. Its particles are scored by every critic member, and one of two rules may reject
it (the state then keeps its previous particles and stops for good; a state that rejects its first
proposal acts as best-of-N on the reference samples):

- ``disagreement`` (rule a): the members' std of Q at the proposed particles, averaged over the
  state's particles, rises above ``threshold``. The threshold is a quantile of the members' std at
  the DATASET's actions (``Agent.calibrate``, computed once after training and stored with the
  critic): a particle the ensemble disagrees about more than it does about most dataset actions has
  left the data's support, where Q is an extrapolation.
- ``gain`` (rule b): the step's gain in Q (``q_agg`` of the members, averaged over the state's
  particles) is below ``gain_fraction`` x the members' std at the particles before the step: the
  critic cannot tell the gain from its own noise, so more budget buys nothing.

Only states still moving are computed (they are gathered each step), and a proposal costs a forward
pass; the backward pass that drives the next step runs only for the states that keep it. So a state
that stops early really costs less: one that rejects its first proposal costs 3 passes per particle
(forward + backward at the start, a forward at the proposal) against best-of-N's one, and one that
never stops costs exactly a fixed budget's (L forward + backward, plus the forward that selects).
The counts returned are those critic passes over one particle each. Run the critic in fp32: the
rules compare Q differences (a step's gain, a few tenths) of the size of bf16's error in Q. The per-step arithmetic is
``closed_form.transport``'s: a state that never stops ends where a fixed budget of ``max_steps`` would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.budgets import RULES  # the named adaptive budgets and the rules each applies
from vgfcli.nn import closed_form
from vgfcli.nn.particles import aggregate_members

__all__ = ["RULES", "StopRule", "AdaptiveResult", "adaptive_transport", "reads_disagreement"]


def reads_disagreement(name: str) -> bool:
    """Whether the named budget applies rule (a), which needs the critic's calibration."""
    return "disagreement" in RULES.get(name, ())


@dataclass(frozen=True)
class StopRule:
    """When a state stops. ``rules``: a subset of ("disagreement", "gain")."""

    rules: tuple[str, ...]
    threshold: float = float("inf")  # members' std ceiling of rule a
    gain_fraction: float = 0.5  # rule b: least gain, in units of the members' std

    @classmethod
    def named(cls, name: str, threshold: float, gain_fraction: float) -> "StopRule":
        if name not in RULES:
            raise ValueError(f"unknown adaptive budget '{name}' (expected {', '.join(RULES)})")
        return cls(RULES[name], float(threshold), float(gain_fraction))

    def rejects(self, qs_before: Tensor, qs_after: Tensor, q_agg: str) -> Tensor:
        """``[A]`` bool: which states reject the step from particles scored ``qs_before`` to ones
        scored ``qs_after`` (both every member's Q, ``[M, A, N]``)."""
        reject = torch.zeros(qs_after.shape[1], dtype=torch.bool, device=qs_after.device)
        if "disagreement" in self.rules:
            reject |= qs_after.std(0).mean(-1) > self.threshold
        if "gain" in self.rules:
            gain = (aggregate_members(qs_after, q_agg) - aggregate_members(qs_before, q_agg)).mean(-1)
            reject |= gain < self.gain_fraction * qs_before.std(0).mean(-1)
        # A NaN score is no evidence of progress: stop there too.
        return reject | ~torch.isfinite(qs_after).all(0).all(-1)


@dataclass
class AdaptiveResult:
    particles: Tensor  # [B, N, d] where each state stopped
    steps: Tensor  # [B] int64: accepted steps per state (0 = the reference samples)
    member_q: Tensor  # [M, B, N] every member's Q at the final particles (for the selection)
    forward: int  # critic forward passes over one particle each
    backward: int  # critic backward passes (action gradients) over one particle each


@torch.no_grad()
def adaptive_transport(tensors, shape: closed_form.CriticShape, obs: Tensor, particles: Tensor,
                       max_steps: int, stop: StopRule, *, alpha: float, lr: float, rule: str = "adam",
                       grad_q_agg: str = "mean", q_agg: str = "mean", bandwidth: float | None = None,
                       bandwidth_grad: bool = True, clip: float | None = 1.0) -> AdaptiveResult:
    """Transport ``particles`` ``[B, N, d]`` at ``obs`` ``[B, D]`` for at most ``max_steps`` steps per
    state, stopping each state by ``stop`` (see the module docstring). The critic needs >= 2 members."""
    if shape.members < 2:
        raise ValueError("an adaptive budget needs a critic ensemble of at least 2 members (method.num_critics)")
    b, n, _ = particles.shape
    x = particles.clone()
    steps = torch.zeros(b, dtype=torch.int64, device=x.device)
    obs_proj = closed_form.project_obs(tensors, shape, obs)           # [M, B, 1, H0]
    # Every member's Q at the start, and the drive of the first step: one forward + backward each.
    qs, score = closed_form.q_and_action_grad(tensors, shape, obs_proj, x, grad_q_agg, members=True)
    final_q = qs.clone()
    forward = backward = b * n
    live = torch.arange(b, device=x.device)                           # states still moving
    xs, m, v = x, torch.zeros_like(x), torch.zeros_like(x)            # their particles and Adam moments
    for t in range(1, max_steps + 1):
        phi = closed_form.svgd_direction(xs, score, alpha, bandwidth, bandwidth_grad)
        proposal, m, v = closed_form.particle_update(xs, phi, m, v, t, lr, rule, clip)
        # The proposal's score (a forward pass); the next step's drive (a backward pass) only for
        # the states that keep it, and none after the last step.
        qs_new, saved = closed_form.q_forward(tensors, shape, obs_proj[:, live], proposal)
        forward += live.numel() * n
        keep = ~stop.rejects(qs, qs_new, q_agg)
        moved = live[keep]
        x[moved], final_q[:, moved] = proposal[keep], qs_new[:, keep]
        steps[moved] += 1
        live, xs, qs, m, v = moved, proposal[keep], qs_new[:, keep], m[keep], v[keep]
        if live.numel() == 0:
            break
        if t < max_steps:
            _, score = closed_form.action_grad(tensors, shape, qs, closed_form.keep_states(saved, keep, n), grad_q_agg)
            backward += live.numel() * n
    return AdaptiveResult(x, steps, final_q, forward, backward)
