"""Config composition: Hydra's compose API over ``conf/``, with one-line errors.

Every command composes its primary config (``conf/<command>.yaml``) plus the user's trailing overrides
(``dataset=d4rl dataset.path=/data/x.hdf5``). The YAML files hold the values; the dataclasses in
``vgfcli.schema`` hold the types, so a wrong type or an unknown key fails at composition, and a value
left as ``???`` fails as a missing required value. All such failures become a ``VgfError`` (exit 2).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vgfcli.errors import VgfError


def config_dir() -> Path:
    """The ``conf/`` folder, found as package data so an installed vgf finds it too."""
    return Path(str(resources.files("vgfcli.conf")))


def compose(config_name: str, overrides: list[str] | None = None):
    """Compose ``conf/<config_name>.yaml`` with ``overrides``; returns a read-only DictConfig.

    A config with a ``protocol`` group (the training config) gets the per-task settings of its method
    and task and, for a camera task, ``observation=pixels`` (``vgfcli.protocols``), unless the overrides
    pick them themselves; overrides of single values still win over both.
    """
    overrides = list(overrides or [])
    cfg = _compose_once(config_name, overrides)
    if "protocol" not in cfg.get("choices", {}):
        return cfg
    from vgfcli.protocols import observation_for, protocol_for, task_label

    label, picked = task_label(cfg), []
    if not any(o.startswith("observation=") for o in overrides) and observation_for(label) != "state":
        picked.append(f"observation={observation_for(label)}")
    option = None if any(o.startswith("protocol=") for o in overrides) else protocol_for(cfg.method, label, config_dir())
    if option is not None:
        picked.append(f"protocol={option}")
    return _compose_once(config_name, [*picked, *overrides]) if picked else cfg


def _compose_once(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from vgfcli import schema

    schema.register()
    if config_name == "train":  # the method group's schemas (importing the methods, so torch: only here)
        from vgfcli.methods import register_schemas

        register_schemas()
    for item in overrides:
        if "=" not in item:
            raise VgfError(f"bad override '{item}': expected key=value (e.g. dataset.path=FILE)")
        if item.startswith("choices."):
            raise VgfError(f"bad override '{item}': choices are recorded by vgf; pick a group option instead "
                           "(e.g. preset=quick)")
        if item.startswith(("+", "~")):
            # vgf configs are closed: every key exists in a schema, so adding or deleting one is a typo.
            raise VgfError(f"bad override '{item}': adding or removing config keys is not supported")
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
        with open_dict(cfg):
            del cfg["hydra"]
        if "choices" in cfg:
            # Which option of each config group made this config (method, preset, ...): recorded
            # with every run so `vgf report` and the MLflow UI can group runs by them.
            cfg.choices = choices
    except MissingConfigException as exc:
        raise VgfError(_missing_option_message(str(exc))) from None
    except OverrideParseException as exc:
        raise VgfError(f"cannot parse override: {_first_line(exc)}") from None
    except ConfigCompositionException as exc:
        raise VgfError(_composition_message(exc)) from None
    except OmegaConfBaseException as exc:
        raise VgfError(f"bad config: {_first_line(exc)}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise VgfError(f"missing required config value(s): {', '.join(missing)} (set them as key=value)")
    problem = schema.check(config_name, cfg)
    if problem:
        raise VgfError(problem)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg) -> str:
    """The resolved config as YAML, headed by a comment naming the group files it was composed from
    (method, per-task protocol, preset, tuning), so a reader sees which file chose a value."""
    from omegaconf import OmegaConf

    choices = cfg.get("choices") or {}
    order = ("method", "online", "protocol", "preset", "tuning", "protocol_preset")  # later files win
    files = [f"{group}/{choices[group]}.yaml" for group in order if choices.get(group) not in (None, "none")]
    files = [f for f in files if (config_dir() / f).is_file()]  # an optional group may have no file
    head = f"# composed from: {', '.join(files)}; key=value overrides win over them\n" if files else ""
    return head + OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``: the form MLflow params take."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _composition_message(exc: BaseException) -> str:
    head = _first_line(exc)
    cause = _first_line(exc.__cause__) if exc.__cause__ is not None else ""
    if head.startswith("Could not override"):
        key = head.split("'")[1] if "'" in head else head
        return f"unknown config key '{key}'" + (f" ({cause})" if cause else "")
    if head.startswith("Error merging override"):
        override = head.removeprefix("Error merging override").strip()
        return f"bad value in override '{override}': {cause}" if cause else head
    return f"{head}: {cause}" if cause else head


def _missing_option_message(text: str) -> str:
    # Hydra: "In 'ingest': Could not find 'dataset/nope'\n\nAvailable options in 'dataset':\n\tx\n\ty\n..."
    lines = text.splitlines()
    head = lines[0]
    what = head.split("Could not find", 1)[-1].strip().strip("'")
    options = [
        line.strip() for line in lines if line.startswith("\t") and not line.strip().startswith("provider=")
    ]
    options = [o for o in options if not o.endswith("_schema")]
    if "/" in what:
        group, option = what.rsplit("/", 1)
        msg = f"unknown option '{option}' for config group '{group}'"
    else:
        msg = f"config '{what}' not found"
    return msg + (f" (choose from: {', '.join(options)})" if options else "")
