"""Offline RL methods, one module per method (``vgfcli.methods.<name>``), each exposing ``Agent``
(a ``vgfcli.methods.base.Agent`` subclass) and ``Config`` (its hyperparameter dataclass)."""

from __future__ import annotations

import importlib

# The methods, by module name; conf/method/<name>.yaml holds each one's values.
NAMES = ("vgf", "avgf", "qgf", "qam", "fql", "bc")


def load(name: str):
    """The module of method ``name`` (e.g. ``load("vgf").Agent.create(...)``)."""
    if name not in NAMES:
        raise ValueError(f"unknown method '{name}'")
    return importlib.import_module(f"vgfcli.methods.{name}")


_registered = False


def register_schemas() -> None:
    """Put each method's schema in Hydra's ConfigStore as ``method/<name>_schema`` (idempotent).
    conf/method/<name>.yaml extends it (``defaults: [<name>_schema, _self_]``), so composition refuses
    a ``method.*`` value of the wrong type or a key the method does not have. The schema is the
    method's Config minus the knobs the stage fills from the shared sections
    (``Config.Schema``, ``vgfcli.methods.configs.method_schema``). Imports every method (and torch)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in NAMES:
        store.store(group="method", name=f"{name}_schema", node=load(name).Config.Schema)
    _registered = True
