"""Ingest speed: ``read_ogbench_npz`` + ``save`` on an OGBench-sized file, next to plain reads of that file.

Writes a synthetic cube-single npz (OGBench's keys, dtypes and zip compression; 1001-state episodes, so
1000 transitions each) to a temp dir, then times, best of ``--repeats``:

* raw read: the file's bytes into memory (the disk, or the page cache when the file is cached);
* np.load: every array of the npz decoded (what any reader of the file must at least pay);
* ingest read: ``read_ogbench_npz`` with the MuJoCo env already built (its one-off build is reported
  separately), i.e. load + checks + transitions + OGBench's reward relabel;
* save / load: the canonical HDF5 file written and read back.

Prints a table and appends one JSON line to ``--out``. Run from the repo root:
``python bench/bench_ingest.py --transitions 1000000``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.datafiles import make_ogbench_npz  # noqa: E402
from vgfcli.data.canonical import load, save  # noqa: E402
from vgfcli.data.ogbench_npz import _singletask_env, parse_ogbench_name, read_ogbench_npz  # noqa: E402

DATASET = "cube-single-play-v0"
EP_STATES = 1001  # OGBench's manipulation datasets: 1001 states per episode -> 1000 transitions


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls (the least disturbed by other load) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def read_bytes(path: Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 24):
            total += len(chunk)
    return total


def np_load_all(path: Path) -> int:
    with np.load(path) as npz:
        return sum(npz[key].nbytes for key in npz.files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=1_000_000,
                        help="transitions to ingest (rounded up to whole episodes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.jsonl",
                        help="JSON-lines file to append to")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the best is kept")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where to write the files (default: system temp)")
    parser.add_argument("--uncompressed", action="store_true", help="write the npz without zip compression")
    args = parser.parse_args()

    n_episodes = -(-args.transitions // (EP_STATES - 1))
    workdir = Path(tempfile.mkdtemp(prefix="vgf-bench-", dir=args.tmp_dir))
    try:
        npz = workdir / f"{DATASET}.npz"
        start = time.perf_counter()
        make_ogbench_npz(npz, "cube-single", n_episodes=n_episodes, ep_len=EP_STATES, compressed=not args.uncompressed)
        write_s = time.perf_counter() - start
        file_mb = npz.stat().st_size / 1e6

        raw_s, _ = best_time(lambda: read_bytes(npz), args.repeats)
        np_load_s, decoded_bytes = best_time(lambda: np_load_all(npz), args.repeats)
        env_id = parse_ogbench_name(DATASET)[2]
        env_s, _ = best_time(lambda: _singletask_env(env_id), 1)  # one-off MuJoCo build, cached afterwards
        read_s, ds = best_time(lambda: read_ogbench_npz(npz, dataset_name=DATASET, task=None), args.repeats)
        out = workdir / "dataset.h5"
        save_s, _ = best_time(lambda: save(ds, out), args.repeats)
        out_mb = out.stat().st_size / 1e6
        load_s, _ = best_time(lambda: load(out), args.repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    n = ds.n_transitions
    ingest_s = read_s + save_s
    rows = [
        ("raw read of npz", raw_s, file_mb),
        ("np.load, all keys", np_load_s, file_mb),
        ("read_ogbench_npz", read_s, file_mb),
        ("save (canonical h5)", save_s, out_mb),
        ("ingest = read + save", ingest_s, file_mb),
        ("load (canonical h5)", load_s, out_mb),
    ]
    print(f"{n:,} transitions, npz {file_mb:,.0f} MB ({decoded_bytes / 1e6:,.0f} MB decoded, "
          f"{'uncompressed' if args.uncompressed else 'zip'}), canonical h5 {out_mb:,.0f} MB; "
          f"env build {env_s:.2f} s once; best of {args.repeats}")
    print(f"{'step':<24}{'seconds':>9}{'MB/s':>10}{'transitions/s':>16}")
    for label, seconds, mb in rows:
        print(f"{label:<24}{seconds:>9.3f}{mb / seconds:>10,.0f}{n / seconds:>16,.0f}")
    print(f"ingest read / np.load = {read_s / np_load_s:.2f}x")

    record = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bench": "ingest", "dataset": DATASET, "transitions": n, "compressed": not args.uncompressed,
        "npz_mb": round(file_mb, 1), "decoded_mb": round(decoded_bytes / 1e6, 1), "h5_mb": round(out_mb, 1),
        "npz_write_s": round(write_s, 3), "raw_read_s": round(raw_s, 4), "np_load_s": round(np_load_s, 4),
        "env_build_s": round(env_s, 3), "read_s": round(read_s, 4), "save_s": round(save_s, 4),
        "load_s": round(load_s, 4), "ingest_transitions_per_s": round(n / ingest_s),
        "repeats": args.repeats, "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
