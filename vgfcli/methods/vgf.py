"""VGF: Value Gradient Flow (Xu, Hu, Sojoudi, Zhang, ICLR 2026; reference code github ryanxhr/vgf).

Behaviour-regularised RL as transport of the reference distribution toward pi*(a|s) ~ exp(Q(s,a)/alpha).
There is no policy network: the policy is N particles drawn from the reference flow (trained beforehand
by flow matching, ``vgfcli.nn.flow``, and frozen offline) and moved for L steps along the online critic's value
gradient (``vgfcli.nn.particles``). The budget L x step size is the regulariser.

Learning: only the critic ensemble learns, by TD regression onto

    y = r + discount * mask * agg_particles( agg_members( Q_target(s', a_i^L) ) ),

where a_i^L are N reference samples at s' transported for ``train_steps`` steps. The reference samples
come either from K Euler steps of the flow or from a ``ParticleBank`` of precomputed samples (the flow is
frozen, so its samples can be drawn once and reused; a batch then needs ``indices``).

Acting: N reference samples, ``test_steps`` transport steps, then the particle with the largest online
Q (``test_steps = 0`` is best-of-N; N = 1 with 0 steps is the plain reference policy).

Online fine-tuning (``vgf finetune``) trains the reference flow again on each update's batch, as the
reference code does (``vgfcli.online_flow``; no bank then: samples come from the flow as it learns), and
collects with best-of-N over fresh reference samples and NO transport step, as the reference main.py does (``explore_options``; ``online.explore_budget`` moves them
L or L_train steps instead). ``variant=off2on`` takes the per-task settings of the reference's off2on
script (N = 10, L_train = 5, vgf_lr 0.1, alpha 1.0; discount and train_q_agg per family).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.budgets import RULES, explore_steps, parse_budgets  # noqa: F401 (the last two re-exported)
from vgfcli.methods.base import Batch, Info, MethodConfig
from vgfcli.methods.vgf_acting import VGFActing
from vgfcli.methods.vgf_bank import ReferenceBank
from vgfcli.nn import closed_form
from vgfcli.nn.adaptive import StopRule, adaptive_transport
from vgfcli.nn.bank import ParticleBank, RollingBank, build_bank, fill_bank, refresh_bank  # noqa: F401 (re-exported)
from vgfcli.nn.compiled import Compiled
from vgfcli.nn.flow import FlowPolicy, euler_sample
from vgfcli.nn.networks import CastCopy, EnsembleCritic
from vgfcli.nn.noise import normal
from vgfcli.nn.particles import aggregate_particles, td_target, transport
from vgfcli.nn.precision import autocast, cpu_has_bf16, resolve_amp


@dataclass
class VGFConfig(MethodConfig):
    """VGF hyperparameters. Defaults: the reference code's OGBench manipulation runs
    (run_scripts/run_vgf_off_ogbench.sh); per-task values (alpha, vgf_lr, discount, q_agg) belong to
    the task presets."""

    # --- critic -----------------------------------------------------------------------------------
    # Hidden widths of each critic member.
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Number of critic members (ensemble size).
    num_critics: int = 2
    # Hidden activation of critic (and of a reference flow built by `create`): relu | gelu | swish.
    activation: str = "relu"
    # LayerNorm in the critic: "pre" (Dense -> LN -> act, the VGF code), "post" (FQL's order), or None.
    critic_norm: str | None = "pre"
    # Adam learning rate of the critic.
    critic_lr: float = 3e-4
    # Discount factor (0.995 for the long-horizon mazes).
    discount: float = 0.99
    # Polyak rate of the target critic.
    tau: float = 0.005
    # True: the target is blended with the critic's parameters from BEFORE this update's optimiser
    # step (what the reference code does, as FQL's and QAM's do); False: with the updated parameters.
    polyak_before_step: bool = True
    # Member aggregation of Q in the TD target and in action selection: min | mean
    # (`train_q_agg`; min for antmaze/D4RL, mean for manipulation and humanoidmaze).
    q_agg: str = "mean"
    # Particle aggregation of the next-state values in the TD target: mean | max
    # (`train_particle_select`).
    particle_agg: str = "mean"

    # --- reference flow (frozen) ------------------------------------------------------------------
    # Hidden widths of a reference flow built by `create` when none is given (load its weights then).
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Euler steps K of reference sampling.
    flow_steps: int = 10

    # --- particle transport -----------------------------------------------------------------------
    # Number of particles N per state (training targets and acting).
    num_particles: int = 10
    # Transport steps L for the TD target (`train_vgf_steps`).
    train_steps: int = 3
    # Transport steps at acting time (`eval_vgf_steps`); independent of train_steps.
    test_steps: int = 3
    # Step size: Adam's learning rate (rule "adam") or eps of a <- a + eps * phi (rule "plain").
    vgf_lr: float = 0.05
    # Temperature alpha of pi* ~ exp(Q / alpha): divides the value-gradient term of phi.
    alpha: float = 0.5
    # Member aggregation of Q whose action gradient drives the particles: mean | min (`vgf_q_agg`).
    grad_q_agg: str = "mean"
    # "adam" (reference code: -phi into a fresh Adam per transport) or "plain" (paper: a += eps*phi).
    step_rule: str = "adam"
    # Fixed kernel bandwidth h; None = per-state median heuristic.
    bandwidth: float | None = None
    # Differentiate the median bandwidth inside the repulsive term, as the reference code does (its
    # h is computed from x inside the function it differentiates; the median's tie-break is
    # jnp.median's stable sort). False: h constant, textbook SVGD (the paper's equation).
    bandwidth_grad: bool = True

    # --- adaptive budget (vgfcli.nn.adaptive) ---------------------------------------------------------
    # Transport budget of the TD target: "fixed" (train_steps steps for every state) or an adaptive
    # rule with train_steps as its most: "auto" (both rules below), "auto_std" (disagreement only),
    # "auto_gain" (diminishing return only). Acting picks its budgets in `evaluate.budgets`.
    train_budget: str = "fixed"
    # Disagreement rule: a state stops when the members' std of Q at its particles exceeds this
    # quantile of the members' std at dataset actions (acting: measured once after training and
    # stored with the critic; train_budget: at the current batch's actions). Needs num_critics >= 2.
    stop_quantile: float = 0.9
    # Diminishing-return rule: a state stops when a step's gain in Q (mean over its particles) is
    # below stop_gain x the members' std of Q at its particles.
    stop_gain: float = 0.5

    # --- acting -----------------------------------------------------------------------------------
    # Particle selection when acting: max (argmax online Q) | softmax (sample ~ exp(Q / temp)) | random.
    select: str = "max"
    # Temperature of select = softmax.
    softmax_temp: float = 1.0

    # --- speed ------------------------------------------------------------------------------------
    # Take the transport's gradients (grad_a Q, the repulsion through the median) in closed form
    # (vgfcli.nn.closed_form) instead of with torch.autograd (vgfcli.nn.particles): the same numbers
    # up to float rounding, less overhead, and a graph torch.compile can fuse.
    closed_form: bool = True
    # Matmuls of the gradient-free-of-weights passes (reference sampling, particle transport) in
    # bfloat16: "off" | "bf16" | "auto" (bf16 where the device has native bf16 matmul, else off).
    # TD targets, losses, weights, the choice among particles and the adaptive budget's rules (which
    # compare Q differences of the size of bf16's error in Q) stay fp32. Only pays on native bf16 matmul
    # (AVX512-BF16/AMX CPUs, GPUs); on AVX2-only CPUs it is ~50x SLOWER. auto is the default since
    # its score check (quick preset, cube-single task2, 3 seeds: bf16 within fp32's seed spread).
    amp: str = "auto"
    # torch.compile the update and acting: with closed_form, the transport and the target critic as
    # one graph, the critic's loss forward and backward, and reference sampling + transport + choice
    # when acting. Compiled once per shape (tens of seconds); falls back to eager where
    # torch.compile cannot run. The stages set it from critic.compile (train-critic) and
    # evaluate.compile (evaluate), not from the method section.
    compile: bool = False
    # Visual encoder of the method's own networks on camera frames (impala_small, ...; each network its
    # own, as in the reference code); from critic.encoder, null there = the policy's. None: state vectors.
    encoder: str | None = None
    # Seed of the agent's random streams (training noise; acting has its own stream).
    seed: int = 0
    # Reference samples kept per dataset next state (the particle bank; `prepare` builds it once,
    # since the reference is frozen). 0 = run K Euler steps of the flow at every update instead.
    bank_size: int = 32
    # The reference code draws fresh samples at every update; the bank renews itself on a rolling
    # schedule instead so that a long run does not reuse one draw per state: every
    # `bank_refresh_every` updates the next `bank_refresh_rows` rows are redrawn (the whole bank is new
    # after num_states / bank_refresh_rows refreshes). 0 = never renewed.
    bank_refresh_every: int = 100
    bank_refresh_rows: int = 256
    # Which of the reference code's run scripts the per-task settings (conf/protocol) come from: base
    # (run_vgf_off_ogbench.sh: N = 10, L_train 3) | off2on (run_vgf_off2on_ogbench.sh, the script of its
    # online fine-tuning runs: N = 10, L_train 5, vgf_lr 0.1, alpha 1.0 in every block, and per-family
    # discount and train_q_agg; conf/protocol/vgf-off2on_<family>.yaml).
    variant: str = "base"

    def validate(self) -> None:
        """Raise ValueError naming a value the method cannot run with (run once, as the Config is made)."""
        self.check_numbers(positive=("critic_lr", "vgf_lr", "alpha", "bandwidth", "softmax_temp"),
                           at_least_one=("num_critics", "num_particles", "flow_steps", "bank_refresh_rows"),
                           not_negative=("train_steps", "test_steps", "stop_gain", "bank_size", "bank_refresh_every",
                                         "seed"),
                           unit=("discount", "tau", "stop_quantile"))
        self.check_choices(q_agg=_AGG_MEMBERS, grad_q_agg=_AGG_MEMBERS, particle_agg=("mean", "max"),
                           step_rule=("adam", "plain"), select=("max", "softmax", "random"),
                           amp=("off", "bf16", "auto"), variant=("base", "off2on"), train_budget=("fixed", *RULES))
        self.require((self.bank_size == 0 or self.bank_size >= self.num_particles,
                      "bank_size must be 0 (no bank) or at least num_particles"),
                     (self.train_budget == "fixed" or (self.closed_form and self.num_critics >= 2),
                      "an adaptive train_budget needs closed_form=true and num_critics >= 2"))


Config = VGFConfig

_AGG_MEMBERS = ("min", "mean")


# ---------------------------------------------------------------------------------------------------
# TD target


def _moved_next_q(online, target, shape, online_obs: Tensor, target_obs: Tensor, start: Tensor, steps: int,
                  options: dict) -> tuple[Tensor, Tensor]:
    """The TD target's particles (``start`` moved along the online critic) and the target critic's Q
    ``[M, B, N]`` at them: one pure function of tensors, so ``torch.compile`` sees it whole. Each critic
    reads the next states as it sees them (``*_obs``: the states, or its own encoder's features)."""
    moved = closed_form.transport(online, shape, online_obs, start, steps, **options)
    return moved, closed_form.q_values(target, shape, target_obs, moved)


# ---------------------------------------------------------------------------------------------------
# Agent


class VGFAgent(ReferenceBank, VGFActing):
    """Critic ensemble + frozen reference flow + particle transport. See the module docstring."""

    name = "vgf"
    config_class = VGFConfig
    reference_takes_activation = True
    eval_knobs = ("particles", "budgets", "budget_max", "stop_quantile", "stop_gain")
    checkpoint_parts = ("critic", "target_critic", "optimizer", "reference")

    def __init__(self, cfg: VGFConfig, obs_dim: int, act_dim: int, device, reference: FlowPolicy, chunk: int = 1):
        super().__init__(cfg, obs_dim, act_dim, device, reference, chunk)
        self.amp = resolve_amp(cfg.amp, self.device)  # what "auto" means on this device
        if self.amp == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            warnings.warn("amp=bf16 on a CPU without native bf16 matmul (no AVX512-BF16/AMX): "
                          "bf16 matmuls run tens of times slower than fp32 here", stacklevel=3)
        self._critic_and_target()
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.bank: ParticleBank | None = None  # set by prepare() (or set_bank)
        self._rolling: RollingBank | None = None  # set by prepare(): the bank renews itself
        self._bank_obs, self._bank_at = None, None  # the bank's states and its refresh count
        # Compiled pieces of the update and of acting (cfg.compile), built lazily on first use.
        self._compiled: dict[str, Compiled] = {}
        self._compile_spent = 0.0  # compile seconds of pieces dropped by set_compile
        self._first_step = 0  # the step this process starts from (a resume loads a later one)
        self._lowp: dict = {}  # name -> (weights' identity and versions, their bf16 copy)

    def _compiled_fn(self, name: str, fn) -> Compiled:
        compiled = self._compiled.get(name)
        if compiled is None or compiled.fn is not fn:  # new, or its module was re-made (a bf16 copy)
            spent = compiled.seconds if compiled is not None else 0.0
            compiled = self._compiled[name] = Compiled(fn, self.cfg.compile, name)
            compiled.add_seconds(spent)
        return compiled

    @property
    def compile_seconds(self) -> float:
        """Wall seconds spent in first calls of compiled code (where torch.compile built it)."""
        return self._compile_spent + sum(c.seconds for c in self._compiled.values())

    @property
    def compiles(self) -> bool:
        return True

    def set_compile(self, on: bool) -> None:
        if bool(on) != bool(self.cfg.compile):
            self._compile_spent = self.compile_seconds  # the cost already paid stays on the record
            self.cfg.compile = bool(on)
            self._compiled = {}  # rebuilt lazily with the new switch

    # --- pieces -----------------------------------------------------------------------------------

    def reference_samples(self, obs: Tensor, n: int, indices: Tensor | None = None,
                          generator: torch.Generator | None = None) -> Tensor:
        """``[B, n, d]`` reference samples at ``obs`` ``[B, *obs_shape]``: from the bank when one is
        set and ``indices`` (bank rows) are given, else by K Euler steps of the frozen flow (frames
        encoded once, by the reference's own encoder)."""
        generator = generator or self.generator
        if self.bank is not None and indices is not None:
            return self.bank.draw(indices, n, generator, device=self.device)
        noise = normal((obs.shape[0], n, self.act_dim), generator, obs.device)
        with torch.no_grad():
            return euler_sample(self._compiled_fn("flow", self._sampling_flow()),
                                self.reference.encode(obs).unsqueeze(1), noise, self.cfg.flow_steps)

    def _sampling_flow(self):
        """The frozen reference flow (on features, for frames) as sampling runs it: itself, or with
        ``amp=bf16`` a bf16 copy made once per weights (re-made after ``load_state_dict``)."""
        flow = self.reference.head
        if self.amp != "bf16":
            return flow
        return self._low_precision("reference", flow, lambda: CastCopy(flow, torch.bfloat16))

    def _low_precision(self, name: str, module, make):
        """``make()``, a bf16 copy of ``module``'s weights, kept until those weights change. Every
        in-place write (an optimiser step, a Polyak blend, a load) bumps a tensor's version counter,
        so the versions say when: the frozen reference is cast once, the online critic once per
        update while training and once for all of acting."""
        key = (id(module), tuple(p._version for p in module.parameters()))
        cached = self._lowp.get(name)
        if cached is not None and cached[0] != key and cached[0][0] == key[0] and isinstance(cached[1], CastCopy):
            # the same module with new weights (the reference flow learning online): refreshed in place,
            # so its compiled users are not rebuilt at every update
            cached = self._lowp[name] = (key, cached[1].refresh_(module))
        elif cached is None or cached[0] != key:
            cached = self._lowp[name] = (key, make())
        return cached[1]

    def transport(self, obs: Tensor, particles: Tensor, steps: int) -> Tensor:
        """Move ``particles`` ``[B, N, d]`` for ``steps`` steps along the ONLINE critic's gradient.
        ``obs``: the states as the critic's head reads them (``critic.encode``'s features, for frames)."""
        if steps == 0:
            return particles
        cfg = self.cfg
        if self._closed_form():
            with torch.no_grad():
                return self._closed_form_transport(obs, particles, steps).float()
        with torch.inference_mode(False), autocast(self.device, self.amp):
            # Tensors made under inference_mode cannot enter autograd: use normal copies.
            obs = obs.clone() if obs.is_inference() else obs
            particles = particles.clone() if particles.is_inference() else particles
            x = transport(self.critic.head, obs.unsqueeze(1), particles, steps, alpha=cfg.alpha,
                          lr=cfg.vgf_lr, rule=cfg.step_rule, q_agg=cfg.grad_q_agg,
                          bandwidth=cfg.bandwidth, bandwidth_grad=cfg.bandwidth_grad)
        return x.float()

    def _closed_form(self, *others) -> bool:
        """cfg.closed_form, where the critics' heads are ``EnsembleCritic`` (whose maths it writes out)."""
        return self.cfg.closed_form and all(isinstance(c.head, EnsembleCritic) for c in (self.critic, *others))

    def _transport_options(self) -> dict:
        cfg = self.cfg
        return dict(alpha=cfg.alpha, lr=cfg.vgf_lr, rule=cfg.step_rule, q_agg=cfg.grad_q_agg,
                    bandwidth=cfg.bandwidth, bandwidth_grad=cfg.bandwidth_grad)

    def _closed_form_transport(self, obs: Tensor, particles: Tensor, steps: int) -> Tensor:
        fn = self._compiled_fn("transport", closed_form.transport)
        return fn(self._online_tensors(), closed_form.CriticShape.of(self.critic.head), obs, particles, steps,
                  **self._transport_options())

    def _online_tensors(self):
        """The online critic's tensors for the transport; bf16 matmuls with ``amp=bf16`` (the weights
        cast once per update, or once for all of acting)."""
        head = self.critic.head
        if self.amp != "bf16":
            return closed_form.critic_tensors(head)
        return self._low_precision("critic", head, lambda: closed_form.critic_tensors(head, torch.bfloat16))

    @torch.no_grad()
    def target(self, batch: Batch, obs_features: Tensor | None = None) -> tuple[Tensor, Info]:
        """TD target ``[B]`` and particle statistics. Frames are encoded once per network: the next
        states by the online critic (its transport), the target critic and (without a bank) the
        reference; ``obs_features`` are the online critic's of the batch's states, where the caller
        has them (the adaptive budget reads Q at the dataset actions)."""
        cfg = self.cfg
        next_obs = batch["next_observations"]
        start = self.reference_samples(next_obs, cfg.num_particles, batch.get("indices"))
        online_next, target_next = self.critic.encode(next_obs), self.target_critic.encode(next_obs)
        info = {}
        if cfg.train_budget != "fixed":  # per-state budget: eager (the shapes change as states stop)
            if obs_features is None:
                obs_features = self.critic.encode(batch["observations"])
            moved, next_qs, info = self._adaptive_target(batch, start, obs_features, online_next, target_next)
        elif self._closed_form(self.target_critic):  # transport + target critic: one graph to compile
            moved, next_qs = self._compiled_fn("moved_next_q", _moved_next_q)(
                self._online_tensors(), closed_form.critic_tensors(self.target_critic.head),
                closed_form.CriticShape.of(self.critic.head), online_next, target_next, start, cfg.train_steps,
                self._transport_options())
        else:
            moved = self.transport(online_next, start, cfg.train_steps)
            next_qs = self._compiled_fn("target_critic", self.target_critic.head)(target_next.unsqueeze(1), moved)
        y = td_target(next_qs, batch["rewards"], batch["masks"], self.bootstrap_discount, cfg.q_agg,
                      cfg.particle_agg)
        info |= {"target_mean": y.mean(), "next_q_mean": next_qs.mean(),
                 "particle_shift": (moved - start).abs().mean()}
        if cfg.num_particles > 1:
            info["bc_flow_var"] = start.var(dim=1).mean()
            info["vgf_var"] = moved.var(dim=1).mean()
        return y, info

    def _adaptive_target(self, batch: Batch, start: Tensor, obs_features: Tensor, online_next: Tensor,
                         target_next: Tensor) -> tuple[Tensor, Tensor, Info]:
        """The TD target's particles under ``train_budget`` (at most train_steps steps per state) and the
        target critic's Q at them. The disagreement ceiling is the ``stop_quantile`` of the online
        members' std at this batch's dataset actions: it follows the critic as it learns."""
        cfg = self.cfg
        # fp32 whatever amp says: the rules compare Q differences of the size of bf16's error in Q
        online, shape = closed_form.critic_tensors(self.critic.head), closed_form.CriticShape.of(self.critic.head)
        at_data = closed_form.q_values(online, shape, obs_features, batch["actions"].unsqueeze(1))
        ceiling = torch.quantile(at_data.float().std(0).reshape(-1), cfg.stop_quantile).item()
        stop = StopRule.named(cfg.train_budget, ceiling, cfg.stop_gain)
        result = adaptive_transport(online, shape, online_next, start, cfg.train_steps, stop,
                                    **self._adaptive_options())
        moved = result.particles.float()
        next_qs = closed_form.q_values(closed_form.critic_tensors(self.target_critic.head), shape, target_next, moved)
        return moved, next_qs, {"target_steps_mean": result.steps.float().mean()}

    def _adaptive_options(self) -> dict:
        options = self._transport_options()
        options["grad_q_agg"] = options.pop("q_agg")
        return options | {"q_agg": self.cfg.q_agg}

    # --- contract ---------------------------------------------------------------------------------

    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        features = self.critic.encode(batch["observations"])  # frames: once, for the loss and the target
        y, info = self.target(batch, features.detach())
        qs = self._compiled_fn("critic", self.critic.head)(features, batch["actions"])  # [M, B]
        loss = (qs - y).square().sum(0).mean()
        info = {"critic_loss": loss.detach(), "q_mean": qs.detach().mean(),
                "q_std_members": qs.detach().std(0).mean() if qs.shape[0] > 1 else qs.new_zeros(()),
                **info}
        return loss, info

    def update(self, batch: Batch) -> Info:
        loss, info = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        critic = self._compiled_fn("critic", self.critic.head)
        start = time.perf_counter()
        loss.backward()
        if critic.active and self.step == self._first_step:  # the compiled backward is built here
            critic.add_seconds(time.perf_counter() - start)
        self.step_and_blend(self.optimizer, before_step=self.cfg.polyak_before_step)
        self.step += 1
        self._maybe_refresh_bank()
        return info

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._first_step = self.step
        self._resume_bank()


Agent = VGFAgent
create = VGFAgent.create

__all__ = ["VGFConfig", "Config", "VGFAgent", "Agent", "create", "ParticleBank", "RollingBank", "build_bank",
           "refresh_bank", "fill_bank", "td_target", "aggregate_particles", "parse_budgets", "explore_steps"]
