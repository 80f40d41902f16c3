"""One computation per cache key, across processes and machines that share ``VGF_HOME``.

A lock is an advisory ``flock`` on ``$VGF_HOME/locks/<name>.lock``. The kernel drops it when its holder
exits in any way, kill -9 and a crashed node included (on NFS the server's lock lease expires), so a
lock is never left stale and nothing has to guess whether a holder is still alive. The holder writes
its host, pid and start time into the file, so a waiter can say whom it waits for.

``execute`` takes the key's lock before computing a stage and looks the cache up again once it holds
it: of two identical stages started together, the second waits for the first and reports its run as a
cache hit. ``store_lock`` serialises the first creation of a local store (MLflow's schema, the
experiment), which several processes starting at once would otherwise race on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vgfcli.home import vgf_home


def lock_dir() -> Path:
    return vgf_home() / "locks"


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[dict], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (made if missing) for the ``with`` block. If another
    process holds it, ``on_wait(holder)`` is called once with what the holder wrote (host, pid,
    since), then this waits until the lock is free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait(_holder(path))
                waited = True
                time.sleep(poll_s)
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def key_lock(stage: str, cache_key: str, on_wait: Callable[[dict], None] | None = None):
    """The lock of one stage's cache key (see the module docstring)."""
    return file_lock(lock_dir() / f"{stage}-{cache_key[:32]}.lock", on_wait)


def store_lock():
    """The lock around creating a local store and its experiment."""
    return file_lock(lock_dir() / "store.lock")
