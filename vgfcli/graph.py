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

    domain=llm:  ingest-prompts ─prompts─> pretrain-lm ─lm─> train-reward ─reward─> evaluate-lm
                 (evaluate-lm needs prompts, lm and reward; lm and reward only where llm.policy / llm.reward
                 do not name models of the user's own)
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
    "ingest-prompts": "vgfcli.stages.llm_ingest", "pretrain-lm": "vgfcli.stages.llm_sft",
    "train-reward": "vgfcli.stages.train_reward", "evaluate-lm": "vgfcli.stages.llm_evaluate",
}
# Domains: each command of a domain runs one stage, composed from the domain's config. ``domain=llm`` on the
# command line picks the language-model domain (VGF on a causal LM's responses, ``vgfcli.llm``).
DOMAINS = {
    "rl": {"config": "train", "commands": {name: name for name in ("collect", "ingest", "pretrain-policy",
                                                                   "train-critic", "evaluate", "finetune", "export")}},
    "llm": {"config": "llm", "commands": {"ingest": "ingest-prompts", "pretrain-policy": "pretrain-lm",
                                          "train-reward": "train-reward", "evaluate": "evaluate-lm"}},
}


def domain_of(overrides: list[str] | None) -> str:
    """The domain a command line asks for (``domain=NAME``; the last one wins), ``rl`` by default.
    ``config_overrides`` drops ``domain=rl``: the RL configs have no such key."""
    from vgfcli.errors import VgfError

    picked = [o.split("=", 1)[1] for o in overrides or [] if o.startswith("domain=")]
    domain = picked[-1] if picked else "rl"
    if domain not in DOMAINS:
        raise VgfError(f"domain must be one of {', '.join(DOMAINS)}, got '{domain}'")
    return domain


def command_stage(command: str, overrides: list[str] | None) -> Stage:
    """The stage ``vgf <command>`` runs for these overrides (its domain's, or the command's own)."""
    from vgfcli.errors import VgfError

    domain = domain_of(overrides)
    commands = DOMAINS[domain]["commands"]
    if command in commands:
        return load_stage(commands[command])
    other = next(name for name, d in DOMAINS.items() if command in d["commands"])
    raise VgfError(f"vgf {command} belongs to domain={other}, not domain={domain}")


def pipeline_config(overrides: list[str] | None) -> str:
    """The config ``vgf pipeline`` composes for these overrides."""
    return DOMAINS[domain_of(overrides)]["config"]


def config_overrides(overrides: list[str] | None) -> list[str]:
    """The overrides a command composes its config with: ``domain=rl`` names the default and is dropped
    (the RL configs have no ``domain`` key); ``domain=llm`` stays (the LM config has one), and there
    ``preset=NAME`` picks the LM's own preset (``conf/llm_preset/NAME.yaml``), so scripts name presets
    alike in both domains."""
    llm = domain_of(overrides) == "llm"
    return [("llm_preset=" + o.split("=", 1)[1]) if llm and o.startswith("preset=") else o
            for o in overrides or [] if o != "domain=rl"]


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
    domain = cfg.get("domain") or "rl"
    return [stage for stage in all_stages() if stage.domain == domain and stage.in_pipeline(cfg)]


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
