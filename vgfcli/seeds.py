"""Every random stream vgf draws from, numbered in one place.

Results are the same bytes for the same seed because each consumer of randomness has a stream of its
own, derived from the run's seed and a fixed number, so adding or reordering one consumer never shifts
another's draws. Two kinds:

- spawn-key streams of ``numpy.random.SeedSequence(seed, spawn_key=(STREAM, ...))``: per-episode seeds
  (collection, evaluation, online episodes) and per-row acting streams;
- seed offsets, ``seed + OFFSET``, for torch generators and batch samplers that need one integer.

The numbers are part of every result: changing one changes outputs (bump the stage's code_version).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# spawn-key streams
COLLECT_SPLITS = {"train": 0, "val": 1}  # vgf collect: one stream per split
EVALUATION = 2  # evaluation episodes' resets (vgf evaluate, finetune's learning curves)
ONLINE = 3  # finetune's online episodes
ROW = 7  # each evaluation row's acting stream
LM_PROMPT = 11  # vgf evaluate domain=llm: each prompt's N reference samples
LM_MATCHED = 17  # vgf evaluate domain=llm: each prompt's extra samples of the compute-matched best-of-n rows
DEMO_PROMPTS = 13  # vgf ingest domain=llm prompts.source=demo: which corpus sentences, and how they are cut

# seed offsets (torch generators and samplers)
ACTING = 1_000_003  # Agent.act_generator (the methods' acting noise)
BANK_ROLLING = 2_000_003  # VGF's rolling particle-bank refresh
CALIBRATION = 5_000_011  # train-critic: the dataset batches the critic is calibrated on
VALUE_CHECK = 9_000_011  # evaluate: the val split's batches of the critic's TD loss
EXPORT_PARITY = 11_000_003  # export: the noise of the parity check
ONLINE_SAMPLER = 13_000_003  # finetune: replay batches of the updates
CURVE_ROWS = 17_000_003  # finetune: acting noise of the learning curves' rows (+ online step)
RECALIBRATION = 19_000_003  # finetune: buffer batches of each recalibration (+ online step)
ONLINE_WARMUP = 29_000_003  # finetune: uniform random warm-up actions (QAM under balanced sampling)
ONLINE_FLOW = 23_000_003  # finetune: the reference flow's flow-matching noise online (vgfcli.online_flow)


@dataclass(frozen=True)
class CollectSeeds:
    env: int  # passed to env.reset(seed=...): the env's own np_random (scene layout, targets, ...)
    legacy: int  # seeds numpy's global RNG, which the ogbench oracles and maze helpers draw from
    rng: np.random.Generator  # everything the collector itself samples (noise, random actions, goals)


def collect_seeds(seed: int, split: str, episode: int, attempt: int = 0) -> CollectSeeds:
    """One collected episode's seeds: a function of (seed, split, episode index, attempt) alone."""
    root = np.random.SeedSequence(entropy=seed, spawn_key=(COLLECT_SPLITS[split], episode, attempt))
    env_ss, legacy_ss, rng_ss = root.spawn(3)
    return CollectSeeds(env=int(env_ss.generate_state(1)[0]), legacy=int(legacy_ss.generate_state(1)[0]),
                        rng=np.random.Generator(np.random.PCG64(rng_ss)))


def episode_seeds(seed: int, episode: int, stream: int = EVALUATION) -> tuple[int, int]:
    """(env seed for reset, seed of numpy's legacy global RNG) for one episode of ``stream``."""
    env_ss, legacy_ss = np.random.SeedSequence(entropy=seed, spawn_key=(stream, episode)).spawn(2)
    return int(env_ss.generate_state(1)[0]), int(legacy_ss.generate_state(1)[0])


def row_seed(seed: int, key: str) -> int:
    """The seed of evaluation row ``key``'s acting stream: a function of the run's seed and the row
    alone, so a row's outcomes depend neither on the other rows nor on which process runs it."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(ROW, zlib.crc32(key.encode())))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s samples in `vgf evaluate domain=llm`: the same responses whatever
    other prompts or rows the run scores."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(LM_PROMPT, int(index)))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def matched_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s extra samples (the compute-matched best-of-n rows)."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(LM_MATCHED, int(index)))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def demo_rng(seed: int) -> np.random.Generator:
    """The demo prompt set's draws (``vgfcli.llm.corpus``)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=int(seed), spawn_key=(DEMO_PROMPTS,))))
