"""Sharded, resumable, parallel collection into OGBench-format ``.npz`` files.

Layout of ``out_dir``::

    spec.json                   the resolved spec everything here belongs to (a different spec starts over)
    shards/train-00000.npz ...  finished shards (episodes [i*k, (i+1)*k) of the split), each written atomically
    {name}.npz, {name}-val.npz  the merged files, written atomically once every shard of the split exists
    stats.json                  per-episode statistics (oracle subtasks, successes, scene retries)

A shard holds the dataset keys plus per-episode statistics (``stat_*``) and a JSON meta record naming its
spec digest, split and episode range; a shard whose meta, episode count or arrays do not check out is redone.
Every episode is seeded from (seed, split, episode index), so the output does not depend on ``workers``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import multiprocessing
import os
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgfcli.collect import npzio
from vgfcli.collect.spec import ResolvedSpec
from vgfcli.errors import VgfError
from vgfcli.seeds import collect_seeds

SPEC_FILE = "spec.json"
STATS_FILE = "stats.json"
SHARD_DIR = "shards"
STAT_KEYS = ("subtasks", "successes", "retries")
_SHARD_LEVEL = 1  # shards are scratch: fast compression; the merged files use zlib's default like numpy
_MP_CONTEXT = "spawn"
_USER_FIXABLE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Shard:
    split: str
    index: int
    first: int  # first episode index within the split
    count: int

    @property
    def filename(self) -> str:
        return f"{self.split}-{self.index:05d}.npz"


def dataset_keys(rs: ResolvedSpec) -> list[str]:
    keys = ["observations", "actions", "terminals", "qpos", "qvel"]
    if rs.family == "manipspace" and not rs.env_name.removeprefix("visual-").startswith("cube"):
        keys.append("button_states")  # scene and puzzle
    return keys


def plan_shards(rs: ResolvedSpec) -> list[Shard]:
    shards = []
    for split, total in (("train", rs.episodes), ("val", rs.val_episodes)):
        for index, first in enumerate(range(0, total, rs.shard_episodes)):
            shards.append(Shard(split, index, first, min(rs.shard_episodes, total - first)))
    return shards


def output_paths(rs: ResolvedSpec, out_dir: Path) -> dict[str, Path]:
    return {"train": out_dir / f"{rs.name}.npz", "val": out_dir / f"{rs.name}-val.npz"}


# ----------------------------------------------------------------------------------------------- episode work

_COLLECTORS: dict[str, object] = {}  # per process: spec digest -> collector (env + oracles), reused across shards


def _collector(rs: ResolvedSpec):
    key = rs.digest()
    if key not in _COLLECTORS:
        for old in _COLLECTORS.values():
            old.close()
        _COLLECTORS.clear()
        if rs.family == "manipspace":
            from vgfcli.collect.manip import ManipCollector

            _COLLECTORS[key] = ManipCollector(rs)
        else:
            from vgfcli.collect.maze import MazeCollector

            _COLLECTORS[key] = MazeCollector(rs)
    return _COLLECTORS[key]


def _release_collectors() -> None:
    for old in _COLLECTORS.values():
        old.close()
    _COLLECTORS.clear()


def _shard_meta(rs: ResolvedSpec, shard: Shard) -> dict:
    return {"spec": rs.digest(), "split": shard.split, "index": shard.index, "first": shard.first, "count": shard.count}


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Worker initializer: leave as soon as the collect process is gone (e.g. killed with kill -9).

    Without this, spawned workers would finish their queued shards and then wait on the job queue forever.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="vgf-collect-parent-watch", daemon=True).start()


def _run_shard(job: tuple[dict, Shard, str]) -> tuple[Shard, int]:
    """Collect one shard and write it atomically; returns the shard and its number of transitions."""
    spec_json, shard, path = job
    rs = ResolvedSpec(**spec_json)
    collector = _collector(rs)
    parts, stats = [], {k: [] for k in STAT_KEYS}
    for episode in range(shard.first, shard.first + shard.count):
        data, ep_stats = collector.episode(lambda attempt, ep=episode: collect_seeds(rs.seed, shard.split, ep, attempt))
        parts.append(data)
        for k in STAT_KEYS:
            stats[k].append(ep_stats[k])
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays.update({f"stat_{k}": np.asarray(v, dtype=np.int64) for k, v in stats.items()})
    npzio.write_npz(Path(path), arrays, meta=_shard_meta(rs, shard), level=_SHARD_LEVEL)
    return shard, len(arrays["terminals"])


def _shard_ok(rs: ResolvedSpec, shard: Shard, path: Path) -> bool:
    """True when ``path`` is a complete shard of this spec; anything unreadable or inconsistent is False."""
    if not path.is_file():
        return False
    try:
        arrays, meta = npzio.read_npz(path)
    except Exception:
        return False
    if meta != _shard_meta(rs, shard):
        return False
    keys = dataset_keys(rs)
    if any(k not in arrays for k in keys) or any(f"stat_{k}" not in arrays for k in STAT_KEYS):
        return False
    terminals = arrays["terminals"]
    n = len(terminals)
    if terminals.dtype != bool or n == 0 or not terminals[-1] or int(terminals.sum()) != shard.count:
        return False
    return all(len(arrays[k]) == n for k in keys) and all(len(arrays[f"stat_{k}"]) == shard.count for k in STAT_KEYS)


# ----------------------------------------------------------------------------------------------- orchestration


def _lock(out_dir: Path):
    try:
        handle = open(out_dir / ".lock", "a")
    except OSError as e:
        raise VgfError(f"cannot write to output directory {out_dir}: {e.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise VgfError(f"{out_dir} is in use by another collection run; wait for it or use another directory") from None
    return handle


def _write_json(path: Path, obj: dict) -> None:
    tmp = npzio.tmp_path_for(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _sync_spec(rs: ResolvedSpec, out_dir: Path, shard_dir: Path) -> None:
    """Make ``out_dir`` belong to ``rs``: on any mismatch with the stored spec, drop all previous output."""
    spec_path = out_dir / SPEC_FILE
    wanted = rs.to_json()
    try:
        stored = json.loads(spec_path.read_text())
    except (OSError, ValueError):
        stored = None
    if stored == wanted:
        return
    if not spec_path.exists():
        foreign = [p for p in output_paths(rs, out_dir).values() if p.exists()]
        if foreign:  # e.g. a downloaded official file: never overwrite or delete what we did not write
            raise VgfError(
                f"{foreign[0]} already exists and was not written by vgf collect; "
                f"move it away or collect into another directory"
            )
    stale = list(shard_dir.glob("*.npz"))
    names = {rs.name} | ({stored.get("name")} if isinstance(stored, dict) and stored.get("name") else set())
    for name in names:
        stale += [out_dir / f"{name}.npz", out_dir / f"{name}-val.npz"]
    stale.append(out_dir / STATS_FILE)
    for path in stale:
        path.unlink(missing_ok=True)
    _write_json(spec_path, wanted)


def _remove_temps(*dirs: Path) -> None:
    for d in dirs:
        for path in d.glob(f".*{npzio.TMP_MARK}*"):
            path.unlink(missing_ok=True)


def _run_jobs(jobs: list, workers: int, on_done: Callable[[Shard, int], None]) -> None:
    if workers == 1 or len(jobs) == 1:
        state = np.random.get_state()  # the oracles draw from numpy's global RNG; leave the caller's untouched
        try:
            for job in jobs:
                on_done(*_run_shard(job))
        finally:
            _release_collectors()
            np.random.set_state(state)
        return
    ctx = multiprocessing.get_context(_MP_CONTEXT)
    # concurrent.futures (unlike multiprocessing.Pool) fails fast with BrokenProcessPool if a worker dies.
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),)
    )
    with pool:
        with _single_threaded_blas_for_children():  # workers start (and read their env) on submit
            futures = [pool.submit(_run_shard, job) for job in jobs]
        try:
            for future in as_completed(futures):
                on_done(*future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


@contextlib.contextmanager
def _single_threaded_blas_for_children():
    """Spawned workers inherit this process's environment: give them one BLAS/OpenMP thread each.

    The oracles and the IK controller make many tiny numpy calls; with a multi-threaded BLAS per worker, the
    workers' BLAS threads fight over the cores (measured: 2 workers on 2 cores took twice as long).
    """
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _final_ok(path: Path, keys: list[str]) -> bool:
    """A merged file is only ever moved into place complete; check that it is still a readable archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{k}.npy" in names for k in keys)


def _record_stats(out_dir: Path, split: str, parts: list[Path]) -> None:
    path = out_dir / STATS_FILE
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        stats = {}
    per_episode = {k: [] for k in STAT_KEYS}
    for part in parts:
        with np.load(part, allow_pickle=False) as f:
            for k in STAT_KEYS:
                per_episode[k] += f[f"stat_{k}"].tolist()
    stats[split] = per_episode
    _write_json(path, stats)


def collect(
    resolved: ResolvedSpec,
    out_dir: Path,
    *,
    workers: int,
    progress: Callable[[int], None] | None = None,
    keep_shards: bool = False,
) -> dict[str, Path]:
    """Collect ``resolved`` into ``out_dir``, resuming from what a previous run left; returns the two file paths.

    ``progress(n)`` is called in this process with the number of new transitions each time a shard finishes.
    A split whose merged file exists is complete. Otherwise its finished shards are reused, the missing ones
    collected with ``workers`` processes, and all of them merged in order. Shards are deleted after the merge
    unless ``keep_shards``; per-episode statistics stay in ``out_dir/stats.json``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise VgfError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir)
    shard_dir = out_dir / SHARD_DIR
    try:
        shard_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VgfError(f"cannot create output directory {out_dir}: {e.strerror}") from None
    finals = output_paths(resolved, out_dir)
    keys = dataset_keys(resolved)

    lock = _lock(out_dir)
    try:
        _remove_temps(out_dir, shard_dir)
        _sync_spec(resolved, out_dir, shard_dir)
        pending = [split for split, path in finals.items() if not _final_ok(path, keys)]
        shards = [s for s in plan_shards(resolved) if s.split in pending]
        todo = [s for s in shards if not _shard_ok(resolved, s, shard_dir / s.filename)]
        if todo:
            spec_json = resolved.to_json()
            jobs = [(spec_json, s, str(shard_dir / s.filename)) for s in todo]

            def on_done(shard: Shard, n: int) -> None:
                if progress is not None:
                    progress(n)

            _run_jobs(jobs, workers, on_done)

        for split in pending:
            parts = [shard_dir / s.filename for s in shards if s.split == split]
            # Stats first: a merged file is what marks a split complete, so its stats must already exist
            # when a kill lands between the two writes.
            _record_stats(out_dir, split, parts)
            npzio.merge_npz(finals[split], parts, keys)
        if not keep_shards:
            for path in shard_dir.glob("*.npz"):
                path.unlink()
        return dict(finals)
    except OSError as e:
        if e.errno in _USER_FIXABLE_ERRNOS:  # full disk, quota, permissions: the user's to fix
            raise VgfError(f"cannot write collection output in {out_dir}: {e.strerror}") from None
        raise
    finally:
        lock.close()


def episode_stats(out_dir: Path, split: str = "train") -> dict[str, np.ndarray]:
    """Per-episode statistics of a finished split: ``subtasks`` (oracle tasks finished; goals reached for
    mazes), ``successes`` (times the current target was reached) and ``retries`` (redrawn scene episodes)."""
    stats = json.loads((Path(out_dir) / STATS_FILE).read_text())[split]
    return {k: np.asarray(stats[k], dtype=np.int64) for k in STAT_KEYS}
