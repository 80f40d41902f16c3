"""Shell completion of Hydra overrides (`vgf --install-completion`, then TAB after a command).

Completion must answer in well under a second, so it reads the YAML files under ``conf/`` directly
instead of composing with Hydra: ``method=<TAB>`` lists ``conf/method/*.yaml``, ``pol<TAB>`` offers
``policy.`` keys and group names, ``policy.<TAB>`` the section's keys as written in the primary config
(or in the group's default option for a group such as ``method``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

# The primary config each command composes (the rest compose conf/train.yaml).
PRIMARY = {"collect": "collect", "ingest": "ingest"}


def _load(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def _defaults(primary: dict) -> dict[str, str]:
    """Config groups named in the primary file's defaults list, with their default option."""
    groups = {}
    for entry in primary.get("defaults") or []:
        if isinstance(entry, dict):
            for key, option in entry.items():
                groups[key.removeprefix("optional ").strip()] = str(option)
    return groups


def _keys(prefix: str, values: dict) -> list[str]:
    """`prefix.key=` for scalars, `prefix.key.` for sections, one level down."""
    out = []
    for key, value in values.items():
        if key == "defaults":
            continue
        name = f"{prefix}{key}"
        out.append(f"{name}." if isinstance(value, dict) else f"{name}=")
    return out


def candidates(command: str, incomplete: str, conf: Path) -> list[str]:
    """Completions of one override token for ``command``; pure, so tests call it directly."""
    primary = _load(conf / f"{PRIMARY.get(command, 'train')}.yaml")
    groups = {g: o for g, o in _defaults(primary).items() if (conf / g).is_dir()}
    if "=" in incomplete:
        key, _, _ = incomplete.partition("=")
        if key in groups:
            options = (f"{key}={p.stem}" for p in (conf / key).glob("*.yaml"))
            return sorted(o for o in options if o.startswith(incomplete))
        return []
    section, dot, _ = incomplete.rpartition(".")
    if dot:
        head = section.split(".")[0]
        values = primary.get(head) if head in primary else None
        if values is None and head in groups:
            values = _load(conf / head / f"{groups[head]}.yaml")
        for part in section.split(".")[1:]:
            values = values.get(part) if isinstance(values, dict) else None
        found = _keys(f"{section}.", values) if isinstance(values, dict) else []
    else:
        found = [f"{g}=" for g in groups] + _keys("", {k: v for k, v in primary.items() if k not in groups})
    return sorted(c for c in set(found) if c.startswith(incomplete))


def complete_overrides(ctx, incomplete: str) -> list[str]:
    """Typer's autocompletion hook for the trailing overrides argument."""
    from vgfcli.config import config_dir

    return candidates(ctx.info_name or "", incomplete, config_dir())
