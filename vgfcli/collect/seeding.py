"""Per-episode seeds: each episode's randomness depends only on (seed, split, episode index, attempt)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class EpisodeSeeds:
    env: int  # passed to env.reset(seed=...): the env's own np_random (scene layout, targets, ...)
    legacy: int  # seeds numpy's global RNG, which the ogbench oracles and maze helpers draw from
    rng: np.random.Generator  # everything the collector itself samples (noise, random actions, goals)


def episode_seeds(seed: int, split: str, episode: int, attempt: int = 0) -> EpisodeSeeds:
    root = np.random.SeedSequence(entropy=seed, spawn_key=(SPLITS[split], episode, attempt))
    env_ss, legacy_ss, rng_ss = root.spawn(3)
    return EpisodeSeeds(
        env=int(env_ss.generate_state(1)[0]),
        legacy=int(legacy_ss.generate_state(1)[0]),
        rng=np.random.Generator(np.random.PCG64(rng_ss)),
    )
