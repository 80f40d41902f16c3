"""The methods' configs: the base class of their Config dataclasses (``MethodConfig``: ``validate``
and the helpers it is written with), ``config_from`` (a checked Config from a mapping) and the schema
that types the composed ``method`` section (``method_schema``; registered with Hydra by
``vgfcli.methods.register_schemas``).

Where each check happens: the TYPES of a ``method.*`` value and unknown keys at composition (the
schema), the VALUES (ranges, choices, combinations) by the method's ``validate``, once, when
``config_from`` makes the agent's config.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

# Config fields every method's Config may have whose values the stage takes from the shared sections,
# not from the ``method`` section: the reference flow's widths and Euler steps (the pretrained policy),
# the critic's widths (critic.hidden), the seed (top level), torch.compile (critic.compile /
# evaluate.compile) and the visual encoder (critic.encoder). The method's YAML and its schema leave them out.
SHARED_FIELDS = ("actor_hidden", "flow_steps", "critic_hidden", "seed", "compile", "encoder")


def config_from(config_cls: type, cfg: Any = None, **overrides):
    """An instance of the dataclass ``config_cls`` from ``cfg`` (None, an instance, or a mapping such
    as a dict or an OmegaConf DictConfig) with ``overrides`` applied, checked by its ``validate`` as it
    is made (the one place a method's values are checked; ValueError naming the key). An instance
    without overrides was checked when it was made: it is copied, not checked again. Unknown keys are
    refused; lists become tuples where the default is a tuple. The types of the ``method`` section are
    checked where it is composed (``method_schema``), so values are taken as given."""
    if isinstance(cfg, config_cls) and not overrides:
        return copy.copy(cfg)
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
    for name, value in values.items():
        if isinstance(fields[name].default, tuple) and value is not None and not isinstance(value, tuple):
            values[name] = tuple(value)
    return config_cls(**values)  # MethodConfig.__post_init__ validates it


def _either(options) -> str:
    words = [str(o) for o in options]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


class _SchemaOf:
    """``Config.Schema``: the schema of a method's Config (``method_schema``), made on first use and
    kept on that class. It lives at ``<method module>.<Config>.Schema``, where pickle finds it again in
    another process, so a composed config travels to worker processes as it is."""

    def __get__(self, obj, owner: type) -> type:
        schema = owner.__dict__.get("_schema")
        if schema is None:
            schema = method_schema(owner.__module__.rpartition(".")[2], owner)
            schema.__module__, schema.__qualname__ = owner.__module__, f"{owner.__qualname__}.Schema"
            owner._schema = schema
        return schema


class MethodConfig:
    """Base of the methods' Config dataclasses: ``validate``, which each method writes with the
    helpers below (every check of a method's values in one place), run once as a Config is made."""

    Schema = _SchemaOf()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming a value the method cannot run with (called once, as the Config is
        made: by ``config_from``, a direct call or ``dataclasses.replace``)."""
        self.check_numbers()

    def check_numbers(self, *, positive=(), at_least_one=(), not_negative=(), unit=(), open_unit=()) -> None:
        """Every numeric field finite, and the named ones in their ranges: ``positive`` > 0,
        ``at_least_one`` >= 1, ``not_negative`` >= 0, ``unit`` in (0, 1], ``open_unit`` in (0, 1). A
        field that is None (an optional knob left off) passes."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        ranges = ((positive, lambda v: v > 0, "must be > 0"), (at_least_one, lambda v: v >= 1, "must be >= 1"),
                  (not_negative, lambda v: v >= 0, "must be >= 0"), (unit, lambda v: 0 < v <= 1, "must be in (0, 1]"),
                  (open_unit, lambda v: 0 < v < 1, "must be in (0, 1)"))
        for names, ok, what in ranges:
            for name in names:
                value = getattr(self, name)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name} must be a number, got {value!r}")
                if not ok(value):
                    raise ValueError(f"{name} {what}, got {value!r}")

    def check_choices(self, **options) -> None:
        """Each named field one of its options: ``check_choices(q_agg=("min", "mean"))``."""
        for name, allowed in options.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be {_either(allowed)}, not {value!r}")

    @staticmethod
    def require(*checks: tuple[bool, str]) -> None:
        """Raise ValueError with the message of the first ``(ok, message)`` that is not ok."""
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _schema_type(hint):
    """A Config field's type as the ``method`` section's schema types it: a tuple is a list (YAML's),
    and a float is ``Union[int, float]`` so that an integer written in YAML (``alpha: 300``) stays an
    int in the composed section, whose resolved values the stages' cache keys hash."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return typing.Optional[_schema_type(rest[0] if len(rest) == 1 else typing.Union[tuple(rest)])]
    if typing.get_origin(hint) is tuple:
        return list[args[0]]
    if hint is float:
        return typing.Union[int, float]
    return hint


def method_schema(name: str, config_cls: type) -> type:
    """The dataclass that types the composed ``method`` section of method ``name``: ``name`` and the
    fields of ``config_cls`` minus ``SHARED_FIELDS``, in the Config's order, with its defaults.
    ``vgfcli.methods.register_schemas`` puts it in Hydra's ConfigStore as ``method/<name>_schema``."""
    hints = typing.get_type_hints(config_cls)
    specs: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=name))]
    for f in dataclasses.fields(config_cls):
        if f.name in SHARED_FIELDS:
            continue
        default = f.default
        spec = (dataclasses.field(default_factory=functools.partial(list, default)) if isinstance(default, tuple)
                else dataclasses.field(default=default))
        specs.append((f.name, _schema_type(hints[f.name]), spec))
    return dataclasses.make_dataclass(f"{config_cls.__name__}Schema", specs)
