"""Offline RL methods, one module per method (``vgfcli.methods.<name>``), each exposing ``Agent``
(a ``vgfcli.methods.base.Agent`` subclass) and ``Config`` (its hyperparameter dataclass)."""

from __future__ import annotations

import importlib


def load(name: str):
    """The module of method ``name`` (e.g. ``load("vgf").Agent.create(...)``)."""
    if not name.isidentifier() or name == "base":
        raise ValueError(f"unknown method '{name}'")
    try:
        return importlib.import_module(f"vgfcli.methods.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"vgfcli.methods.{name}":
            raise ValueError(f"unknown method '{name}'") from None
        raise
