"""The contract every method (VGF, and its siblings in their own files) follows.

One file per method, FQL style. A method module defines a config dataclass (every hyperparameter with
its meaning, where it is defined) and an ``Agent`` subclass:

    agent = Agent.create(cfg, obs_dim, act_dim, device)   # cfg: the dataclass, a mapping, or None
    loss, info = agent.losses(batch)                       # differentiable total loss, no step
    info = agent.update(batch)                             # one gradient step (+ target update)
    actions = agent.act(obs)                               # [B, act_dim] (or [act_dim] for one obs)

A batch is a mapping of tensors on the agent's device (``to_batch`` converts numpy arrays):

    observations [B, obs_dim], actions [B, act_dim], rewards [B], masks [B] (1 = bootstrap),
    next_observations [B, obs_dim], and optionally indices [B] (int64 dataset rows; methods that
    cache per-transition data, such as VGF's particle bank, read it).

``info`` maps metric names to detached 0-dim tensors (no device sync on the hot path); ``scalars``
turns it into floats for logging.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

Batch = Mapping[str, Tensor]
Info = dict[str, Tensor]

BATCH_KEYS = ("observations", "actions", "rewards", "masks", "next_observations")


def config_from(config_cls: type, cfg: Any = None, **overrides):
    """An instance of the dataclass ``config_cls`` from ``cfg`` (None, an instance, or a mapping such
    as a dict or an OmegaConf DictConfig) with ``overrides`` applied. Unknown keys are refused; lists
    become tuples where the default is a tuple."""
    if cfg is None:
        values: dict[str, Any] = {}
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        values = dataclasses.asdict(cfg)
    elif isinstance(cfg, Mapping) or hasattr(cfg, "items"):
        values = {str(k): v for k, v in cfg.items()}
    else:
        raise TypeError(f"cannot make a {config_cls.__name__} from {type(cfg).__name__}")
    values.update(overrides)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} key(s): {', '.join(unknown)}")
    hints = typing.get_type_hints(config_cls)
    for name, value in list(values.items()):
        default = fields[name].default
        if isinstance(default, tuple) and value is not None and not isinstance(value, tuple):
            values[name] = value = tuple(value)
        if not _fits(value, hints[name]):
            raise ValueError(f"{config_cls.__name__}.{name} must be {_type_name(hints[name])}, got {value!r}")
    return config_cls(**values)


def _fits(value, hint) -> bool:
    """Whether ``value`` has the annotated type (the few kinds config fields use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint) -> str:
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


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


class Agent(ABC):
    """Base class of the methods; see the module docstring for the contract."""

    name: ClassVar[str] = ""

    def __init__(self, cfg, obs_dim: int, act_dim: int, device: torch.device):
        self.cfg = cfg
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        self.step = 0

    @classmethod
    @abstractmethod
    def create(cls, cfg, obs_dim: int, act_dim: int, device: torch.device | str = "cpu", **parts):
        """Build the agent (networks, optimisers) from a config; ``parts`` are pretrained pieces."""

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

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, optimisers, step, RNG state."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
