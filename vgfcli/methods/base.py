"""The contract every method (VGF, and its siblings in their own files) follows.

One file per method, FQL style. A method module defines a config dataclass (a ``MethodConfig``: every
hyperparameter with its meaning, where it is defined, and ``validate``, the one place its values are
checked) and an ``Agent`` subclass naming it (``config_class``) and building its networks in
``__init__``; the base class's ``create`` makes every method's agent:

    agent = Agent.create(cfg, obs_dim, act_dim, device, reference=flow, chunk=H)
    loss, info = agent.losses(batch)                       # differentiable total loss, no step
    info = agent.update(batch)                             # one gradient step (+ target update)
    actions = agent.act(obs)                               # [B, act_dim] (or [act_dim] for one obs)
    rows = agent.eval_settings(evaluate_cfg)               # what `vgf evaluate` runs, one row each

``reference`` is the flow-matching behaviour policy from ``vgf pretrain-policy`` (every method has one:
VGF transports its samples, QGF guides it, QAM and FQL regularise toward it, BC is it), frozen offline;
``vgf finetune`` trains it online as the reference codes do (``vgfcli.online_flow``).

Action chunks: with ``chunk`` = H > 1 the agent acts on H consecutive actions flattened, so
``act_dim`` is H x the environment's action dimension; a batch's ``rewards`` are then the discounted
sums over the H steps, ``masks`` say whether to bootstrap after them and ``next_observations`` are
the states H steps on (``vgfcli.training.Sampler``), so TD targets use ``bootstrap_discount`` =
discount ** H instead of the discount.

A batch is a mapping of tensors on the agent's device (``to_batch`` converts numpy arrays):

    observations [B, obs_dim], actions [B, act_dim], rewards [B], masks [B] (1 = bootstrap),
    next_observations [B, obs_dim], and optionally indices [B] (int64 dataset rows; methods that
    cache per-transition data, such as VGF's particle bank, read it).

Camera frames: ``obs_dim`` is then the frame stack's shape (H, W, C), observations are uint8
[B, H, W, C], and every network a method builds goes through ``encoded`` (its own encoder in front,
``cfg.encoder``). A network is ``encode`` + ``head`` (``vgfcli.nn.networks.PlainInput``): a method
encodes a batch once per network and runs ``head`` on the features in its loops over particles and
steps, so the state and pixel cases share one code path.

``info`` maps metric names to detached 0-dim tensors (no device sync on the hot path); ``scalars``
turns it into floats for logging.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from vgfcli import seeds
from vgfcli.methods.configs import MethodConfig, config_from  # noqa: F401 (the methods' API, re-exported)

Batch = Mapping[str, Tensor]
Info = dict[str, Tensor]


def to_batch(batch: Mapping[str, Any], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Tensors on ``device``: float32 for data, int64 for ``indices``."""
    out = {}
    for key, value in batch.items():
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
        dtype = torch.int64 if key == "indices" else torch.float32
        out[key] = tensor.to(device=device, dtype=dtype, non_blocking=True)
    return out


def scalars(info: Mapping[str, Tensor | float]) -> dict[str, float]:
    """``info`` with every value as a Python float (one device sync for all of them)."""
    keys = list(info)
    if not keys:
        return {}
    values = torch.stack([torch.as_tensor(info[k], dtype=torch.float32).detach().cpu() for k in keys])
    return dict(zip(keys, values.tolist()))


@dataclasses.dataclass(frozen=True)
class EvalSetting:
    """One row of ``vgf evaluate``: how the agent acts in it and what the row is called."""

    label: str  # table label: "L=2", "w=0.04", "fql", ...
    key: str  # MLflow-safe metric suffix: "budget_2", "guidance_0.04", "policy", ...
    particles: int  # candidates per state (1 = no selection by Q)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # keyword arguments of act()
    sweep: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the swept knob, e.g. {"budget": 2}


@dataclasses.dataclass
class ComputeCounter:
    """What acting has cost since the last reset: states acted for and network passes over one
    particle (or candidate) each. ``vgf evaluate`` reports them per action, one row at a time."""

    states: int = 0
    critic_forward: int = 0  # Q of every member at one particle
    critic_backward: int = 0  # grad_a Q at one particle (a value-gradient step)
    field_forward: int = 0  # a learned gradient field g(s, a) at one particle (A-VGF)
    steps: list[int] = dataclasses.field(default_factory=list)  # states by transport steps taken: [k] = count

    def add(self, states: int, forward: int = 0, backward: int = 0, field: int = 0) -> None:
        self.states += int(states)
        self.critic_forward += int(forward)
        self.critic_backward += int(backward)
        self.field_forward += int(field)

    def add_steps(self, per_state: Tensor | int, states: int | None = None) -> None:
        """Count states by the transport steps each took: a ``[B]`` tensor, or one number for ``states``."""
        if isinstance(per_state, Tensor):
            counts = torch.bincount(per_state.reshape(-1).cpu()).tolist()
        else:
            counts = [0] * int(per_state) + [int(states or 0)]
        if len(counts) > len(self.steps):
            self.steps += [0] * (len(counts) - len(self.steps))
        for k, c in enumerate(counts):
            self.steps[k] += c

    def per_action(self) -> dict[str, Any]:
        """Per state acted for: critic passes (forward + backward = ``critic_evals``), field passes,
        and the mean and histogram of transport steps (where the method transports)."""
        n = max(self.states, 1)
        out: dict[str, Any] = {"critic_forward": self.critic_forward / n, "critic_backward": self.critic_backward / n,
                               "critic_evals": (self.critic_forward + self.critic_backward) / n}
        if self.field_forward:
            out["field_forward"] = self.field_forward / n
        if self.steps:
            total = max(sum(self.steps), 1)
            out["steps_mean"] = sum(k * c for k, c in enumerate(self.steps)) / total
            out["steps_hist"] = list(self.steps)
        return out


class NullCounter(ComputeCounter):
    """Counts nothing: acting being traced into a program (``vgf export``), where a Python int made of
    the batch size would fix the program's batch size."""

    def add(self, *args, **kwargs) -> None:
        pass

    def add_steps(self, *args, **kwargs) -> None:
        pass


def member_std_percentiles(critic, batches) -> Tensor | None:
    """Percentiles 0, 1, ..., 100 ``[101]`` of the critic members' std of Q at the DATASET's
    (state, action) pairs of ``batches``: the calibration of the adaptive budget's disagreement rule.
    None for a single critic (no disagreement to measure)."""
    if getattr(critic, "members", 1) < 2:
        return None
    with torch.no_grad():
        stds = torch.cat([critic(b["observations"], b["actions"]).std(0).reshape(-1) for b in batches])
        levels = torch.linspace(0.0, 1.0, 101, device=stds.device)
        return torch.quantile(stds.float(), levels).cpu()


def percentile_at(percentiles: Tensor, q: float) -> float:
    """The value at quantile ``q`` in [0, 1] of a distribution given by its 101 percentiles (linear
    in between)."""
    pos = min(max(float(q), 0.0), 1.0) * (len(percentiles) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(percentiles) - 1)
    return float(percentiles[lo] + (pos - lo) * (percentiles[hi] - percentiles[lo]))


def frozen_call(module: torch.nn.Module, *inputs: Tensor) -> Tensor:
    """``module(*inputs)`` with its weights held constant: gradients reach the inputs only (an actor's
    Q term must not train the critic)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, inputs)


def best_by_q(critic, obs: Tensor, candidates: Tensor, q_agg: str) -> Tensor:
    """``[B, act]``: per state, the candidate of ``candidates`` ``[B, N, act]`` with the largest Q
    (members aggregated by ``q_agg``: min | mean): best-of-N action selection. N = 1 needs no critic."""
    from vgfcli.nn.particles import aggregate_members

    if candidates.shape[1] == 1:
        return candidates[:, 0]
    with torch.no_grad():  # frames are encoded once per state, then shared by the N candidates
        q = aggregate_members(critic(obs.unsqueeze(1), candidates), q_agg)  # [B, N]
        # A NaN Q never wins (argmax would pick it: NaN compares as the largest).
        q = torch.nan_to_num(q, nan=float("-inf"))
    return candidates[torch.arange(q.shape[0], device=q.device), q.argmax(dim=1)]


class Agent(ABC):
    """Base class of the methods; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    # The method's Config dataclass (a ``MethodConfig``): what ``create`` makes its config from.
    config_class: ClassVar[type]
    # The method-specific evaluate.* keys ``eval_settings`` reads; evaluate's other method-specific keys
    # (another method's budgets or guidance) are left out of its cache key.
    eval_knobs: ClassVar[tuple[str, ...]] = ("particles",)
    # False for a method with nothing to learn after pretraining (BC): the pipeline then skips
    # train-critic and evaluate acts from the reference policy alone.
    trains: ClassVar[bool] = True
    # True where the Config's ``activation`` is also that of the untrained reference flow ``create``
    # builds when given none; False: the flow's own default (relu), as FQL's and BC's create build it.
    reference_takes_activation: ClassVar[bool] = False
    # Online (``vgf finetune``, ``vgfcli.online_flow``) the reference flow keeps learning, as in every
    # reference code: the global norm its gradient is clipped to there, as the method's code clips it
    # (None: not clipped).
    reference_grad_clip: ClassVar[float | None] = None
    # The ``online.sampling`` styles under which the reference's online loop acts uniformly at random in
    # [-1, 1] until ``online.start_training`` (QAM's main.py does under balanced sampling, l.298-300).
    random_warmup_under: ClassVar[tuple[str, ...]] = ()

    # What the stages read of any agent (each method that has the feature sets it in __init__):
    # The critic ensemble (an ``EnsembleCritic``: value checks, calibration, best-of-N); None for a
    # method without one (BC).
    critic: torch.nn.Module | None = None
    # The precision the method's gradient-free matmuls run in, as ``amp=auto`` resolved on this device
    # ("bf16" | "off"); None for a method without mixed precision (all but VGF).
    amp: str | None = None

    @property
    def compile_seconds(self) -> float:
        """Wall seconds spent building torch.compile'd code (its first calls); 0.0 for a method that
        compiles nothing (all but VGF)."""
        return 0.0

    @property
    def compiles(self) -> bool:
        """Whether this method has torch.compile'd paths that ``set_compile`` switches (VGF)."""
        return False

    def acts_compiled(self, options: dict) -> bool:
        """Whether ``act(**options)`` runs a compiled graph when compile is on (what ``evaluate.compile=auto``
        counts); False for a method whose acting never compiles (all but VGF)."""
        return False

    def set_compile(self, on: bool) -> None:
        """Switch torch.compile of the method's compiled paths from the next call on (``evaluate.compile=auto``
        decides after loading); a method with none ignores it."""

    def __init__(self, cfg, obs_dim, act_dim: int, device: torch.device, reference, chunk: int = 1):
        """The fields every agent has: ``cfg`` (checked by ``config_from`` already), the observation's
        shape (``obs_dim``: a state's width, or a frame stack's (H, W, C) shape), the
        device, the chunk, the pretrained ``reference`` flow on the device and frozen, and the agent's
        two random streams, ``generator`` (training noise) and ``act_generator`` (acting). A method's
        __init__ calls this, then builds its networks and optimisers (their order fixes the weights a
        seed gives)."""
        self.cfg = cfg
        # One observation's shape: (obs_dim,), or (H, W, C * frame_stack) for camera frames, which every
        # network the method builds reads through an encoder of its own (``encoded``).
        self.obs_shape = (int(obs_dim),) if isinstance(obs_dim, int) else tuple(int(v) for v in obs_dim)
        self.obs_dim, self.act_dim = math.prod(self.obs_shape), int(act_dim)
        self.pixels = len(self.obs_shape) == 3
        from vgfcli.nn.encoders import feature_size

        encoder = getattr(cfg, "encoder", None)  # None also for a method with no networks of its own (BC)
        if self.pixels and encoder is None and hasattr(cfg, "encoder"):
            raise ValueError(f"observations are camera frames {self.obs_shape}: set critic.encoder (e.g. impala_small)")
        if encoder is not None and not self.pixels:
            raise ValueError(f"encoder={encoder} applies to camera frames, not state vectors")
        # What a network's head reads: the state itself, or the encoder's features.
        self.feature_dim = feature_size(encoder, self.obs_shape) if encoder else self.obs_dim
        self.device = torch.device(device)
        self.chunk = int(chunk)
        if self.chunk < 1 or self.act_dim % self.chunk:
            raise ValueError(f"chunk must be >= 1 and divide act_dim {self.act_dim}, got {chunk}")
        self.step = 0
        self.compute = ComputeCounter()  # what acting costs (act() adds to it; evaluate resets it per row)
        # The members' std of Q at dataset actions, percentiles 0..100 (``calibrate``; None before).
        self.member_std_percentiles: Tensor | None = None
        self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.act_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + seeds.ACTING)

    @classmethod
    def create(cls, cfg, obs_dim: int, act_dim: int, device: torch.device | str = "cpu", *, reference=None,
               chunk: int = 1, **overrides) -> "Agent":
        """Build the agent.

        ``cfg``: a Config, a mapping of its fields (the ``method`` section with the shared knobs, or a
        checkpoint's config), or None (defaults); ``overrides`` are applied on top (the stages' speed
        switches ``compile`` and ``amp``, where the Config has them), and the result is checked once
        (``config_from``). ``reference``: the pretrained reference flow (frozen here). If None, an
        untrained ``FlowPolicy`` of ``actor_hidden`` is built: load its weights with
        ``agent.reference.load_state_dict`` (for QAM before training: v_theta copies it when built).
        ``chunk``: actions are H-step chunks flattened (``act_dim`` = H x the env's), see the module
        docstring."""
        from vgfcli.nn.flow import FlowPolicy

        cfg = config_from(cls.config_class, cfg, **overrides)
        if reference is None:
            activation = {"activation": cfg.activation} if cls.reference_takes_activation else {}
            reference = FlowPolicy(obs_dim, act_dim, cfg.actor_hidden, **activation)
        return cls(cfg, obs_dim, act_dim, device, reference, chunk)

    def _new_encoder(self):
        from vgfcli.nn.encoders import make_encoder

        return make_encoder(self.cfg.encoder, self.obs_shape)

    def encoded(self, head: torch.nn.Module) -> torch.nn.Module:
        """``head`` (a network on ``feature_dim`` inputs) as the method uses it: itself on state vectors;
        on frames with a fresh encoder of its own in front (``vgfcli.nn.encoders.Encoded``)."""
        if not self.pixels:
            return head
        from vgfcli.nn.encoders import Encoded

        return Encoded(self._new_encoder(), head).to(self.device)

    def batched(self, obs) -> tuple[Tensor, bool]:
        """``obs`` on the agent's device as a batch, and whether it was one observation. State vectors
        become float32; frames stay uint8 (the encoder scales them)."""
        obs = torch.as_tensor(obs, device=self.device, dtype=None if self.pixels else torch.float32)
        single = obs.dim() == len(self.obs_shape)
        return (obs.unsqueeze(0) if single else obs), single

    def _critic_and_target(self) -> None:
        """``critic``: an ``EnsembleCritic`` of ``cfg.num_critics`` members (``critic_hidden``,
        ``activation``, ``critic_norm``; on frames one encoder in front serves all members, as in the
        reference's ``Value``), then ``target_critic``: a second one (its own initialisation drawn, then
        overwritten) holding the critic's weights, encoder included, frozen."""
        from vgfcli.nn.networks import EnsembleCritic

        cfg = self.cfg

        def ensemble():
            return self.encoded(EnsembleCritic(self.feature_dim, self.act_dim, cfg.critic_hidden, cfg.num_critics,
                                               cfg.activation, cfg.critic_norm).to(self.device))

        self.critic = ensemble()
        self.target_critic = ensemble()
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)

    def start_reference_training(self) -> None:
        """Called once before the reference flow starts learning online (``vgfcli.online_flow``): a method
        that keeps something derived from the frozen flow sets it up here. Default: nothing."""

    def reference_updated(self) -> None:
        """Called after each online step of the reference flow. Default: nothing."""

    def explore_options(self, budget: str | None = None) -> dict[str, Any]:
        """``act`` options while collecting online data (``vgf finetune``): the method's own acting rule
        with fresh noise at every call, the reference code's exploration. ``budget`` is
        ``online.explore_budget``, which only methods with a transport budget read (VGF, A-VGF).
        Default: ``act``'s defaults."""
        self.check_explore_budget(budget)
        return {}

    @classmethod
    def check_explore_budget(cls, budget: str | None) -> None:
        """Raise ValueError if ``online.explore_budget`` means nothing to this method (before any run)."""
        if budget is not None:
            raise ValueError(f"online.explore_budget applies to methods with a transport budget (vgf, avgf), "
                             f"not {cls.name}")

    def default_setting(self) -> EvalSetting:
        """The method's own acting rule (its config's budget, guidance and particles) as an evaluate row:
        the row ``vgf finetune`` reports as its headline, fixed before any score is seen."""
        return self.eval_settings({})[0]

    @torch.no_grad()
    def q_values(self, obs: Tensor, actions: Tensor) -> Tensor | None:
        """The critic's value of ``actions`` ``[B, act_dim]`` at ``obs``: the mean over its members,
        ``[B]`` (``vgf evaluate``'s value checks); None for a method without a critic."""
        if self.critic is None:
            return None
        return self.critic(obs, actions).float().mean(dim=0)

    def calibrate(self, batches) -> Info:
        """Once after training, on dataset batches: store what acting needs to know about the trained
        critic (the percentiles of its members' disagreement at dataset actions, for the adaptive
        budget's disagreement rule). Methods without a critic ensemble store nothing."""
        if self.critic is None:
            return {}
        self.member_std_percentiles = member_std_percentiles(self.critic, batches)
        if self.member_std_percentiles is None:
            return {}
        p = self.member_std_percentiles
        return {"member_std_p50": p[50], "member_std_p90": p[90], "member_std_p99": p[99]}

    def step_and_blend(self, *optimizers, before_step: bool) -> None:
        """The optimisers' steps and the Polyak update of ``target_critic`` toward ``critic``
        (``cfg.tau``), blending the critic's weights from before this step (``before_step``; what the
        VGF, QGF, QAM and FQL reference code all do) or after it."""
        if before_step:
            self.target_critic.polyak_(self.critic, self.cfg.tau)
        for optimizer in optimizers:
            optimizer.step()
        if not before_step:
            self.target_critic.polyak_(self.critic, self.cfg.tau)

    @property
    def bootstrap_discount(self) -> float:
        """The factor of the bootstrapped value in a TD target: discount ** chunk."""
        return float(self.cfg.discount) ** self.chunk

    def eval_settings(self, evaluate_cfg) -> list[EvalSetting]:
        """The rows ``vgf evaluate`` runs after its reference row (the reference flow, N = 1).
        ``evaluate_cfg`` is the ``evaluate`` config section; a method reads the knobs it sweeps
        (``budgets`` for VGF, ``guidance`` for QGF) and ``particles`` (best-of-N by Q, null = the
        method's default). Default: one row, the method's own policy."""
        n = evaluate_cfg.get("particles") or 1
        return [EvalSetting(self.name, "policy", int(n), {"num_particles": int(n)})]

    @torch.no_grad()
    def act_reference(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One sample of the reference flow per state: the behaviour-cloned policy alone."""
        obs, single = self.batched(obs)
        actions = self.reference.sample(obs, steps=self.cfg.flow_steps, generator=generator)
        return actions[0] if single else actions

    @abstractmethod
    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        """Total differentiable loss of the trainable networks on ``batch`` and metrics."""

    @abstractmethod
    def update(self, batch: Batch) -> Info:
        """One optimisation step on ``batch``; returns metrics."""

    @abstractmethod
    def act(self, obs: Tensor, **options) -> Tensor:
        """Actions for ``obs`` ``[B, obs_dim]`` (``[B, act_dim]``) or ``[obs_dim]`` (``[act_dim]``)."""

    def prepare(self, next_observations: Tensor) -> Info:
        """Once before training, with the whole dataset's next states (rows match batch ``indices``):
        precompute what the method can (VGF's particle bank). Default: nothing."""
        return {}

    # What a checkpoint holds, by attribute name: networks and optimisers (anything with
    # state_dict / load_state_dict; an attribute that is None is skipped) and torch.Generators.
    checkpoint_parts: ClassVar[tuple[str, ...]] = ()
    checkpoint_generators: ClassVar[tuple[str, ...]] = ("generator", "act_generator")

    def _parts(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.checkpoint_parts if getattr(self, n, None) is not None}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: config, networks, optimisers, step, random streams."""
        state = {"config": dataclasses.asdict(self.cfg), **{n: p.state_dict() for n, p in self._parts().items()},
                 "step": self.step, **{g: getattr(self, g).get_state() for g in self.checkpoint_generators}}
        if self.member_std_percentiles is not None:
            state["member_std_percentiles"] = self.member_std_percentiles
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        for name, part in self._parts().items():
            part.load_state_dict(state[name])
        self.step = int(state["step"])
        # Absent from a checkpoint saved before calibration (mid-training, or by an older vgf).
        self.member_std_percentiles = state.get("member_std_percentiles")
        for name in self.checkpoint_generators:
            getattr(self, name).set_state(state[name])
