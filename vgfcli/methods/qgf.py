"""QGF: Q-Guided Flow (Zhou et al., "Test-Time Gradient Guidance of Flow Policies in RL"; reference code
github zhouzypaul/qgf, agents/qgf.py).

All policy improvement happens at test time. Training never samples the policy: the reference flow
(behaviour cloning, ``vgf pretrain-policy``) is frozen offline (online, ``vgf finetune`` trains it on each
update's batch as the code does, ``vgfcli.online_flow``) and an IQL critic is fit on the data:

    V(s)    <- expectile regression (expectile 0.9) toward agg_members Q_target(s, a)  at dataset actions
    Q_i(s,a) <- r + discount^H * mask * V(s')                                           (twin Q, H = chunk)

Acting guides the reference's Euler integration with the critic's action gradient. For k = 0..K-1,
t = k / K:

    v      = v_ref(s, a, t)
    a1_hat = clip(a + (1 - t) * stopgrad(v))         one Euler step to t = 1: a clean-action estimate
    g      = grad_a agg_members Q_target(s, a1_hat)  evaluated at the estimate, applied at a
    a     <- a + (v + w * g) / K

then clip to the action box. ``w = 0`` is the plain reference policy. Variants (``guidance_point``):
"clean" (the above, the code's default), "jacobian" (the exact gradient of Q(a1_hat(a)) with respect to
a, through the velocity; the code's ``apply_jacobian``) and "noisy" (the gradient at a itself, the QFQL
baseline). Best-of-N: N guided samples per state, the one with the largest Q is executed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.methods.base import Agent, Batch, EvalSetting, Info, MethodConfig, best_by_q
from vgfcli.nn.flow import FlowPolicy, VelocityFn, euler_sample
from vgfcli.nn.networks import MLP
from vgfcli.nn.noise import normal
from vgfcli.nn.particles import aggregate_members


@dataclass
class QGFConfig(MethodConfig):
    """QGF hyperparameters. Defaults: the reference code's ``agents/qgf.py:get_config`` (its OGBench
    manipulation scripts widen the networks to 1024, use batch 1024, discount 0.999 and chunks of 5:
    those belong to presets)."""

    # --- critic: twin Q and the value network V ---------------------------------------------------
    # Hidden widths of each Q member AND of V (the code builds both from `value_network_kwargs`).
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Number of Q members (`num_qs`).
    num_critics: int = 2
    # Hidden activation of Q, V (and of a reference flow built by `create`): relu | gelu | swish.
    # The code's default is flax's gelu (tanh approximation).
    activation: str = "gelu"
    # LayerNorm in Q and V: "pre" (Dense -> LN -> act on every hidden layer, the code's MLP with
    # layer_norm=True), "post" (FQL's order) or None.
    critic_norm: str | None = "pre"
    # Adam learning rate of the Q ensemble (`critic_lr`).
    critic_lr: float = 3e-4
    # Adam learning rate of V (`value_lr`; the code keeps a separate optimiser per network).
    value_lr: float = 3e-4
    # Discount factor; TD targets use discount ** chunk.
    discount: float = 0.99
    # Polyak rate of the target Q ensemble.
    tau: float = 0.005
    # Expectile of the V regression: residuals Q - V > 0 weigh `expectile`, the others 1 - expectile.
    expectile: float = 0.9
    # Member aggregation of Q in V's regression target (`q_aggregation`): min | mean.
    q_agg: str = "min"
    # Which Q ensemble V regresses toward: "target" (the code) | "online".
    value_critic: str = "target"
    # Reduction of the squared TD errors over Q members: "mean" (the code: jnp.mean over members and
    # batch) | "sum" (sum over members, mean over batch). Adam makes the two steps nearly identical.
    critic_loss_members: str = "mean"
    # True: the target blends the critic's parameters from BEFORE this update's step (the code's
    # `target_update(self.critic, ...)` reads the old state); False: after it.
    polyak_before_step: bool = True
    # Global-norm gradient clipping per optimiser; None = none (the code clips nothing).
    max_grad_norm: float | None = None

    # --- reference flow (frozen) ------------------------------------------------------------------
    # Hidden widths of a reference flow built by `create` when none is given (load its weights then).
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Euler steps K of (guided) sampling (`denoise_steps`).
    flow_steps: int = 10

    # --- guidance (acting) ------------------------------------------------------------------------
    # Guidance weight w, constant over the K steps. The code's default (`sample_actions`'s
    # guidance_weight and main.py's online_explorative_guidance_weight) is 1.0; its OGBench
    # manipulation scripts sweep 0.004 ... 0.12 (evaluate.guidance).
    guidance: float = 1.0
    # Where the Q gradient is taken: "clean" (at a1_hat = clip(a + (1 - t) stopgrad(v)), the code's
    # `one_euler_step_approx` without Jacobian) | "jacobian" (gradient of Q(a1_hat(a)) w.r.t. a through
    # v, the code's `apply_jacobian`) | "noisy" (at a itself, the code's `noisy`).
    guidance_point: str = "clean"
    # Which Q ensemble guides the samples and ranks best-of-N candidates: "target" (the code) | "online".
    guide_critic: str = "target"
    # Member aggregation of that Q (the code uses `q_aggregation` for it too): min | mean.
    guide_q_agg: str = "min"
    # Guided samples per state when acting; the one with the largest Q is executed (`bfn_values`).
    num_particles: int = 1

    # Visual encoder of the method's own networks on camera frames (impala_small, ...; each network its
    # own, as in the reference code); from critic.encoder, null there = the policy's. None: state vectors.
    encoder: str | None = None
    # Seed of the agent's random streams (training draws nothing; acting has its own stream).
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming a value the method cannot run with (run once, as the Config is made)."""
        self.check_numbers(positive=("critic_lr", "value_lr", "max_grad_norm"),
                           at_least_one=("num_critics", "num_particles", "flow_steps"),
                           not_negative=("guidance", "seed"), unit=("discount", "tau"), open_unit=("expectile",))
        self.check_choices(q_agg=_AGG, guide_q_agg=_AGG, value_critic=_CRITICS, guide_critic=_CRITICS,
                           guidance_point=GUIDANCE_POINTS, critic_loss_members=("mean", "sum"))


Config = QGFConfig

_AGG = ("min", "mean")
_CRITICS = ("target", "online")
GUIDANCE_POINTS = ("clean", "jacobian", "noisy")


# ---------------------------------------------------------------------------------------------------
# Losses


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Elementwise asymmetric square: ``expectile * diff^2`` where diff > 0, else ``(1 - expectile) * diff^2``."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff.square()


def q_target(next_v: Tensor, rewards: Tensor, masks: Tensor, discount: float) -> Tensor:
    """IQL's TD target ``r + discount * mask * V(s')`` (``discount`` = the bootstrap discount)."""
    return rewards + discount * masks * next_v


# ---------------------------------------------------------------------------------------------------
# Guided sampling

QFn = Callable[[Tensor, Tensor], Tensor]  # (obs, actions [..., d]) -> aggregated Q [...]


def guidance_grad(velocity_fn: VelocityFn, q_fn: QFn, obs: Tensor, x: Tensor, t: Tensor,
                  point: str = "clean", clip: float | None = 1.0) -> tuple[Tensor, Tensor]:
    """The reference velocity ``v(s, x, t)`` and the guidance gradient at ``x`` (both detached).

    Gradients are taken with respect to the actions alone (``torch.autograd.grad``): no network
    parameter gets a ``.grad``.
    """
    def box(a):
        return a.clamp(-clip, clip) if clip is not None else a

    with torch.enable_grad():
        if point == "jacobian":
            # d Q(a1_hat(x)) / dx = J^T grad Q(a1_hat): J = I + (1 - t) dv/dx, zero on clipped coordinates.
            xg = x.detach().requires_grad_(True)
            v = velocity_fn(obs, xg, t)
            (g,) = torch.autograd.grad(q_fn(obs, box(xg + (1.0 - t) * v)).sum(), xg)
            return v.detach(), g
        with torch.no_grad():
            v = velocity_fn(obs, x, t)
        if point == "clean":
            at = box(x + (1.0 - t) * v)
        elif point == "noisy":
            at = x
        else:
            raise ValueError(f"unknown guidance point '{point}' (expected clean, jacobian or noisy)")
        at = at.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(q_fn(obs, at).sum(), at)
    return v, g


def guided_sample(velocity_fn: VelocityFn, q_fn: QFn, obs: Tensor, noise: Tensor, steps: int,
                  weight: float, point: str = "clean", clip: float | None = 1.0) -> Tensor:
    """K Euler steps of ``v + weight * grad Q`` from ``noise``, then clip to ``[-clip, clip]``.

    ``obs`` broadcasts against ``noise`` as in ``euler_sample`` (``[B, 1, D]`` with ``[B, N, d]``);
    ``q_fn(obs, actions)`` returns one (member-aggregated) Q per action. ``weight = 0`` IS
    ``euler_sample`` of the reference, bit for bit.
    """
    if weight == 0:
        with torch.no_grad():
            return euler_sample(velocity_fn, obs, noise, steps, clip)

    def guided_velocity(obs: Tensor, x: Tensor, t: Tensor) -> Tensor:
        v, g = guidance_grad(velocity_fn, q_fn, obs, x, t, point, clip)
        return v + weight * g

    # euler_sample's own loop (same times and update), with the guided velocity field.
    return euler_sample(guided_velocity, obs, noise, steps, clip)


# ---------------------------------------------------------------------------------------------------
# Agent


class QGFAgent(Agent):
    """IQL critic (twin Q, target Q, V) + frozen reference flow guided by grad Q when acting."""

    name = "qgf"
    config_class = QGFConfig
    reference_takes_activation = True
    eval_knobs = ("particles", "guidance")
    checkpoint_parts = ("critic", "target_critic", "value", "critic_optimizer", "value_optimizer", "reference")
    checkpoint_generators = ("act_generator",)

    def __init__(self, cfg: QGFConfig, obs_dim: int, act_dim: int, device, reference: FlowPolicy,
                 chunk: int = 1):
        super().__init__(cfg, obs_dim, act_dim, device, reference, chunk)
        self._critic_and_target()
        self.value = self.encoded(MLP(self.feature_dim, cfg.critic_hidden, 1, cfg.activation,
                                      cfg.critic_norm).to(self.device))
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)

    # --- pieces -----------------------------------------------------------------------------------

    def _critic(self, which: str):
        return self.target_critic if which == "target" else self.critic

    def _q_fn(self, which: str, agg: str, features: Tensor) -> QFn:
        """Q of the guiding critic at the states it has encoded once (``features``, shaped as the
        sampler's condition): the function ignores the condition it is called with, which is the
        reference's view of the states."""
        head = self._critic(which).head
        return lambda _obs, actions: aggregate_members(head(features, actions), agg)

    def v(self, obs: Tensor) -> Tensor:
        """V(s) ``[*lead]``."""
        return self.value(obs).squeeze(-1)

    @torch.no_grad()
    def target(self, batch: Batch) -> tuple[Tensor, Info]:
        """TD target ``[B]`` of the Q members: ``r + discount^chunk * mask * V(s')``."""
        next_v = self.v(batch["next_observations"])
        y = q_target(next_v, batch["rewards"], batch["masks"], self.bootstrap_discount)
        return y, {"target_mean": y.mean(), "next_v_mean": next_v.mean()}

    # --- contract ---------------------------------------------------------------------------------

    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        """Q loss + V loss. Both read the state before this update (old V in the TD target, the
        target Q in V's), as the code's three losses do; they touch disjoint parameters."""
        cfg = self.cfg
        obs, actions = batch["observations"], batch["actions"]
        y, info = self.target(batch)
        qs = self.critic(obs, actions)                                        # [M, B]
        sq = (qs - y).square()
        critic_loss = (sq.mean(0) if cfg.critic_loss_members == "mean" else sq.sum(0)).mean()

        with torch.no_grad():
            q_for_v = self.target_critic(obs, actions) if cfg.value_critic == "target" else qs.detach()
            q_for_v = aggregate_members(q_for_v, cfg.q_agg)
        v = self.v(obs)
        adv = q_for_v - v
        value_loss = expectile_loss(adv, cfg.expectile).mean()

        info = {"critic_loss": critic_loss.detach(), "value_loss": value_loss.detach(),
                "q_mean": qs.detach().mean(), "v_mean": v.detach().mean(), "adv_mean": adv.detach().mean(),
                "q_std_members": qs.detach().std(0).mean() if qs.shape[0] > 1 else qs.new_zeros(()),
                **info}
        return critic_loss + value_loss, info

    def update(self, batch: Batch) -> Info:
        cfg = self.cfg
        loss, info = self.losses(batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            info["critic_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.critic.parameters(),
                                                                      cfg.max_grad_norm).detach()
            info["value_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.value.parameters(),
                                                                     cfg.max_grad_norm).detach()
        self.step_and_blend(self.critic_optimizer, self.value_optimizer, before_step=cfg.polyak_before_step)
        self.step += 1
        return info

    def act(self, obs: Tensor, *, guidance: float | None = None, num_particles: int | None = None,
            generator: torch.Generator | None = None, guidance_point: str | None = None) -> Tensor:
        """Actions ``[B, act_dim]`` for ``obs`` ``[B, obs_dim]`` (or ``[act_dim]`` for ``[obs_dim]``).

        ``guidance`` (w), ``num_particles`` (best-of-N) and ``guidance_point`` default to the config.
        May run under ``torch.no_grad`` or ``torch.inference_mode``: the guidance re-enables the
        gradients it needs (with respect to the actions only). With N = 1 the noise is drawn exactly
        as ``act_reference`` draws it, so ``guidance=0`` reproduces the reference policy.
        """
        cfg = self.cfg
        w = float(cfg.guidance if guidance is None else guidance)
        n = int(cfg.num_particles if num_particles is None else num_particles)
        point = cfg.guidance_point if guidance_point is None else guidance_point
        if n < 1 or point not in GUIDANCE_POINTS or not math.isfinite(w):
            raise ValueError(f"bad act options: num_particles={n}, guidance={w}, guidance_point={point!r}")
        generator = generator or self.act_generator
        critic = self._critic(cfg.guide_critic)
        with torch.inference_mode(False):
            obs, single = self.batched(obs)
            # Tensors made under inference_mode cannot enter autograd: use a normal copy.
            obs = obs.clone() if obs.is_inference() else obs
            with torch.no_grad():  # frames: each network encodes them once, for every step and particle
                flow_obs, critic_obs = self.reference.encode(obs), critic.encode(obs)
            if n == 1:
                noise = normal((obs.shape[0], self.act_dim), generator, self.device)
            else:  # [B, 1, D] vs [B, N, d]
                flow_obs, critic_obs = flow_obs.unsqueeze(1), critic_obs.unsqueeze(1)
                noise = normal((obs.shape[0], n, self.act_dim), generator, self.device)
            q_fn = self._q_fn(cfg.guide_critic, cfg.guide_q_agg, critic_obs)
            actions = guided_sample(self.reference.head, q_fn, flow_obs, noise, cfg.flow_steps, w, point)
            # guidance: a critic forward + backward per particle at each Euler step; then the selection
            b, guided = obs.shape[0], cfg.flow_steps * n * (w != 0)
            self.compute.add(b, b * (guided + n * (n > 1)), b * guided)
            if n > 1:
                actions = best_by_q(critic.head, critic_obs[:, 0], actions, cfg.guide_q_agg)
        return actions[0] if single else actions

    def eval_settings(self, evaluate_cfg) -> list[EvalSetting]:
        """One row per guidance weight of ``evaluate.guidance`` (none: the config's weight alone),
        each with ``evaluate.particles`` candidates per state (null: the config's num_particles, 1 by
        default, as the code's ``bfn_values``)."""
        weights = evaluate_cfg.get("guidance") or [self.cfg.guidance]
        n = int(evaluate_cfg.get("particles") or self.cfg.num_particles)
        rows = []
        for w in weights:
            w = float(w)
            rows.append(EvalSetting(f"w={w:g}", f"guidance_{w:g}", n, {"guidance": w, "num_particles": n},
                                    {"guidance": w}))
        return rows


Agent = QGFAgent
create = QGFAgent.create

__all__ = ["QGFConfig", "Config", "QGFAgent", "Agent", "create", "guided_sample", "guidance_grad",
           "expectile_loss", "q_target", "GUIDANCE_POINTS"]
