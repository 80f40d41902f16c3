"""``VGF_HOME``: where vgf keeps its tracking store, artifacts, locks, digests and unfinished work.

The bottom layer of the store's modules: ``tracking``, ``cache`` and ``locks`` all find their files
through it, and it imports nothing of vgf but its errors, so none of them has to import another to
learn where home is.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from vgfcli.errors import VgfError

OWNER_FILE = ".owner.json"  # in a staging folder: the host and pid of the run writing it


def vgf_home() -> Path:
    return Path(os.environ.get("VGF_HOME") or ".vgf").expanduser().resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{vgf_home() / 'mlflow.db'}"


def check_home_writable() -> Path:
    """``VGF_HOME``, made if missing; a folder that cannot be written is the user's to fix."""
    home = vgf_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise VgfError(f"VGF_HOME {home} is not writable ({exc.strerror}); set VGF_HOME to a folder you can "
                       "write") from None
    return home


def work_dir(stage: str, cache_key: str) -> Path:
    """A folder that outlives a killed run of this key: partial work (shards, checkpoints) to resume from."""
    return vgf_home() / "work" / f"{stage}-{cache_key[:16]}"


def clear_dead_staging() -> None:
    """Remove the staging folders of runs whose process on this host is gone (a kill -9 leaves them)."""
    root = vgf_home() / "staging"
    if not root.is_dir():
        return
    host = socket.gethostname()
    for folder in root.iterdir():
        if folder.name.startswith(".new-"):  # killed between its mkdir and its rename
            pid = folder.name.split("-")[1]
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being made right now, or not vgf's
        if owner.get("host") == host and isinstance(owner.get("pid"), int) and not alive(owner["pid"]):
            shutil.rmtree(folder, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
