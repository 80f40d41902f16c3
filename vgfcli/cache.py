"""Content digests and stage cache keys.

A stage's cache key hashes the stage name, its code version, the part of the resolved config its
outputs depend on, and the content digests of its inputs (source files, upstream outputs). Digests
of source files are remembered by (path, size, mtime, inode) in ``$VGF_HOME/digests.json`` so an
unchanged multi-GB file is hashed once, and a cache hit returns in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from vgfcli.errors import VgfError
from vgfcli.home import vgf_home

_CHUNK = 8 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def path_digest(path: Path, memo_file: Path | None = None) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VgfError(f"{path}: no such file or directory")
    memo = _load_memo(memo_file)
    before = dict(memo)
    if path.is_file():
        value = _memo_digest(path.resolve(), memo)
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise VgfError(f"{path}: directory is empty")
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            digest.update(_memo_digest(file.resolve(), memo).encode())
        value = digest.hexdigest()
    if memo_file is not None and memo != before:  # one read and at most one write per call
        write_json_atomic(memo_file, memo)
    return value


def _memo_digest(path: Path, memo: dict) -> str:
    """sha256 of one file, from ``memo`` while its size, mtime and inode are unchanged (else updated)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise VgfError(f"{path}: cannot read ({exc.strerror})") from None
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    entry = memo.get(str(path))
    if entry and entry[:3] == stamp:
        return entry[3]
    try:
        memo[str(path)] = [*stamp, file_sha256(path)]
    except OSError as exc:
        raise VgfError(f"{path}: cannot read ({exc.strerror})") from None
    return memo[str(path)][3]


def rehash(path: Path, memo_file: Path | None = None) -> str:
    """sha256 of the file ``path`` read in full whatever the memo says (a flipped byte keeps a file's size,
    mtime and inode), and the memo set to it, so every later check sees what the file now holds."""
    path = Path(path).resolve()
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise VgfError(f"{path}: cannot read ({exc.strerror})") from None
    remember_digest(path, digest, memo_file)
    return digest


def remember_digest(path: Path, digest: str, memo_file: Path | None = None) -> None:
    """Record ``digest`` as the sha256 of ``path`` as it is now (its size, mtime and inode): a file
    just written with a known digest is never hashed again until it changes."""
    memo_file = memo_file or vgf_home() / "digests.json"
    path = Path(path).resolve()
    stat = path.stat()
    memo = _load_memo(memo_file)
    memo[str(path)] = [stat.st_size, stat.st_mtime_ns, stat.st_ino, digest]
    write_json_atomic(memo_file, memo)


def _load_memo(memo_file: Path | None) -> dict:
    if memo_file is None or not memo_file.exists():
        return {}
    try:
        return json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return {}  # a damaged memo only costs re-hashing


def cache_key(stage: str, code_version: int, config: dict, inputs: dict[str, str]) -> str:
    """The identity of a stage's outputs: same key, same outputs (for deterministic stages)."""
    payload = json.dumps(
        {"stage": stage, "code_version": code_version, "config": config, "inputs": inputs},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def write_json_atomic(path: Path, value) -> None:
    write_bytes_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def canonical(obj):
    """A copy of ``obj`` that pickles to the same bytes whatever made it: pickle writes an object seen
    twice as a back-reference, so equal strings are made one object (always referenced) and containers
    fresh ones (never shared). A resumed run's checkpoint-loaded state and an uninterrupted run's then
    save alike."""
    if type(obj) is str:
        return sys.intern(obj)
    if type(obj) is dict:
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if type(obj) is list:
        return [canonical(v) for v in obj]
    if type(obj) is tuple:
        return tuple(canonical(v) for v in obj)
    return obj


def save_output(obj, path: Path) -> None:
    """``torch.save`` of ``canonical(obj)``: a stage output whose bytes depend on its content alone."""
    write_bytes_atomic(path, torch_bytes(canonical(obj)))


def torch_bytes(obj) -> bytes:
    """``torch.save``'s bytes, made in memory: written by ``write_bytes_atomic``, a full disk is then an
    OSError (ENOSPC) that says so, not torch's opaque "unexpected pos" from inside its zip writer."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
