"""FQL: Flow Q-Learning (Park, Li, Levine, 2025; reference code github seohongpark/fql, agents/fql.py).

A one-step policy ``mu(s, z)`` (noise z ~ N(0, I) in, action out) is trained to maximise Q while
staying close to the reference flow by DISTILLATION: for the same noise z, mu(s, z) regresses onto the
flow's K-step Euler output. The actor loss is

    alpha * || mu(s, z) - ODE_flow(s, z) ||^2  -  Q(s, clip(mu(s, z)))      (Q: mean over members)

and the critic's TD target takes next actions from mu. The reference code trains the flow with the
same loss sum; its flow-matching term involves neither mu nor Q, so pretraining the flow first and
freezing it (what ``vgf pretrain-policy`` does) optimises the same objective offline. Online (``vgf
finetune``) the flow keeps learning on each update's batch, as the code's does (``vgfcli.online_flow``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.methods.base import Agent, Batch, Info, MethodConfig, best_by_q, frozen_call
from vgfcli.nn.flow import FlowPolicy, euler_sample
from vgfcli.nn.networks import MLP
from vgfcli.nn.noise import normal
from vgfcli.nn.particles import aggregate_members


@dataclass
class FQLConfig(MethodConfig):
    """FQL hyperparameters; defaults are the reference code's ``agents/fql.py:get_config``."""

    # Hidden widths of each critic member and of the one-step policy.
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    onestep_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Critic ensemble size (the code uses 2).
    num_critics: int = 2
    # Activation of critic and one-step policy (flax's default in the code: gelu).
    activation: str = "gelu"
    # LayerNorm in the critic ("post": Dense -> act -> LN, the code's order) and in the one-step policy.
    critic_norm: str | None = "post"
    actor_norm: str | None = None
    # Adam learning rate of every network (one optimiser in the code).
    lr: float = 3e-4
    discount: float = 0.99
    # Polyak rate of the target critic.
    tau: float = 0.005
    # True: the target blends the critic's parameters from BEFORE this update's optimiser step, as
    # the code does (agents/fql.py target_update reads self.network.params, the pre-update state,
    # and writes into the new network); False: the updated parameters.
    polyak_before_step: bool = True
    # Member aggregation of the target Q: mean | min.
    q_agg: str = "mean"
    # Distillation weight; must be tuned per task (the paper: cube 300, puzzle 1000, antmaze 10).
    alpha: float = 10.0
    # Divide the Q term by stopgrad(mean |Q|) (off in the code's default config).
    normalize_q_loss: bool = False

    # Reference flow (frozen; filled from the pretrained policy by the stage).
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    flow_steps: int = 10
    # Visual encoder of the method's own networks on camera frames (impala_small, ...; each network its
    # own, as in the reference code); from critic.encoder, null there = the policy's. None: state vectors.
    encoder: str | None = None
    seed: int = 0
    # Which of the reference README's commands the per-task settings (conf/protocol) come from: base (the
    # offline commands) | off2on (its offline-to-online commands, whose alphas differ on some tasks:
    # humanoidmaze 100, antsoccer 30, pen/door/hammer-cloned 1000; conf/protocol/fql-off2on_<family>.yaml).
    variant: str = "base"

    def validate(self) -> None:
        """Raise ValueError naming a value the method cannot run with (run once, as the Config is made)."""
        self.check_numbers(positive=("lr",), at_least_one=("num_critics", "flow_steps"),
                           not_negative=("alpha", "seed"), unit=("discount", "tau"))
        self.check_choices(q_agg=("min", "mean"), variant=("base", "off2on"))


Config = FQLConfig


def distillation_target(flow, obs: Tensor, noise: Tensor, steps: int) -> Tensor:
    """What mu(s, z) regresses onto: the frozen flow's K-step Euler integration of the SAME noise."""
    with torch.no_grad():
        return euler_sample(flow, obs, noise, steps)


class FQLAgent(Agent):
    """Critic ensemble + one-step policy distilled from the frozen reference flow."""

    name = "fql"
    config_class = FQLConfig
    checkpoint_parts = ("critic", "target_critic", "onestep", "optimizer", "reference")

    def __init__(self, cfg: FQLConfig, obs_dim: int, act_dim: int, device, reference: FlowPolicy, chunk: int = 1):
        super().__init__(cfg, obs_dim, act_dim, device, reference, chunk)
        self._critic_and_target()
        self.onestep = self.encoded(MLP((self.feature_dim, act_dim), cfg.onestep_hidden, act_dim, cfg.activation,
                                        cfg.actor_norm).to(self.device))
        self.optimizer = torch.optim.Adam([*self.critic.parameters(), *self.onestep.parameters()], lr=cfg.lr)

    def policy(self, obs: Tensor, noise: Tensor) -> Tensor:
        """mu(s, z), unclipped (the distillation loss sees it raw, as in the code)."""
        return self.onestep(obs, noise)

    def _noise(self, lead: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return normal((*lead, self.act_dim), generator, self.device)

    # --- contract ---------------------------------------------------------------------------------

    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        cfg = self.cfg
        obs, next_obs = batch["observations"], batch["next_observations"]
        b = obs.shape[0]
        with torch.no_grad():
            next_actions = self.policy(next_obs, self._noise((b,), self.generator)).clamp(-1, 1)
            next_q = aggregate_members(self.target_critic(next_obs, next_actions), cfg.q_agg)
            y = batch["rewards"] + self.bootstrap_discount * batch["masks"] * next_q
        features = self.critic.encode(obs)  # frames: once, for the critic's loss and the actor's Q term
        qs = self.critic.head(features, batch["actions"])
        critic_loss = (qs - y).square().mean()

        noise = self._noise((b,), self.generator)
        target = distillation_target(self.reference, obs, noise, cfg.flow_steps)
        actions = self.policy(obs, noise)
        distill_loss = (actions - target).square().mean()
        # Only the actor moves through this term: the critic's weights take no gradient from it.
        q = frozen_call(self.critic.head, features.detach(), actions.clamp(-1, 1)).mean(0)
        q_loss = -q.mean()
        if cfg.normalize_q_loss:
            q_loss = q_loss / q.detach().abs().mean().clamp_min(1e-6)
        actor_loss = cfg.alpha * distill_loss + q_loss
        info = {"critic_loss": critic_loss.detach(), "q_mean": qs.detach().mean(), "target_mean": y.mean(),
                "actor_loss": actor_loss.detach(), "distill_loss": distill_loss.detach(),
                "q_loss": q_loss.detach(), "policy_q": q.detach().mean()}
        return critic_loss + actor_loss, info

    def update(self, batch: Batch) -> Info:
        loss, info = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.step_and_blend(self.optimizer, before_step=self.cfg.polyak_before_step)
        self.step += 1
        return info

    @torch.no_grad()
    def act(self, obs: Tensor, *, num_particles: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """mu(s, z) for fresh noise, clipped; with ``num_particles`` N > 1 the best of N by online Q."""
        generator = generator or self.act_generator
        n = num_particles or 1
        obs, single = self.batched(obs)
        cand = self.policy(obs.unsqueeze(1), self._noise((obs.shape[0], n), generator)).clamp(-1, 1)
        actions = best_by_q(self.critic, obs, cand, self.cfg.q_agg)
        self.compute.add(obs.shape[0], obs.shape[0] * n * (n > 1))  # the selection's critic forwards
        return actions[0] if single else actions


Agent = FQLAgent
create = FQLAgent.create

__all__ = ["FQLConfig", "Config", "FQLAgent", "Agent", "create", "distillation_target"]
