"""VGF: Value Gradient Flow (Xu, Hu, Sojoudi, Zhang, ICLR 2026; reference code github ryanxhr/vgf).

Behaviour-regularised RL as transport of the reference distribution toward pi*(a|s) ~ exp(Q(s,a)/alpha).
There is no policy network: the policy is N particles drawn from a FROZEN reference flow (trained
beforehand by flow matching, ``vgfcli.nn.flow``) and moved for L steps along the online critic's value
gradient (``vgfcli.nn.particles``). The budget L x step size is the regulariser.

Learning: only the critic ensemble learns, by TD regression onto

    y = r + discount * mask * agg_particles( agg_members( Q_target(s', a_i^L) ) ),

where a_i^L are N reference samples at s' transported for ``train_steps`` steps. The reference samples
come either from K Euler steps of the flow or from a ``ParticleBank`` of precomputed samples (the flow is
frozen, so its samples can be drawn once and reused; a batch then needs ``indices``).

Acting: N reference samples, ``test_steps`` transport steps, then the particle with the largest online
Q (``test_steps = 0`` is best-of-N; N = 1 with 0 steps is the plain reference policy).

Online fine-tuning (``vgf finetune``) collects with best-of-N over fresh reference samples and NO
transport step, as the reference main.py does (``explore_options``; ``online.explore_budget`` moves them
L or L_train steps instead). ``variant=off2on`` takes the per-task settings of the reference's off2on
script (N = 10, L_train = 5, vgf_lr 0.1, alpha 1.0; discount and train_q_agg per family).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.methods.base import Agent, Batch, EvalSetting, Info, best_by_q, config_from, percentile_at
from vgfcli.nn import closed_form
from vgfcli.nn.adaptive import RULES, StopRule, adaptive_transport, reads_disagreement
from vgfcli.nn.bank import ParticleBank, RollingBank, build_bank, fill_bank, refresh_bank
from vgfcli.nn.compiled import Compiled
from vgfcli.nn.flow import FlowPolicy, euler_sample
from vgfcli.nn.networks import CastCopy, EnsembleCritic
from vgfcli.nn.noise import normal
from vgfcli.nn.particles import aggregate_members, transport
from vgfcli.nn.precision import autocast, cpu_has_bf16, resolve_amp


@dataclass
class VGFConfig:
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
        """Raise ValueError naming a value the method cannot run with (``config_from`` calls it)."""
        _validate(self)


Config = VGFConfig


def explore_steps(budget: str | None, train_steps: int) -> int:
    """Transport steps of online exploration from ``online.explore_budget``: None -> 0 (the reference
    code's best-of-N), ``train`` -> L_train, an integer string -> that L. Shared by VGF and A-VGF."""
    if budget is None:
        return 0
    if str(budget) == "train":
        return int(train_steps)
    try:
        steps = int(str(budget))
    except ValueError:
        steps = -1
    if steps < 0:
        raise ValueError(f"online.explore_budget must be null, train or an integer >= 0, got {budget!r}")
    return steps

_AGG_MEMBERS = ("min", "mean")
_AGG_PARTICLES = ("mean", "max")


def _validate(cfg: VGFConfig) -> None:
    checks = [
        (cfg.q_agg in _AGG_MEMBERS, f"q_agg must be min or mean, not {cfg.q_agg!r}"),
        (cfg.grad_q_agg in _AGG_MEMBERS, f"grad_q_agg must be min or mean, not {cfg.grad_q_agg!r}"),
        (cfg.particle_agg in _AGG_PARTICLES,
         f"particle_agg must be mean or max, not {cfg.particle_agg!r}"),
        (cfg.step_rule in ("adam", "plain"), f"step_rule must be adam or plain, not {cfg.step_rule!r}"),
        (cfg.select in ("max", "softmax", "random"),
         f"select must be max, softmax or random, not {cfg.select!r}"),
        (cfg.amp in ("off", "bf16", "auto"), f"amp must be off, bf16 or auto, not {cfg.amp!r}"),
        (cfg.variant in ("base", "off2on"), f"variant must be base or off2on, not {cfg.variant!r}"),
        (cfg.num_particles >= 1, "num_particles must be >= 1"),
        (cfg.flow_steps >= 1, "flow_steps must be >= 1"),
        (cfg.train_steps >= 0 and cfg.test_steps >= 0, "train_steps and test_steps must be >= 0"),
        (cfg.alpha > 0, "alpha must be > 0"),
        (cfg.num_critics >= 1, "num_critics must be >= 1"),
        (cfg.bank_size == 0 or cfg.bank_size >= cfg.num_particles,
         "bank_size must be 0 (no bank) or at least num_particles"),
        (cfg.bank_refresh_every >= 0, "bank_refresh_every must be >= 0 (0 = never)"),
        (cfg.bank_refresh_rows >= 1, "bank_refresh_rows must be >= 1"),
        (cfg.train_budget in ("fixed", *RULES),
         f"train_budget must be fixed, {', '.join(RULES)}, not {cfg.train_budget!r}"),
        (cfg.train_budget == "fixed" or (cfg.closed_form and cfg.num_critics >= 2),
         "an adaptive train_budget needs closed_form=true and num_critics >= 2"),
        (0.0 < cfg.stop_quantile <= 1.0, "stop_quantile must be in (0, 1]"),
        (cfg.stop_gain >= 0.0, "stop_gain must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


# ---------------------------------------------------------------------------------------------------
# Targets


def aggregate_particles(q: Tensor, how: str) -> Tensor:
    """``[B, N] -> [B]``: mean or max over particles."""
    if how == "mean":
        return q.mean(-1)
    if how == "max":
        return q.max(-1).values
    raise ValueError(f"unknown particle aggregation '{how}' (expected mean or max)")


def td_target(next_qs: Tensor, rewards: Tensor, masks: Tensor, discount: float,
              q_agg: str = "mean", particle_agg: str = "mean") -> Tensor:
    """``y = r + discount * mask * agg_particles(agg_members(next_qs))``; ``next_qs`` is ``[M, B, N]``."""
    next_v = aggregate_particles(aggregate_members(next_qs, q_agg), particle_agg)
    return rewards + discount * masks * next_v


def parse_budgets(values) -> list[int | str]:
    """``evaluate.budgets`` as numbers of steps (>= 0) and adaptive rule names; anything else is refused."""
    out: list[int | str] = []
    for value in values:
        text = str(value).strip()
        if text in RULES:
            out.append(text)
        elif text.isdigit():
            out.append(int(text))
        else:
            raise ValueError(f"budgets must be steps >= 0 or one of {', '.join(RULES)}, got {value!r}")
    return out


def _moved_next_q(online, target, shape, next_obs: Tensor, start: Tensor, steps: int,
                  options: dict) -> tuple[Tensor, Tensor]:
    """The TD target's particles (``start`` moved along the online critic) and the target critic's Q
    ``[M, B, N]`` at them: one pure function of tensors, so ``torch.compile`` sees it whole."""
    moved = closed_form.transport(online, shape, next_obs, start, steps, **options)
    return moved, closed_form.q_values(target, shape, next_obs, moved)


def _act_best(flow, transport_tensors, critic_tensors, shape, obs: Tensor, noise: Tensor, flow_steps: int,
              steps: int, options: dict, q_agg: str) -> Tensor:
    """``[B, d]``: K Euler steps of the reference from ``noise`` ``[B, N, d]``, ``steps`` transport steps,
    then per state the particle of largest online Q (a NaN Q never wins; N = 1 needs no critic)."""
    start = euler_sample(flow, obs.unsqueeze(1), noise, flow_steps)
    moved = closed_form.transport(transport_tensors, shape, obs, start, steps, **options)
    if moved.shape[1] == 1:
        return moved[:, 0]
    q = aggregate_members(closed_form.q_values(critic_tensors, shape, obs, moved), q_agg)
    best = torch.nan_to_num(q, nan=float("-inf")).argmax(dim=1)
    return moved[torch.arange(moved.shape[0], device=moved.device), best]


# ---------------------------------------------------------------------------------------------------
# Agent


class VGFAgent(Agent):
    """Critic ensemble + frozen reference flow + particle transport. See the module docstring."""

    name = "vgf"
    eval_knobs = ("particles", "budgets", "budget_max", "stop_quantile", "stop_gain")
    checkpoint_parts = ("critic", "target_critic", "optimizer", "reference")

    def __init__(self, cfg: VGFConfig, obs_dim: int, act_dim: int, device, reference: FlowPolicy,
                 bank: ParticleBank | None = None, chunk: int = 1):
        super().__init__(cfg, obs_dim, act_dim, device, chunk)
        _validate(cfg)
        self.amp = resolve_amp(cfg.amp, self.device)  # what "auto" means on this device
        if self.amp == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            warnings.warn("amp=bf16 on a CPU without native bf16 matmul (no AVX512-BF16/AMX): "
                          "bf16 matmuls run tens of times slower than fp32 here", stacklevel=3)
        dev = self.device
        self.critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics,
                                     cfg.activation, cfg.critic_norm).to(dev)
        self.target_critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics,
                                            cfg.activation, cfg.critic_norm).to(dev)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.reference = reference.to(dev).eval().requires_grad_(False)
        self.bank = bank
        self._rolling: RollingBank | None = None  # set by prepare(): the bank renews itself
        self._bank_obs, self._bank_at = None, None  # the bank's states and its refresh count
        self.generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.act_generator = torch.Generator(device=dev).manual_seed(cfg.seed + 1_000_003)
        # Compiled pieces of the update and of acting (cfg.compile), built lazily on first use.
        self._compiled: dict[str, Compiled] = {}
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
        return sum(c.seconds for c in self._compiled.values())

    @classmethod
    def create(cls, cfg, obs_dim: int, act_dim: int, device="cpu", *,
               reference: FlowPolicy | None = None, bank: ParticleBank | None = None, chunk: int = 1,
               **overrides) -> "VGFAgent":
        """Build a VGF agent.

        ``cfg``: a ``VGFConfig``, a mapping of its fields, or None (defaults); ``overrides`` are
        applied on top. ``reference``: the pretrained reference flow (frozen here). If None, an
        untrained ``FlowPolicy`` is built: load its weights with ``agent.reference.load_state_dict``.
        ``bank``: optional ``ParticleBank`` for the next states of the training dataset. ``chunk``:
        actions are H-step chunks flattened (``act_dim`` = H x the env's), see ``methods.base``.
        """
        cfg = config_from(VGFConfig, cfg, **overrides)
        if reference is None:
            reference = FlowPolicy(obs_dim, act_dim, cfg.actor_hidden, cfg.activation)
        return cls(cfg, obs_dim, act_dim, device, reference, bank, chunk)

    # --- pieces -----------------------------------------------------------------------------------

    def reference_samples(self, obs: Tensor, n: int, indices: Tensor | None = None,
                          generator: torch.Generator | None = None) -> Tensor:
        """``[B, n, d]`` reference samples at ``obs`` ``[B, obs_dim]``: from the bank when one is
        set and ``indices`` (bank rows) are given, else by K Euler steps of the frozen flow."""
        generator = generator or self.generator
        if self.bank is not None and indices is not None:
            return self.bank.draw(indices, n, generator, device=self.device)
        noise = normal((obs.shape[0], n, self.act_dim), generator, obs.device)
        with torch.no_grad():
            return euler_sample(self._compiled_fn("flow", self._sampling_flow()), obs.unsqueeze(1), noise,
                                self.cfg.flow_steps)

    def _sampling_flow(self):
        """The frozen reference as sampling runs it: itself, or with ``amp=bf16`` a bf16 copy made
        once per weights (re-made after ``load_state_dict``)."""
        if self.amp != "bf16":
            return self.reference
        return self._low_precision("reference", self.reference, lambda: CastCopy(self.reference, torch.bfloat16))

    def _low_precision(self, name: str, module, make):
        """``make()``, a bf16 copy of ``module``'s weights, kept until those weights change. Every
        in-place write (an optimiser step, a Polyak blend, a load) bumps a tensor's version counter,
        so the versions say when: the frozen reference is cast once, the online critic once per
        update while training and once for all of acting."""
        key = (id(module), tuple(p._version for p in module.parameters()))
        cached = self._lowp.get(name)
        if cached is None or cached[0] != key:
            cached = self._lowp[name] = (key, make())
        return cached[1]

    def transport(self, obs: Tensor, particles: Tensor, steps: int) -> Tensor:
        """Move ``particles`` ``[B, N, d]`` for ``steps`` steps along the ONLINE critic's gradient."""
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
            x = transport(self.critic, obs.unsqueeze(1), particles, steps, alpha=cfg.alpha,
                          lr=cfg.vgf_lr, rule=cfg.step_rule, q_agg=cfg.grad_q_agg,
                          bandwidth=cfg.bandwidth, bandwidth_grad=cfg.bandwidth_grad)
        return x.float()

    def _closed_form(self, *others) -> bool:
        """cfg.closed_form, where the critics are ``EnsembleCritic`` (whose maths it writes out)."""
        return self.cfg.closed_form and all(isinstance(c, EnsembleCritic) for c in (self.critic, *others))

    def _transport_options(self) -> dict:
        cfg = self.cfg
        return dict(alpha=cfg.alpha, lr=cfg.vgf_lr, rule=cfg.step_rule, q_agg=cfg.grad_q_agg,
                    bandwidth=cfg.bandwidth, bandwidth_grad=cfg.bandwidth_grad)

    def _closed_form_transport(self, obs: Tensor, particles: Tensor, steps: int) -> Tensor:
        fn = self._compiled_fn("transport", closed_form.transport)
        return fn(self._online_tensors(), closed_form.CriticShape.of(self.critic), obs, particles, steps,
                  **self._transport_options())

    def _online_tensors(self):
        """The online critic's tensors for the transport; bf16 matmuls with ``amp=bf16`` (the weights
        cast once per update, or once for all of acting)."""
        if self.amp != "bf16":
            return closed_form.critic_tensors(self.critic)
        return self._low_precision("critic", self.critic,
                                   lambda: closed_form.critic_tensors(self.critic, torch.bfloat16))

    @torch.no_grad()
    def target(self, batch: Batch) -> tuple[Tensor, Info]:
        """TD target ``[B]`` and particle statistics."""
        cfg = self.cfg
        next_obs = batch["next_observations"]
        start = self.reference_samples(next_obs, cfg.num_particles, batch.get("indices"))
        info = {}
        if cfg.train_budget != "fixed":  # per-state budget: eager (the shapes change as states stop)
            moved, next_qs, info = self._adaptive_target(batch, start)
        elif self._closed_form(self.target_critic):  # transport + target critic: one graph to compile
            moved, next_qs = self._compiled_fn("moved_next_q", _moved_next_q)(
                self._online_tensors(), closed_form.critic_tensors(self.target_critic),
                closed_form.CriticShape.of(self.critic), next_obs, start, cfg.train_steps,
                self._transport_options())
        else:
            moved = self.transport(next_obs, start, cfg.train_steps)
            next_qs = self._compiled_fn("target_critic", self.target_critic)(next_obs.unsqueeze(1), moved)
        y = td_target(next_qs, batch["rewards"], batch["masks"], self.bootstrap_discount, cfg.q_agg,
                      cfg.particle_agg)
        info |= {"target_mean": y.mean(), "next_q_mean": next_qs.mean(),
                 "particle_shift": (moved - start).abs().mean()}
        if cfg.num_particles > 1:
            info["bc_flow_var"] = start.var(dim=1).mean()
            info["vgf_var"] = moved.var(dim=1).mean()
        return y, info

    def _adaptive_target(self, batch: Batch, start: Tensor) -> tuple[Tensor, Tensor, Info]:
        """The TD target's particles under ``train_budget`` (at most train_steps steps per state) and the
        target critic's Q at them. The disagreement ceiling is the ``stop_quantile`` of the online
        members' std at this batch's dataset actions: it follows the critic as it learns."""
        cfg = self.cfg
        # fp32 whatever amp says: the rules compare Q differences of the size of bf16's error in Q
        online, shape = closed_form.critic_tensors(self.critic), closed_form.CriticShape.of(self.critic)
        at_data = closed_form.q_values(online, shape, batch["observations"], batch["actions"].unsqueeze(1))
        ceiling = torch.quantile(at_data.float().std(0).reshape(-1), cfg.stop_quantile).item()
        stop = StopRule.named(cfg.train_budget, ceiling, cfg.stop_gain)
        result = adaptive_transport(online, shape, batch["next_observations"], start, cfg.train_steps, stop,
                                    **self._adaptive_options())
        moved = result.particles.float()
        next_qs = closed_form.q_values(closed_form.critic_tensors(self.target_critic), shape,
                                       batch["next_observations"], moved)
        return moved, next_qs, {"target_steps_mean": result.steps.float().mean()}

    def _adaptive_options(self) -> dict:
        options = self._transport_options()
        options["grad_q_agg"] = options.pop("q_agg")
        return options | {"q_agg": self.cfg.q_agg}

    # --- contract ---------------------------------------------------------------------------------

    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        y, info = self.target(batch)
        qs = self._compiled_fn("critic", self.critic)(batch["observations"], batch["actions"])  # [M, B]
        loss = (qs - y).square().sum(0).mean()
        info = {"critic_loss": loss.detach(), "q_mean": qs.detach().mean(),
                "q_std_members": qs.detach().std(0).mean() if qs.shape[0] > 1 else qs.new_zeros(()),
                **info}
        return loss, info

    def update(self, batch: Batch) -> Info:
        loss, info = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        critic = self._compiled_fn("critic", self.critic)
        start = time.perf_counter()
        loss.backward()
        if critic.active and self.step == self._first_step:  # the compiled backward is built here
            critic.add_seconds(time.perf_counter() - start)
        self.step_and_blend(self.optimizer, before_step=self.cfg.polyak_before_step)
        self.step += 1
        self._maybe_refresh_bank()
        return info

    def act(self, obs: Tensor, *, steps: int | None = None, num_particles: int | None = None,
            select: str | None = None, generator: torch.Generator | None = None, budget: str | None = None,
            stop_quantile: float | None = None, stop_gain: float | None = None) -> Tensor:
        """Actions ``[B, act_dim]`` for ``obs`` ``[B, obs_dim]`` (or ``[act_dim]`` for ``[obs_dim]``).

        ``steps`` (L_test), ``num_particles`` and ``select`` default to the config. ``budget``: an
        adaptive rule (``auto``, ``auto_std``, ``auto_gain``; ``vgfcli.nn.adaptive``) with ``steps`` as
        its most, its ``stop_quantile`` / ``stop_gain`` defaulting to the config; None = ``steps``
        steps for every state. May run under ``torch.no_grad`` or ``torch.inference_mode``: the
        closed-form transport needs no autograd, the autograd one re-enables the gradients it needs
        (with respect to the actions only).
        """
        cfg = self.cfg
        steps = cfg.test_steps if steps is None else steps
        n = cfg.num_particles if num_particles is None else num_particles
        select = cfg.select if select is None else select
        generator = generator or self.act_generator
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        single = obs.dim() == 1
        obs = obs.unsqueeze(0) if single else obs
        if budget is not None:
            actions = self._act_adaptive(obs, n, steps, budget, stop_quantile, stop_gain, generator)
            return actions[0] if single else actions
        # every state: `steps` forward + backward passes per particle, and a forward to select by Q
        self.compute.add(obs.shape[0], obs.shape[0] * n * (steps + (n > 1)), obs.shape[0] * n * steps)
        self.compute.add_steps(steps, obs.shape[0])
        if (n == 1 or select == "max") and self._closed_form():
            actions = self._act_closed_form(obs, n, steps, generator)
            return actions[0] if single else actions
        particles = self.reference_samples(obs, n, generator=generator)
        particles = self.transport(obs, particles, steps)
        if n == 1 or select == "max":
            actions = best_by_q(self.critic, obs, particles, cfg.q_agg)
        else:
            with torch.no_grad():
                q = aggregate_members(self.critic(obs.unsqueeze(1), particles), cfg.q_agg)  # [B, N]
                q = torch.nan_to_num(q, nan=float("-inf"))  # a NaN Q is never chosen
            if select == "softmax":
                logits = (q - q.max(dim=1, keepdim=True).values) / cfg.softmax_temp
                best = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
            elif select == "random":
                best = torch.randint(0, n, (q.shape[0],), generator=generator, device=q.device)
            else:
                raise ValueError(f"unknown particle selection '{select}'")
            actions = particles[torch.arange(q.shape[0], device=q.device), best]
        return actions[0] if single else actions

    @torch.no_grad()
    def _act_adaptive(self, obs: Tensor, n: int, max_steps: int, budget: str, stop_quantile: float | None,
                      stop_gain: float | None, generator: torch.Generator) -> Tensor:
        """Reference samples (the same draws as the fixed-budget path), at most ``max_steps`` transport
        steps per state as ``budget``'s rules allow, then the particle of largest online Q."""
        cfg = self.cfg
        if not self._closed_form():
            raise ValueError("an adaptive budget needs method.closed_form=true")
        quantile = cfg.stop_quantile if stop_quantile is None else stop_quantile
        ceiling = self.disagreement_ceiling(quantile) if reads_disagreement(budget) else float("inf")
        stop = StopRule.named(budget, ceiling, cfg.stop_gain if stop_gain is None else stop_gain)
        noise = normal((obs.shape[0], n, self.act_dim), generator, obs.device)
        start = euler_sample(self._sampling_flow(), obs.unsqueeze(1), noise, cfg.flow_steps)
        # The critic in fp32 whatever amp says: the rules compare Q differences of the size of bf16's
        # error in Q, and the choice among particles reads the same fp32 Q as the fixed budgets' rows.
        result = adaptive_transport(closed_form.critic_tensors(self.critic), closed_form.CriticShape.of(self.critic),
                                    obs, start, max_steps, stop, **self._adaptive_options())
        self.compute.add(obs.shape[0], result.forward, result.backward)
        self.compute.add_steps(result.steps)
        q = torch.nan_to_num(aggregate_members(result.member_q.float(), cfg.q_agg), nan=float("-inf"))
        moved = result.particles.float()
        return moved[torch.arange(moved.shape[0], device=moved.device), q.argmax(dim=1)]

    def disagreement_ceiling(self, quantile: float) -> float:
        """The members' std of Q at dataset actions at ``quantile`` (from ``calibrate``)."""
        if self.member_std_percentiles is None:
            raise ValueError("this critic has no disagreement calibration (it was trained before vgf stored "
                             "one): train it again, or use the auto_gain budget")
        return percentile_at(self.member_std_percentiles, quantile)

    @torch.no_grad()
    def _act_closed_form(self, obs: Tensor, n: int, steps: int, generator: torch.Generator) -> Tensor:
        """Reference samples, transport and best-of-N under the online Q as one graph (what ``act``
        does for select=max, with the same random draws)."""
        cfg = self.cfg
        noise = normal((obs.shape[0], n, self.act_dim), generator, obs.device)
        return self._compiled_fn("act", _act_best)(
            self._sampling_flow(), self._online_tensors(), closed_form.critic_tensors(self.critic),
            closed_form.CriticShape.of(self.critic), obs, noise, cfg.flow_steps, steps, self._transport_options(),
            cfg.q_agg)

    def explore_options(self, budget: str | None = None) -> dict:
        """Online data collection (``vgf finetune``). Default (``budget`` None): best-of-N over N fresh
        reference samples with no transport step, as the reference main.py collects (its
        ``sample_actions`` call passes no ``eval_vgf_steps``, whose default is 0). ``budget``: an
        integer L, or ``train`` for L_train (``train_steps``); evaluation keeps its own budgets."""
        return {"steps": explore_steps(budget, self.cfg.train_steps)}

    @classmethod
    def check_explore_budget(cls, budget: str | None) -> None:
        explore_steps(budget, 0)

    def eval_settings(self, evaluate_cfg) -> list[EvalSetting]:
        """One row per test-time budget in ``evaluate.budgets`` with N particles (``evaluate.particles``,
        null = ``num_particles``): a number L is L steps for every state (L = 0: best-of-N under the
        learned Q); a name (auto, auto_std, auto_gain) is an adaptive budget of at most
        ``evaluate.budget_max`` steps (null = the largest L > 0 listed, else test_steps) whose rules use
        ``evaluate.stop_quantile`` / ``stop_gain`` (null = the method's)."""
        n = int(evaluate_cfg.get("particles") or self.cfg.num_particles)
        budgets = parse_budgets(evaluate_cfg.get("budgets") or [self.cfg.test_steps])
        fixed = [b for b in budgets if isinstance(b, int)]
        most = evaluate_cfg.get("budget_max")
        # no L > 0 listed (--budget 0,auto): the ceiling is the method's own test_steps
        most = int(most) if most is not None else max([b for b in fixed if b > 0], default=self.cfg.test_steps)
        if most < 1 and len(fixed) < len(budgets):
            raise ValueError(f"an adaptive budget needs budget_max >= 1, got {most}")
        rules = {"stop_quantile": evaluate_cfg.get("stop_quantile"), "stop_gain": evaluate_cfg.get("stop_gain")}
        rows = []
        for b in budgets:
            if isinstance(b, int):
                rows.append(EvalSetting(f"L={b}", f"budget_{b}", n, {"steps": b, "num_particles": n}, {"budget": b}))
                continue
            if reads_disagreement(b):
                self.disagreement_ceiling(0.5)  # a clear error now, not after the fixed rows ran
            if self.critic.members < 2:
                raise ValueError("adaptive budgets need a critic ensemble (method.num_critics >= 2)")
            rows.append(EvalSetting(f"{b}(L<={most})", f"budget_{b}", n,
                                    {"steps": most, "num_particles": n, "budget": b, **rules}, {"budget": b}))
        return rows

    def set_bank(self, bank: ParticleBank | None) -> None:
        self.bank = bank
        self._rolling = None

    def prepare(self, next_observations: Tensor) -> Info:
        """Build the particle bank for the training data's next states (when ``bank_size`` > 0), as it
        stands after the refreshes of the first ``self.step`` updates (none for a new agent)."""
        if self.cfg.bank_size == 0:
            return {}
        cfg = self.cfg
        # On the agent's device, where batch indices live: drawing from it needs no host round trip.
        samples = torch.empty((len(next_observations), cfg.bank_size, self.act_dim), device=self.device)
        self.bank = ParticleBank(samples)
        self._bank_obs = next_observations
        # Its own seeded streams: a resumed run rebuilds exactly the bank it had.
        self._rolling = RollingBank(len(next_observations), cfg.bank_refresh_rows, cfg.seed + 2_000_003)
        self._bank_at = None
        self._fill_bank_at(self._refreshes_done())
        return {"bank_states": torch.tensor(float(self.bank.num_states))}

    def _refreshes_done(self) -> int:
        every = self.cfg.bank_refresh_every
        return self.step // every if every else 0

    def _fill_slice(self, c: int, g: int) -> None:
        fill_bank(self.bank.samples, self._sampling_flow(), self._bank_obs, self._rolling.slice_rows(c),
                  steps=self.cfg.flow_steps, generator=self._rolling.generator(c, g, self.device))

    def _fill_bank_at(self, n: int) -> None:
        """Bring the bank to its state after ``n`` refreshes, redrawing only the slices that differ."""
        rolling, now = self._rolling, self._bank_at
        for c in range(rolling.slices):
            g = rolling.generation(c, n)
            if now is None or g != rolling.generation(c, now):
                self._fill_slice(c, g)
        self._bank_at = n

    def _maybe_refresh_bank(self) -> None:
        """After update ``self.step``: redraw the next slice when a refresh falls due."""
        every = self.cfg.bank_refresh_every
        if self._rolling is None or not every or self.step % every:
            return
        self._fill_bank_at(self.step // every)  # one slice: refresh number step // every - 1

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._first_step = self.step
        if self._rolling is not None:  # a bank built by prepare(): bring it to the resumed step
            self._fill_bank_at(self._refreshes_done())




Agent = VGFAgent
create = VGFAgent.create

__all__ = ["VGFConfig", "Config", "VGFAgent", "Agent", "create", "ParticleBank", "RollingBank", "build_bank",
           "refresh_bank", "fill_bank", "td_target", "aggregate_particles", "parse_budgets"]
