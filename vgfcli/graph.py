"""The stage registry and the graph it declares: which stage makes each upstream input, and in what
order a pipeline makes them.

Each stage module (``stages/<name>.py``, installed as ``vgfcli.stages.<name>``) defines ``STAGE``, whose
class says what it ``needs`` and what it ``produces``. Those declarations are the graph; nothing else
lists it. ``vgf pipeline``, ``vgf sweep`` and the upstream lookup of every training stage read it from
here. A new stage is one file plus one entry in ``STAGE_MODULES``.

Today's graph (upstream names in lower case)::

    collect ─collect─> ingest ─dataset, val_dataset─> pretrain-policy ─policy─> train-critic ─critic─┐
                                                                                                    v
                                      evaluate (needs policy, critic, val_dataset)   <──────────────┤
                                      finetune (dataset, policy, critic; with finetune=true)  <─────┤
                                      export (policy, dataset, critic)                 <────────────┘
"""

from __future__ import annotations

import importlib

from vgfcli.stage import Stage

# Stage name -> module holding ``STAGE``, imported only when needed (start-up stays fast). The order
# breaks ties between stages that do not depend on each other.
STAGE_MODULES = {
    "collect": "vgfcli.stages.collect", "ingest": "vgfcli.stages.ingest",
    "pretrain-policy": "vgfcli.stages.pretrain_policy", "train-critic": "vgfcli.stages.train_critic",
    "evaluate": "vgfcli.stages.evaluate", "finetune": "vgfcli.stages.finetune", "export": "vgfcli.stages.export",
}


def load_stage(name: str) -> Stage:
    return importlib.import_module(STAGE_MODULES[name]).STAGE


def all_stages() -> list[Stage]:
    return [load_stage(name) for name in STAGE_MODULES]


def producer(name: str) -> Stage:
    """The stage whose runs serve the upstream input ``name`` (``dataset``: ingest, ...)."""
    for stage in all_stages():
        if name in stage.produces:
            return stage
    raise KeyError(f"no stage produces '{name}'")


def upstream_names() -> list[str]:
    """Every upstream input name, in the registry's order (``upstream.<name>=RUN_ID`` pins one)."""
    return [name for stage in all_stages() for name in stage.produces]


def goals(cfg) -> list[Stage]:
    """The stages ``vgf pipeline`` ends with for ``cfg`` (evaluate; finetune with finetune=true)."""
    return [stage for stage in all_stages() if stage.in_pipeline(cfg)]


def steps(cfg) -> list[str]:
    """The steps of one pipeline of ``cfg`` in dependency order: upstream names (each made by its
    producer), then the goal stages by name. Every step comes after the steps it needs."""
    order: list[str] = []

    def visit(name: str, stage: Stage) -> None:
        for need in stage.needs:
            if need not in order:
                visit(need, producer(need))
        if name not in order:
            order.append(name)

    for stage in goals(cfg):
        visit(stage.name, stage)
    return order


def step_stage(step: str) -> Stage:
    """The stage that runs ``step`` of ``steps``: a goal stage by its name, else the producer."""
    return load_stage(step) if step in STAGE_MODULES else producer(step)
