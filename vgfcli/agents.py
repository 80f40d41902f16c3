"""From a training config to the method, its agent and where it is scored: the core every stage uses.

The training config (``conf/train.yaml``) holds the method's own knobs (``method``) and sections every
method shares (``policy``, ``critic``, ``seed``). This module is the one place that joins them:

- ``method_module(cfg)``: the method's module, its ``method`` section checked (a bad value is a config
  error before any run or upstream lookup);
- ``method_config(cfg, saved_policy)``: the method's Config, shared knobs filled in;
- ``new_agent``: a fresh agent around a reference flow (train-critic; methods with nothing to train);
- ``load_agent``: the agent a train-critic run made, back from its file (evaluate, finetune, export);
- ``evaluation_env``: the env a dataset is scored in; ``evaluate_key``: what of ``evaluate`` a
  method's scores depend on.

Stages import this module, never each other; it imports no stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from vgfcli.errors import VgfError

# evaluate.* keys that only some methods read (Agent.eval_knobs says which).
METHOD_KNOBS = ("particles", "budgets", "budget_max", "stop_quantile", "stop_gain", "guidance")
# evaluate.* keys that change no score: videos are extra artifacts of the same evaluation.
VIDEO_KEYS = ("video", "video_size", "video_fps")
SPEED_KEYS = ("workers", "env_workers")  # how rows and env copies are spread over processes: the same numbers


def method_module(cfg):
    """The method's module, once its ``method`` section has been checked against its Config."""
    return method_config(cfg, {"hidden": cfg.policy.hidden, "flow_steps": cfg.policy.flow_steps})[0]


def method_config(cfg, saved_policy: Mapping):
    """The method's module and its Config from the ``method`` section. Knobs every method shares come
    from the shared sections, where the Config has them: the reference flow's widths and Euler steps
    from the policy itself, the critic's widths from ``critic.hidden``, torch.compile of the update
    from ``critic.compile``, the seed from the top level, the visual encoder from ``critic.encoder`` (null:
    the policy's, so that one ``policy.encoder=impala_small`` sets both, as the reference's one flag does)."""
    from vgfcli import methods
    from vgfcli.config import to_dict
    from vgfcli.methods.base import config_from

    values = to_dict(cfg.method)
    name = values.pop("name")
    shared = {"actor_hidden": tuple(saved_policy["hidden"]), "flow_steps": int(saved_policy["flow_steps"]),
              "critic_hidden": tuple(cfg.critic.hidden), "seed": int(cfg.seed), "compile": bool(cfg.critic.compile),
              "encoder": cfg.critic.get("encoder") or saved_policy.get("encoder")}
    try:
        module = methods.load(name)
        fields = {f.name for f in dataclasses.fields(module.Config)}
        return module, config_from(module.Config, values, **{k: v for k, v in shared.items() if k in fields})
    except ValueError as exc:
        raise VgfError(f"method: {exc}") from None


def trains(cfg) -> bool:
    """Whether the method learns anything after pretrain-policy (BC does not: no train-critic run)."""
    return method_module(cfg).Agent.trains


def load_policy(path, device):
    """The frozen reference flow a pretrain-policy run saved, and the facts saved with it."""
    import torch

    from vgfcli.nn.encoders import EncodedFlow, make_encoder
    from vgfcli.nn.flow import FlowPolicy

    saved = torch.load(path, map_location="cpu", weights_only=False)
    saved.setdefault("chunk", 1)
    encoder = make_encoder(saved["encoder"], tuple(saved["obs_shape"])) if saved.get("encoder") else None
    flow = FlowPolicy(encoder.out_dim if encoder else saved["obs_dim"], saved["act_dim"], tuple(saved["hidden"]),
                      saved.get("activation", "relu"), saved.get("layer_norm"),
                      time_embedding=saved.get("time_embedding", "raw"))
    flow = EncodedFlow(encoder, flow) if encoder else flow  # pixels: the flow's own encoder in front
    flow.load_state_dict(saved["flow"])
    return flow.to(device).eval().requires_grad_(False), saved


def check_compatible(saved: Mapping, obs_dim: int, act_dim: int, dataset_digest: str, what: str) -> None:
    """Refuse a policy or critic made for other data: dims first, then the dataset's digest."""
    if (saved["obs_dim"], saved["act_dim"]) != (obs_dim, act_dim):
        raise VgfError(f"{what}: made for obs/action dims {saved['obs_dim']}/{saved['act_dim']}, but the dataset "
                       f"has {obs_dim}/{act_dim}")
    if saved["dataset_digest"] != dataset_digest:
        raise VgfError(f"{what}: made from another dataset (digest {saved['dataset_digest'][:12]}, this one "
                       f"{dataset_digest[:12]}); pretrain a policy on this dataset")


def observation_shape(saved: Mapping):
    """What a saved policy or critic acts on: its state width, or its frame stacks' (H, W, C) shape."""
    return tuple(saved["obs_shape"]) if saved.get("obs_shape") else int(saved["obs_dim"])


def new_agent(cfg, flow, saved_policy: Mapping, device):
    """A fresh agent of ``cfg``'s method around the reference ``flow``, and its Config."""
    module, method_cfg = method_config(cfg, saved_policy)
    agent = module.Agent.create(method_cfg, observation_shape(saved_policy), saved_policy["act_dim"], device,
                                reference=flow, chunk=int(saved_policy["chunk"]))
    return agent, method_cfg


def load_agent(cfg, upstream: Mapping, device, fp32_eager: bool = False, compile: bool | None = None):
    """The agent to act with and the facts saved with what it was built from: the trained critic run's
    agent (``upstream["critic"]``), or, for a method with nothing to train, the method built around the
    reference policy (``upstream["policy"]``). ``fp32_eager``: no torch.compile and no reduced
    precision, whatever the method's config says (``vgf export`` traces this agent). ``compile``:
    torch.compile where the method can (None = ``evaluate.compile``; ``vgf finetune`` trains, so it
    passes ``critic.compile``)."""
    import torch

    from vgfcli import methods

    flow, saved_policy = load_policy(upstream["policy"].output_paths()["policy"], device)
    if "critic" not in upstream:
        return new_agent(cfg, flow, saved_policy, device)[0], saved_policy
    critic_path = upstream["critic"].output_paths()["critic"]
    saved = torch.load(critic_path, map_location="cpu", weights_only=False)
    check_compatible(saved, saved_policy["obs_dim"], saved_policy["act_dim"], saved_policy["dataset_digest"],
                     str(critic_path))
    module = methods.load(saved["method"])
    # acting is compiled by evaluate's own switch, whatever the training run chose
    if compile is None:
        from vgfcli.eval_rows import compile_setting

        compile = compile_setting(cfg.evaluate.compile) is True  # auto: evaluate decides after loading
    speed = {"compile": bool(compile)} if "compile" in saved["config"] else {}
    if fp32_eager:
        speed = {k: v for k, v in (("compile", False), ("amp", "off")) if k in saved["config"]}
    agent = module.Agent.create(saved["config"], observation_shape(saved), saved["act_dim"], device, reference=flow,
                                chunk=saved.get("chunk", 1), **speed)
    agent.load_state_dict(saved["agent"])
    return agent, saved


def acting_agent(cfg, upstream: Mapping, device, compile: bool | None = None):
    """``load_agent``'s agent alone: what an evaluation worker process builds for itself (picklable
    with ``functools.partial``; ``compile``: what the parent chose, as ``evaluate.compile=auto`` resolved)."""
    return load_agent(cfg, upstream, device, compile=compile)[0]


def evaluation_env(cfg, dataset_attrs: Mapping) -> str:
    """OGBench single-task env of the dataset, else data.env_id, else the gymnasium env of a D4RL name."""
    from vgfcli.scores import gym_env_for

    if dataset_attrs.get("source_kind") == "ogbench":
        return dataset_attrs["env_id"]
    env_id = cfg.data.env_id or gym_env_for(str(dataset_attrs.get("env_id", "")))
    if not env_id:
        raise VgfError(f"no evaluation env known for dataset '{dataset_attrs.get('env_id')}'; set data.env_id="
                       "<gymnasium id>")
    return env_id


def evaluate_key(evaluate_cfg, agent_class) -> dict:
    """The evaluate section as the cache key sees it: without the knobs this method ignores, the
    video settings and the worker count."""
    from vgfcli.config import to_dict

    return {k: v for k, v in to_dict(evaluate_cfg).items()
            if (k not in METHOD_KNOBS or k in agent_class.eval_knobs) and k not in VIDEO_KEYS + SPEED_KEYS}


def ignored_knobs(cfg, given: Mapping[str, bool]) -> list[str]:
    """Warnings for the sweep flags (``--budget``, ``--guidance``, ``--particles``) given to a method
    that does not read them."""
    knobs = method_module(cfg).Agent.eval_knobs
    return [f"{flag} is ignored by method {cfg.method.name} (it reads {', '.join(knobs) or 'no evaluate knobs'})"
            for flag, key in (("--budget", "budgets"), ("--guidance", "guidance"), ("--particles", "particles"))
            if given.get(flag) and key not in knobs]
