"""Collection speed: ``vgfcli.collect.collect`` with 1 and with N worker processes.

Collects the same small dataset (default: 8 train + 2 val episodes of 200 steps of cube-single-play, one
episode per shard) into fresh temp dirs with ``workers=1`` and ``workers=N``, and reports wall time,
transitions/s and the speed-up. The wall time is the whole ``collect`` call: env construction, worker start-up,
the episodes, shard writes and the merge. It also checks that both runs wrote byte-identical files.

Prints a table and appends one JSON line to ``--out``. Run from the repo root:
``MUJOCO_GL=egl python bench/bench_collect.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import append  # noqa: E402
from vgfcli.collect import CollectSpec, collect, resolve_spec  # noqa: E402


def run_once(rs, workers: int) -> tuple[float, int, dict[str, bytes]]:
    out = Path(tempfile.mkdtemp(prefix=f"bench-collect-w{workers}-"))
    try:
        transitions = []
        start = time.perf_counter()
        paths = collect(rs, out, workers=workers, progress=transitions.append)
        wall = time.perf_counter() - start
        return wall, sum(transitions), {k: p.read_bytes() for k, p in paths.items()}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="cube-single-play-v0")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--val-episodes", type=int, default=2)
    parser.add_argument("--length", type=int, default=200, help="steps per episode")
    parser.add_argument("--shard-episodes", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="parallel run to compare with workers=1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = parser.parse_args()

    rs = resolve_spec(
        CollectSpec(
            name=args.name,
            episodes=args.episodes,
            val_episodes=args.val_episodes,
            episode_length=args.length,
            noise=None,
            noise_smoothing=None,
            min_norm=None,
            p_random_action=None,
            seed=args.seed,
            shard_episodes=args.shard_episodes,
        )
    )
    load_before = load_average()
    results = {}
    files = {}
    for workers in (1, args.workers):
        wall, n, files[workers] = run_once(rs, workers)
        results[workers] = {"wall_s": round(wall, 3), "transitions": n, "transitions_per_s": round(n / wall, 1)}
    identical = files[1] == files[args.workers]
    speedup = results[args.workers]["transitions_per_s"] / results[1]["transitions_per_s"]

    print(
        f"{args.name}: {args.episodes}+{args.val_episodes} episodes x {args.length} steps, "
        f"{args.shard_episodes} episode(s)/shard, {os.cpu_count()} CPUs, load avg {load_before}"
    )
    print(f"{'workers':>8} {'wall s':>9} {'transitions':>12} {'trans/s':>9}")
    for workers, r in results.items():
        print(f"{workers:>8} {r['wall_s']:>9.2f} {r['transitions']:>12} {r['transitions_per_s']:>9.1f}")
    print(f"speed-up x{speedup:.2f} with {args.workers} workers; outputs byte-identical: {identical}")

    record = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "bench": "collect",
        "dataset": args.name,
        "episodes": args.episodes,
        "val_episodes": args.val_episodes,
        "episode_length": args.length,
        "shard_episodes": args.shard_episodes,
        "runs": {str(w): r for w, r in results.items()},
        "speedup": round(speedup, 3),
        "identical_outputs": identical,
        "load_avg_before": load_before,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    append(args.out, record)


if __name__ == "__main__":
    main()
