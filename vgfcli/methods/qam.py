"""QAM: Q-learning with Adjoint Matching (Li, Levine et al., 2026; reference code github
ColinQiyangLi/qam, agents/qam.py).

A policy flow v_theta(s, x, t) is fine-tuned toward pi*(a|s) ~ pi_b(a|s) exp(tau_inv Q(s, a)), where
pi_b is the frozen reference flow v_b, by ADJOINT MATCHING (Domingo-Enrich et al.):

1. Memoryless SDE rollout with v_theta (T = flow_steps, h = 1/T, t_k = k h,
   sigma_k = sqrt(2 (1 - t_k + h) / (t_k + h))):
       x_{k+1} = x_k + h [2 v_theta(s, x_k, t_k) - x_k / (t_k + h)] + sqrt(h) sigma_k eps_k,
   the last step a deterministic Euler step with v_b. All states are constants for the loss.
2. Lean adjoint, backward from a_T = -tau_inv grad_a mean_i Q'_i(s, clip(x_T)) (target critic):
       a_k = a_{k+1} + h J_k^T a_{k+1},   J_k = d/dx [2 v_b(s, x, t_k + h) - x / (t_k + h)] at x_k,
   vector-Jacobian products through the frozen v_b only.
3. Loss sum_k || (2 / sigma_k) (v_theta(s, x_k, t_k) - v_b(s, x_k, t_k)) + sigma_k a_k ||^2, summed
   over steps, mean over the batch.

The critic ensemble (10 members) regresses onto y = r + gamma^H mask (mean_i Q'_i - rho std_i Q'_i)
at next actions from the policy (K-step Euler ODE of v_theta, clipped). One Adam over every trained
network, global grad-norm clipping 1.0, as the code.

The code also trains the BC flow jointly and keeps an EMA copy of it ("target_actor_slow") for the
adjoint and the loss. Here the BC flow is pretrained and FROZEN offline, so its EMA equals it; online
(``vgf finetune``) the flow learns again (``vgfcli.online_flow``) and its EMA is a copy of its own
(``slow``, Polyak at ``tau``), read wherever the code reads the EMA or the online BC flow.

Variants (the code's QAM_FQL / QAM_EDIT runs, ``variant``):
- "fql": a one-step policy mu(s, z) distilled from v_theta's ODE output for the same noise while
  maximising Q (fql_alpha * ||mu - ODE_theta||^2 - Q); it acts and gives the TD target's next actions.
- "edit": a tanh-Gaussian edit policy e(s, a) on top of the flow's action, a + edit_scale * e, trained
  to maximise Q with a SAC-style entropy bonus and a learned temperature.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vgfcli.methods.base import Agent, Batch, EvalSetting, Info, MethodConfig, best_by_q, frozen_call
from vgfcli.nn.adjoint import adjoint_matching_loss, lean_adjoint, memoryless_rollout, sigma_schedule
from vgfcli.nn.flow import FlowPolicy, euler_sample
from vgfcli.nn.networks import MLP, activation_fn
from vgfcli.nn.noise import normal
from vgfcli.nn.particles import value_grad


@dataclass
class QAMConfig(MethodConfig):
    """QAM hyperparameters. Defaults: ``agents/qam.py:get_config`` with the OGBench manipulation
    settings of ``experiments/reproduce.py`` (10 critics, rho 0.5, inverse temperature 1)."""

    # --- critic -----------------------------------------------------------------------------------
    # Hidden widths of each critic member (`value_hidden_dims`; the stage fills it from critic.hidden).
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Critic ensemble size (`num_qs`; reproduce.py uses 10).
    num_critics: int = 10
    # Activation of the critic, the variants' networks and a reference flow built by `create`
    # (flax's MLP default in the code: gelu, tanh approximation).
    activation: str = "gelu"
    # LayerNorm in the critic: "post" (Dense -> act -> LN, the code's MLP with value_layer_norm), "pre"
    # or None.
    critic_norm: str | None = "post"
    # Discount per environment step; TD targets use discount ** chunk.
    discount: float = 0.99
    # Polyak rate of the target critic.
    tau: float = 0.005
    # Pessimism of the TD target: mean_i Q'_i - rho * std_i Q'_i over members (population std, as
    # jnp.std). reproduce.py: 0.5 (0 for humanoidmaze).
    rho: float = 0.5
    # True: the target blends the critic's parameters from BEFORE this update's optimiser step (the
    # code's target_update reads the pre-update params); False: the updated ones.
    polyak_before_step: bool = True

    # --- optimisation -----------------------------------------------------------------------------
    # Adam learning rate of the one optimiser over critic, policy flow and variant networks (`lr`).
    lr: float = 3e-4
    # Global grad-norm clipping over all of them (`clip_grad` -> 1.0); None = off.
    grad_clip: float | None = 1.0

    # --- adjoint matching -------------------------------------------------------------------------
    # Inverse temperature of pi* ~ pi_b exp(tau_inv Q) (`inv_temp`). get_config says 0.3; the paper
    # runs use 1 for cube-double, scene and cube-quadruple (3 for puzzle-3x3/cube-triple, 30 for
    # puzzle-4x4). 0 = act with the reference flow.
    tau_inv: float = 1.0
    # Terminal adjoint from the TARGET critic (`use_target_grad`); False: the online critic.
    use_target_grad: bool = True
    # Differentiate Q at clip(x_T, -1, 1) (`clip_adj`); False: at the raw x_T.
    clip_adj: bool = True
    # Policy velocity = v_b + v_theta (v_theta learns a residual, `residual`); False: v_theta alone.
    residual: bool = False
    # Initial weights of v_theta: "fresh" (the code: its own random init, same architecture as the
    # reference) or "reference" (start from v_b's weights, as in adjoint-matching fine-tuning).
    policy_init: str = "fresh"
    # Candidates per state for the TD target's next actions and for acting; the one with the largest
    # mean-member online Q is kept (`best_of_n`).
    best_of_n: int = 1

    # --- variants ---------------------------------------------------------------------------------
    # "base" (QAM), "fql" (QAM-F: one-step policy distilled from v_theta) or "edit" (QAM-E).
    variant: str = "base"
    # QAM-F distillation weight (`fql_alpha`; reproduce.py: 300 for scene and cube-triple).
    fql_alpha: float = 300.0
    # QAM-E: scale of the edit added to the flow action (`edit_scale`; reproduce.py: 0.1 mostly).
    edit_scale: float = 0.1
    # QAM-E target entropy; None = -edit_target_entropy_multiplier * act_dim (the code's rule).
    edit_target_entropy: float | None = None
    edit_target_entropy_multiplier: float = 0.5

    # --- reference flow (frozen; filled from the pretrained policy by the stage) ------------------
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Euler steps K of every flow integration, and T of the adjoint-matching SDE.
    flow_steps: int = 10
    # Visual encoder of the method's own networks on camera frames (impala_small, ...; each network its
    # own, as in the reference code); from critic.encoder, null there = the policy's. None: state vectors.
    encoder: str | None = None
    # Seed of the agent's random streams (training noise; acting has its own stream).
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming a value the method cannot run with (run once, as the Config is made)."""
        self.check_numbers(positive=("lr", "grad_clip", "edit_target_entropy_multiplier"),
                           at_least_one=("num_critics", "best_of_n", "flow_steps"),
                           # fql_alpha and edit_scale: reproduce.py uses 0 on some domains
                           not_negative=("rho", "tau_inv", "fql_alpha", "edit_scale", "seed"),
                           unit=("discount", "tau"))
        self.check_choices(variant=VARIANTS, policy_init=("fresh", "reference"))
        self.require((not (self.residual and self.policy_init == "reference"),
                      "residual=true learns v_theta as a residual on v_b: use policy_init=fresh"),
                     (self.variant != "edit" or len(self.actor_hidden) > 0,
                      "variant=edit needs a non-empty actor_hidden"))


Config = QAMConfig

VARIANTS = ("base", "fql", "edit")


# ---------------------------------------------------------------------------------------------------
# TD target


def pessimistic_value(qs: Tensor, rho: float) -> Tensor:
    """``[M, *lead] -> [*lead]``: mean - rho * std over members (population std, ``jnp.std``'s)."""
    return qs.mean(0) - rho * qs.std(0, correction=0)


# ---------------------------------------------------------------------------------------------------
# Variant networks


class EditPolicy(nn.Module):
    """QAM-E's tanh-Gaussian e(s, a) in (-1, 1)^d: the code's TanhNormal on an MLP whose last hidden
    layer is activated, with separate mean and state-dependent log-std heads (log-std clipped to
    [-20, 2])."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], activation: str):
        super().__init__()
        self.trunk = MLP((obs_dim, act_dim), hidden[:-1], hidden[-1], activation)
        self.act = activation_fn(activation)
        self.mean = MLP(hidden[-1], (), act_dim)
        self.log_std = MLP(hidden[-1], (), act_dim)

    def forward(self, obs: Tensor, actions: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        """A reparameterised sample and its log-probability (with the tanh correction)."""
        feat = self.act(self.trunk(obs, actions))
        mean, log_std = self.mean(feat), self.log_std(feat).clamp(-20.0, 2.0)
        eps = normal(mean.shape, generator, mean.device, mean.dtype)
        u = mean + log_std.exp() * eps
        log_prob = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), the stable form tfp's Tanh bijector uses
        log_prob = log_prob - (2 * (math.log(2.0) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob


def _fresh_copy(flow: nn.Module) -> nn.Module:
    """Same architecture as ``flow``, re-initialised like ``MLP`` (Xavier uniform, zero biases): the
    code builds the policy flow from the BC flow's definition with its own random init."""
    clone = copy.deepcopy(flow)
    with torch.no_grad():
        for m in clone.modules():
            if isinstance(m, nn.Linear):
                bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                m.weight.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Conv2d):  # a pixel flow's encoder (``nn.encoders``' initialisers)
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
    return clone


# ---------------------------------------------------------------------------------------------------
# Agent


class QAMAgent(Agent):
    """Critic ensemble + policy flow fine-tuned by adjoint matching against the frozen reference."""

    name = "qam"
    config_class = QAMConfig
    reference_takes_activation = True
    # The variants' networks are None when unused, and then left out.
    checkpoint_parts = ("critic", "target_critic", "policy", "onestep", "edit", "optimizer", "reference",
                        "slow_reference")
    reference_grad_clip = 1.0  # qam.py: clip_by_global_norm(1.0) before the one Adam (l.385-393)
    random_warmup_under = ("balanced",)  # main.py l.298-300: np.random.rand(action_dim) * 2 - 1 while i < 5000

    def __init__(self, cfg: QAMConfig, obs_dim: int, act_dim: int, device, reference: FlowPolicy,
                 chunk: int = 1):
        super().__init__(cfg, obs_dim, act_dim, device, reference, chunk)
        dev = self.device
        self._critic_and_target()
        policy = copy.deepcopy(self.reference) if cfg.policy_init == "reference" else _fresh_copy(self.reference)
        self.policy = policy.train().requires_grad_(True)
        self.onestep = self.edit = self.log_alpha = None
        trained = [*self.critic.parameters(), *self.policy.parameters()]
        if cfg.variant == "fql":
            # The code's one-step actor is the flow's network without the time input.
            self.onestep = self.encoded(MLP((self.feature_dim, act_dim), cfg.actor_hidden, act_dim,
                                            cfg.activation).to(dev))
            trained += list(self.onestep.parameters())
        elif cfg.variant == "edit":
            self.edit = self.encoded(EditPolicy(self.feature_dim, act_dim, cfg.actor_hidden, cfg.activation).to(dev))
            self.log_alpha = nn.Parameter(torch.zeros((), device=dev))  # LogParam, alpha = 1 at start
            trained += [*self.edit.parameters(), self.log_alpha]
        self.trained = trained
        self.optimizer = torch.optim.Adam(trained, lr=cfg.lr)
        # The code's EMA of the BC flow ("target_actor_slow", Polyak at tau, l.244-245): the frozen flow
        # itself offline; a copy of its own once the flow learns online (``start_reference_training``).
        self.slow_reference: nn.Module | None = None
        self.target_entropy = (cfg.edit_target_entropy if cfg.edit_target_entropy is not None
                               else -cfg.edit_target_entropy_multiplier * act_dim)

    @property
    def slow(self) -> nn.Module:
        """The BC flow as the adjoint, the loss and acting read it: its EMA online, the frozen flow offline."""
        return self.reference if self.slow_reference is None else self.slow_reference

    def start_reference_training(self) -> None:
        self.slow_reference = copy.deepcopy(self.reference).requires_grad_(False)

    @torch.no_grad()
    def reference_updated(self) -> None:
        for slow, online in zip(self.slow_reference.parameters(), self.reference.parameters()):
            slow.lerp_(online, self.cfg.tau)

    # --- policies ---------------------------------------------------------------------------------

    def policy_velocity(self, policy_obs: Tensor, reference_obs: Tensor):
        """The fine-tuned velocity field v(., x, t): v_theta, or v_b + v_theta with ``residual``, at
        the states as the policy flow and the reference read them (``*_obs``: the states, or each
        one's features, shaped to broadcast against x). It ignores its first argument, so that frames
        are encoded once per network, not at every step of an integration."""
        policy, reference, residual = self.policy.head, self.slow.head, self.cfg.residual

        def velocity(_obs: Tensor, x: Tensor, t: Tensor) -> Tensor:
            v = policy(policy_obs, x, t)
            return v + reference(reference_obs, x, t) if residual else v

        return velocity

    def _noise(self, lead: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return normal((*lead, self.act_dim), generator, self.device)

    @torch.no_grad()
    def candidates(self, obs: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``[B, n, d]`` clipped actions of the agent's policy at ``obs`` ``[B, obs_dim]`` (the code's
        sample_actions before best-of-n): the one-step policy (fql), else the K-step Euler ODE of the
        policy flow (of the reference when tau_inv = 0), plus the scaled edit (edit)."""
        cfg = self.cfg
        obs = obs.unsqueeze(1)
        noise = self._noise((obs.shape[0], n), generator)
        if cfg.variant == "fql":
            return self.onestep(obs, noise).clamp(-1, 1)
        reference_obs = self.slow.encode(obs)  # frames: each flow encodes them once for all K steps
        velocity = (self.slow.head if cfg.tau_inv == 0
                    else self.policy_velocity(self.policy.encode(obs), reference_obs))
        actions = euler_sample(velocity, reference_obs, noise, cfg.flow_steps)
        if cfg.variant == "edit":
            edit, _ = self.edit(obs, actions, generator)
            actions = (actions + cfg.edit_scale * edit).clamp(-1, 1)
        return actions

    def _select(self, obs: Tensor, n: int, generator: torch.Generator) -> Tensor:
        cand = self.candidates(obs, n, generator)
        return best_by_q(self.critic, obs, cand, "mean")

    # --- losses -----------------------------------------------------------------------------------

    @torch.no_grad()
    def target(self, batch: Batch) -> tuple[Tensor, Info]:
        """TD target ``[B]``: r + gamma^H mask (mean - rho std) of the target critic at the policy's
        next actions (best of ``best_of_n`` by the online critic)."""
        next_obs = batch["next_observations"]
        next_actions = self._select(next_obs, self.cfg.best_of_n, self.generator)
        next_qs = self.target_critic(next_obs, next_actions)
        y = batch["rewards"] + self.bootstrap_discount * batch["masks"] * pessimistic_value(next_qs, self.cfg.rho)
        return y, {"target_mean": y.mean(), "next_q_std": next_qs.std(0, correction=0).mean()}

    def adjoint_states(self, obs: Tensor, policy_obs: Tensor, reference_obs: Tensor, critic_obs: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """Rollout states x_0..x_{T-1} ``[T, B, d]``, their lean adjoints ``[T, B, d]`` and a_T at the
        states ``obs``, given as each network reads them (``*_obs``; the online critic's)."""
        cfg, steps = self.cfg, self.cfg.flow_steps
        b = obs.shape[0]
        with torch.no_grad():
            x0 = self._noise((b,), self.generator)
            noises = self._noise((max(steps - 1, 0), b), self.generator)
            xs = memoryless_rollout(self.policy_velocity(policy_obs, reference_obs), self.slow.head,
                                    reference_obs, x0, noises, steps)
            if cfg.use_target_grad:
                critic_obs = self.target_critic.encode(obs)
        head = (self.target_critic if cfg.use_target_grad else self.critic).head

        def q_fn(o, a):
            return head(o, a.clamp(-1, 1) if cfg.clip_adj else a)

        grad, _ = value_grad(q_fn, critic_obs, xs[-1], "mean")          # grad_a sum_b mean_i Q_i
        a_final = -cfg.tau_inv * grad
        return xs[:-1], lean_adjoint(self.slow.head, reference_obs, xs, a_final, steps), a_final

    def actor_losses(self, obs: Tensor, critic_obs: Tensor) -> tuple[Tensor, Info]:
        """Adjoint-matching loss of v_theta plus the variant's loss, and metrics. ``critic_obs``: the
        states as the online critic reads them (constant here: the actor's terms never train it)."""
        cfg, steps = self.cfg, self.cfg.flow_steps
        policy_obs = self.policy.encode(obs)  # frames: once, with the gradient the policy's encoder learns by
        with torch.no_grad():
            reference_obs = self.slow.encode(obs)
        xs, adjoints, a_final = self.adjoint_states(obs, policy_obs.detach(), reference_obs, critic_obs)
        t = (torch.arange(steps, device=obs.device, dtype=xs.dtype) / steps).reshape(steps, 1, 1)
        v_theta = self.policy.head(policy_obs.unsqueeze(0), xs, t)          # [1, B, .]: broadcast over steps
        if cfg.residual:
            diff = v_theta
        else:
            with torch.no_grad():
                v_base = self.slow.head(reference_obs.unsqueeze(0), xs, t)
            diff = v_theta - v_base
        adj_loss = adjoint_matching_loss(diff, adjoints, sigma_schedule(steps, xs.dtype, xs.device))
        abs_a = a_final.abs()
        info = {"adj_loss": adj_loss.detach(), "adj_mean": abs_a.mean(), "adj_max": abs_a.max(),
                "adj_std": abs_a.std(correction=0), "adjoint_norm": adjoints[0].norm(dim=-1).mean()}
        loss = adj_loss
        if cfg.variant == "fql":
            noise = self._noise((obs.shape[0],), self.generator)
            with torch.no_grad():
                flow_actions = euler_sample(self.policy_velocity(policy_obs.detach(), reference_obs), reference_obs,
                                            noise, steps)
            mu = self.onestep(obs, noise)
            distill = (flow_actions - mu).square().mean()
            # frozen_call: the Q term moves the actor only, never the critic (the code's params=None).
            q_loss = -frozen_call(self.critic.head, critic_obs, mu.clamp(-1, 1)).mean(0).mean()
            loss = loss + q_loss + cfg.fql_alpha * distill
            info.update(fql_distill_loss=distill.detach(), fql_q_loss=q_loss.detach())
        elif cfg.variant == "edit":
            with torch.no_grad():
                flow_actions = euler_sample(self.policy_velocity(policy_obs.detach(), reference_obs), reference_obs,
                                            self._noise((obs.shape[0],), self.generator), steps)
            edit, log_prob = self.edit(obs, flow_actions, self.generator)
            edited = (flow_actions + cfg.edit_scale * edit).clamp(-1, 1)
            q_loss = -frozen_call(self.critic.head, critic_obs, edited).mean(0).mean()
            alpha = self.log_alpha.exp()
            entropy_loss = (log_prob * alpha.detach()).mean()
            entropy = -log_prob.detach().mean()
            alpha_loss = alpha * (entropy - self.target_entropy)
            loss = loss + q_loss + entropy_loss + alpha_loss
            info.update(edit_q_loss=q_loss.detach(), edit_entropy_loss=entropy_loss.detach(),
                        edit_alpha_loss=alpha_loss.detach(), edit_entropy=entropy, edit_alpha=alpha.detach())
        info["actor_loss"] = loss.detach()
        return loss, info

    # --- contract ---------------------------------------------------------------------------------

    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        y, target_info = self.target(batch)
        critic_obs = self.critic.encode(batch["observations"])  # frames: once, for its loss and the actor's
        qs = self.critic.head(critic_obs, batch["actions"])                # [M, B]
        critic_loss = (qs - y).square().mean()                             # mean over members too
        actor_loss, actor_info = self.actor_losses(batch["observations"], critic_obs.detach())
        q = qs.detach()
        info = {"critic_loss": critic_loss.detach(), "q_mean": q.mean(), "q_max": q.max(), "q_min": q.min(),
                **target_info, **actor_info}
        return critic_loss + actor_loss, info

    def update(self, batch: Batch) -> Info:
        loss, info = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            info["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.trained, self.cfg.grad_clip).detach()
        self.step_and_blend(self.optimizer, before_step=self.cfg.polyak_before_step)
        self.step += 1
        return info

    @torch.no_grad()
    def act(self, obs: Tensor, *, num_particles: int | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """The policy's action for ``obs`` ``[B, obs_dim]`` (or ``[obs_dim]``); with ``num_particles``
        N > 1 (default ``best_of_n``) the best of N candidates by mean-member online Q. Needs no
        gradients, so it runs under ``torch.inference_mode`` as is."""
        n = int(num_particles or self.cfg.best_of_n)
        obs, single = self.batched(obs)
        actions = self._select(obs, n, generator or self.act_generator)
        self.compute.add(obs.shape[0], obs.shape[0] * n * (n > 1))  # the selection's critic forwards
        return actions[0] if single else actions

    def eval_settings(self, evaluate_cfg) -> list[EvalSetting]:
        n = int(evaluate_cfg.get("particles") or self.cfg.best_of_n)
        label = self.name if self.cfg.variant == "base" else f"{self.name}-{self.cfg.variant}"
        return [EvalSetting(label, "policy", n, {"num_particles": n})]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.log_alpha is not None:
            state["log_alpha"] = self.log_alpha.detach().clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "slow_reference" in state and self.slow_reference is None:  # a fine-tuned agent: its EMA too
            self.start_reference_training()
        super().load_state_dict(state)
        if self.log_alpha is not None:
            with torch.no_grad():
                self.log_alpha.copy_(state["log_alpha"])


Agent = QAMAgent
create = QAMAgent.create

__all__ = ["QAMConfig", "Config", "QAMAgent", "Agent", "create", "EditPolicy", "sigma_schedule",
           "memoryless_rollout", "lean_adjoint", "adjoint_matching_loss", "pessimistic_value"]
