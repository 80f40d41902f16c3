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
    for name, value in list(values.items()):
        default = fields[name].default
        if isinstance(default, tuple) and value is not None and not isinstance(value, tuple):
            values[name] = tuple(value)
    return config_cls(**values)


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

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, optimisers, step, RNG state."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
