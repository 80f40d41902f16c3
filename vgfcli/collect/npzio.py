"""Reproducible, atomic ``.npz`` files: shard writing, validation on load, and a streaming merge.

Files are ordinary zip archives of ``.npy`` members (what ``numpy.savez_compressed`` writes and ``numpy.load``
reads), but every member gets a fixed timestamp, so the same arrays always give the same bytes. Everything is
written under a temporary name in the target directory, flushed, then moved into place with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

META_KEY = "__vgf_meta__"
_STAMP = (1980, 1, 1, 0, 0, 0)
TMP_MARK = ".tmp-"


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _member(zf: zipfile.ZipFile, key: str, level: int):
    info = zipfile.ZipInfo(f"{key}.npy", date_time=_STAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    # A hand-made ZipInfo does not inherit the archive's compresslevel; set it on the member.
    try:
        info.compress_level = level  # Python >= 3.13
    except AttributeError:
        info._compresslevel = level
    return zf.open(info, "w", force_zip64=True)


def _finish(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_npz(path: Path, arrays: dict[str, np.ndarray], *, meta: dict | None = None, level: int = 6) -> None:
    """Write ``arrays`` (and optional JSON ``meta``) to ``path`` atomically and reproducibly."""
    tmp = tmp_path_for(path)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            items = list(arrays.items())
            if meta is not None:
                items.append((META_KEY, np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)))
            for key, value in items:
                with _member(zf, key, level) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
        _finish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """Load every array (CRC-checked by zipfile) and the JSON meta, if any. Raises on any corruption."""
    arrays = {}
    with np.load(path, allow_pickle=False) as f:
        for key in f.files:
            arrays[key] = f[key]
    raw = arrays.pop(META_KEY, None)
    meta = json.loads(raw.tobytes().decode()) if raw is not None else None
    return arrays, meta


def merge_npz(path: Path, parts: list[Path], keys: list[str], *, level: int = 6) -> int:
    """Concatenate ``keys`` of the ``parts`` (in order) along axis 0 into ``path``, one part in memory at a time.

    Returns the number of rows written.
    """
    # Learn every key's final shape and dtype from the part headers.
    layout = {}
    for part in parts:
        with zipfile.ZipFile(part) as zf:
            for key in keys:
                with zf.open(f"{key}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                if fortran:
                    raise ValueError(f"{part}: {key} is stored Fortran-ordered")
                rows, rest, first_dtype = layout.get(key, (0, shape[1:], dtype))
                if shape[1:] != rest or dtype != first_dtype:
                    raise ValueError(f"{part}: {key} has shape {shape} / dtype {dtype}, unlike the other parts")
                layout[key] = (rows + shape[0], rest, dtype)

    tmp = tmp_path_for(path)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key in keys:
                rows, rest, dtype = layout[key]
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, *rest)}
                with _member(zf, key, level) as out:
                    np.lib.format.write_array_header_1_0(out, header)
                    for part in parts:
                        with np.load(part, allow_pickle=False) as f:
                            chunk = np.ascontiguousarray(f[key], dtype=dtype)
                        out.write(chunk.tobytes())
        _finish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return layout[keys[0]][0] if keys else 0


def episode_arrays(n: int, buffers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One episode's first ``n`` steps in the official file layout, with ``terminals`` True at its end."""
    terminals = np.zeros(n, dtype=bool)
    terminals[-1] = True
    data = {key: buffer[:n] for key, buffer in buffers.items() if buffer is not None}
    data["terminals"] = terminals
    return data
