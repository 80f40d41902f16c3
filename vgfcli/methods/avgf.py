"""A-VGF: amortised Value Gradient Flow (reference code github ryanxhr/vgf, agents/a_vgf.py).

VGF moves particles along grad_a Q, one critic backward pass per particle and step. A-VGF learns that
gradient instead: a field network g(s, a) -> R^d is regressed (MSE) onto grad_a of the members' MEAN Q
at the DATASET's actions, and particles move along g with no kernel (phi = g, no repulsion, no 1/N):

    field loss = mean || g(s, a) - grad_a mean_m Q_m(s, a) ||^2          (a from the dataset)

so acting costs one field forward per particle and step and no critic backward pass at all; the critic
is evaluated once per particle to pick the best. Everything else is VGF's: N reference samples from
the frozen flow, L Adam steps on -phi (learning rate ``vgf_lr``) with the box clamp, the TD target
``r + discount * mask * mean_particles(agg_members(Q_target(s', a^L)))``.

The reference code's choices kept here:
- Every optimiser clips its gradient to global norm 1.0 (``optax.clip_by_global_norm(1.0)``): the
  critic's, the field's, and the particles' Adam. The particles' norm is taken over the whole
  ``[B, N, d]`` tensor of the TD target's transport; acting transports one state per call in the code,
  so there the norm is per state (``field_transport(per_state=True)``), which batching must not change.
- The field regresses onto the critic's gradient BEFORE this update's critic step (all three losses
  read the old parameters), ungated by the target's transport.
- The reference code also trains its BC flow in the same loop; here the reference flow is pretrained
  and frozen offline (``vgf pretrain-policy``), as for every method in this package: its loss involves
  neither the critic nor the field, so the objective is the same. Online (``vgf finetune``) it learns on
  each update's batch, its gradient clipped at norm 1.0 as the code's optimiser does
  (``vgfcli.online_flow``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.budgets import explore_steps, parse_budgets
from vgfcli.methods.base import Agent, Batch, EvalSetting, Info, MethodConfig, best_by_q, frozen_call
from vgfcli.nn.closed_form import particle_update
from vgfcli.nn.flow import FlowPolicy, euler_sample
from vgfcli.nn.networks import MLP
from vgfcli.nn.noise import normal
from vgfcli.nn.particles import aggregate_members, aggregate_particles, td_target, value_grad


@dataclass
class AVGFConfig(MethodConfig):
    """A-VGF hyperparameters. Defaults: the reference code's run_scripts/run_a_vgf_off2on_ogbench.sh
    (N = 5, L_train = 5, vgf_lr 0.1, train_q_agg min) over agents/a_vgf.py:get_config."""

    # --- critic and gradient field ----------------------------------------------------------------
    # Hidden widths of each critic member and of the gradient field g (the code's value_hidden_dims).
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 2
    activation: str = "relu"
    # LayerNorm in the critic and the field: "pre" (Dense -> LN -> act, the code's MLP), "post", None.
    critic_norm: str | None = "pre"
    # Adam learning rates of the critic and of the field (both the code's value_lr).
    critic_lr: float = 3e-4
    field_lr: float = 3e-4
    # Global-norm clip of every optimiser's gradient (critic, field and the particles' Adam); None = off.
    grad_clip: float | None = 1.0
    discount: float = 0.99
    tau: float = 0.005
    # The target blends the critic's weights from before this update's step (the code's order).
    polyak_before_step: bool = True
    # Member aggregation of Q in the TD target and in picking the best particle (train_q_agg).
    q_agg: str = "min"
    # Particle aggregation of the next-state values in the TD target: mean | max (train_particle_select).
    particle_agg: str = "mean"
    # Normalise the regression target grad_a Q to unit length per sample (q_grad_norm; off in the code).
    normalize_field_target: bool = False

    # --- reference flow (frozen; filled from the pretrained policy by the stage) ------------------
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    flow_steps: int = 10

    # --- particle transport along g ---------------------------------------------------------------
    num_particles: int = 5
    train_steps: int = 5  # L of the TD target's transport (train_vgf_steps)
    test_steps: int = 3  # L when acting outside `vgf evaluate` (which sweeps evaluate.budgets)
    vgf_lr: float = 0.1  # Adam's learning rate on the particles
    # Visual encoder of the method's own networks on camera frames (impala_small, ...; each network its
    # own, as in the reference code); from critic.encoder, null there = the policy's. None: state vectors.
    encoder: str | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming a value the method cannot run with (run once, as the Config is made)."""
        self.check_numbers(positive=("critic_lr", "field_lr", "vgf_lr", "grad_clip"),
                           at_least_one=("num_critics", "num_particles", "flow_steps"),
                           not_negative=("train_steps", "test_steps", "seed"), unit=("discount", "tau"))
        self.check_choices(q_agg=("min", "mean"), particle_agg=("mean", "max"))


Config = AVGFConfig


def clip_global_norm(g: Tensor, max_norm: float | None, per_state: bool) -> Tensor:
    """``optax.clip_by_global_norm``: ``g * max_norm / max(|g|, max_norm)``, the norm over all of ``g``
    ``[B, N, d]`` or, with ``per_state``, over each state's ``[N, d]``."""
    if max_norm is None:
        return g
    norm = g.square().sum((1, 2), keepdim=True).sqrt() if per_state else g.square().sum().sqrt()
    return g * (max_norm / torch.maximum(norm, torch.as_tensor(max_norm, dtype=g.dtype)))


def field_transport(field, obs: Tensor, particles: Tensor, steps: int, lr: float, clip: float | None,
                    per_state: bool) -> Tensor:
    """``particles`` ``[B, N, d]`` at ``obs`` ``[B, D]`` after ``steps`` Adam steps on -g(s, a), the
    gradient clipped to global norm ``clip`` (see ``clip_global_norm``), then the [-1, 1] clamp."""
    x = particles
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for t in range(1, steps + 1):
        phi = -clip_global_norm(-field(obs.unsqueeze(1), x), clip, per_state)
        x, m, v = particle_update(x, phi, m, v, t, lr, "adam", 1.0)
    return x


class AVGFAgent(Agent):
    """Critic ensemble + gradient field + frozen reference flow. See the module docstring."""

    name = "avgf"
    config_class = AVGFConfig
    reference_takes_activation = True
    eval_knobs = ("particles", "budgets")
    reference_grad_clip = 1.0  # a_vgf.py's actor_bc: clip_by_global_norm(1.0) before Adam (l.441)
    checkpoint_parts = ("critic", "target_critic", "field", "optimizer", "field_optimizer", "reference")

    def __init__(self, cfg: AVGFConfig, obs_dim: int, act_dim: int, device, reference: FlowPolicy, chunk: int = 1):
        super().__init__(cfg, obs_dim, act_dim, device, reference, chunk)
        self._critic_and_target()
        self.field = self.encoded(MLP((self.feature_dim, act_dim), cfg.critic_hidden, act_dim, cfg.activation,
                                      cfg.critic_norm).to(self.device))
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.field_optimizer = torch.optim.Adam(self.field.parameters(), lr=cfg.field_lr)

    def reference_samples(self, obs: Tensor, n: int, generator: torch.Generator) -> Tensor:
        noise = normal((obs.shape[0], n, self.act_dim), generator, obs.device)
        with torch.no_grad():  # frames: the reference's encoder, once for the N samples and K steps
            return euler_sample(self.reference.head, self.reference.encode(obs).unsqueeze(1), noise,
                                self.cfg.flow_steps)

    def moved(self, obs: Tensor, start: Tensor, steps: int, per_state: bool) -> Tensor:
        """``start`` moved ``steps`` steps along the field at ``obs`` (frames encoded once by the
        field's encoder, then shared by every particle and step)."""
        cfg = self.cfg
        return field_transport(self.field.head, self.field.encode(obs), start, steps, cfg.vgf_lr, cfg.grad_clip,
                               per_state=per_state)

    def field_target(self, features: Tensor, actions: Tensor) -> Tensor:
        """``grad_a mean_m Q_m(s, a)`` ``[B, d]`` at the dataset's pairs, the critic held constant;
        ``features``: the states as the critic's head reads them."""
        grad, _ = value_grad(lambda o, a: frozen_call(self.critic.head, o, a), features, actions, "mean")
        if self.cfg.normalize_field_target:
            grad = grad / (grad.norm(dim=-1, keepdim=True) + 1e-8)
        return grad.detach()

    # --- contract ---------------------------------------------------------------------------------

    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        cfg = self.cfg
        next_obs, obs, actions = batch["next_observations"], batch["observations"], batch["actions"]
        with torch.no_grad():
            start = self.reference_samples(next_obs, cfg.num_particles, self.generator)
            moved = self.moved(next_obs, start, cfg.train_steps, per_state=False)
            next_qs = self.target_critic(next_obs.unsqueeze(1), moved)            # [M, B, N]
            y = td_target(next_qs, batch["rewards"], batch["masks"], self.bootstrap_discount, cfg.q_agg,
                          cfg.particle_agg)
        features = self.critic.encode(obs)  # frames: once, for the critic's loss and the field's target
        qs = self.critic.head(features, actions)
        critic_loss = (qs - y).square().sum(0).mean()
        score = self.field_target(features.detach(), actions)
        field = self.field(obs, actions)
        field_loss = (field - score).square().mean()
        info = {"critic_loss": critic_loss.detach(), "q_mean": qs.detach().mean(), "target_mean": y.mean(),
                "field_loss": field_loss.detach(), "score_abs_mean": score.abs().mean(),
                "next_q_mean": aggregate_particles(aggregate_members(next_qs, cfg.q_agg), "mean").mean(),
                "particle_shift": (moved - start).abs().mean()}
        if cfg.num_particles > 1:
            info["bc_flow_var"] = start.var(dim=1).mean()
            info["vgf_var"] = moved.var(dim=1).mean()
        return critic_loss + field_loss, info

    def update(self, batch: Batch) -> Info:
        loss, info = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.field_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the two losses share no parameters: each network gets its own loss's gradient
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(self.field.parameters(), self.cfg.grad_clip)
        self.step_and_blend(self.optimizer, self.field_optimizer, before_step=self.cfg.polyak_before_step)
        self.step += 1
        return info

    @torch.no_grad()
    def act(self, obs: Tensor, *, steps: int | None = None, num_particles: int | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """N reference samples moved ``steps`` steps along g, then the particle of largest online Q."""
        cfg = self.cfg
        steps = cfg.test_steps if steps is None else int(steps)
        n = cfg.num_particles if num_particles is None else int(num_particles)
        obs, single = self.batched(obs)
        start = self.reference_samples(obs, n, generator or self.act_generator)
        moved = self.moved(obs, start, steps, per_state=True)
        b = obs.shape[0]
        self.compute.add(b, forward=b * n if n > 1 else 0, field=b * n * steps)
        self.compute.add_steps(steps, b)
        actions = best_by_q(self.critic, obs, moved, cfg.q_agg)
        return actions[0] if single else actions

    def explore_options(self, budget: str | None = None) -> dict:
        """Online data collection: as VGF's (``vgfcli.budgets.explore_steps``), best-of-N over
        reference samples with no step along g by default, as the reference main.py collects."""
        return {"steps": explore_steps(budget, self.cfg.train_steps)}

    @classmethod
    def check_explore_budget(cls, budget: str | None) -> None:
        explore_steps(budget, 0)

    def eval_settings(self, evaluate_cfg) -> list[EvalSetting]:
        """One row per number of steps L in ``evaluate.budgets`` (N = ``evaluate.particles``, null =
        ``num_particles``). A-VGF has no adaptive rows: its steps need no critic pass to stop on."""
        n = int(evaluate_cfg.get("particles") or self.cfg.num_particles)
        budgets = parse_budgets(evaluate_cfg.get("budgets") or [self.cfg.test_steps])
        named = [b for b in budgets if isinstance(b, str)]
        if named:
            raise ValueError(f"avgf takes budgets that are steps >= 0 (adaptive budgets are vgf's), got {named}")
        return [EvalSetting(f"L={b}", f"budget_{b}", n, {"steps": b, "num_particles": n}, {"budget": b})
                for b in budgets]


Agent = AVGFAgent
create = AVGFAgent.create

__all__ = ["AVGFConfig", "Config", "AVGFAgent", "Agent", "create", "field_transport", "clip_global_norm"]
