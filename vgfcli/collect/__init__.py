"""Generate OGBench-format datasets locally with the scripted oracles that ship with the ogbench package.

Heavy dependencies (ogbench, gymnasium, mujoco) are imported only when a collection actually runs.
"""

from vgfcli.collect.runner import collect, episode_stats
from vgfcli.collect.spec import CollectSpec, ResolvedSpec, collectable_names, resolve_spec

__all__ = ["CollectSpec", "ResolvedSpec", "collect", "collectable_names", "episode_stats", "resolve_spec"]
