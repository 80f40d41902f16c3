"""What a model named by ``llm.*`` or ``*.base`` contributes to a cache key: a local folder its files'
digests (the same folder saved again is another model; the same files elsewhere are the same one), a
hub id its name (and revision, where the id carries one)."""

from __future__ import annotations

from pathlib import Path


def model_key(spec: str | None):
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return folder_digest(path) if path.is_dir() else spec


def folder_digest(path: Path) -> dict[str, str]:
    """Every file of a folder (a model, a ``datasets`` folder) by its relative path and sha256, the
    digests remembered by file stamps as the runner's are (an unchanged file costs a stat)."""
    from vgfcli.cache import path_digest
    from vgfcli.tracking import vgf_home

    memo = vgf_home() / "digests.json"
    return {f.relative_to(path).as_posix(): path_digest(f, memo) for f in sorted(path.rglob("*")) if f.is_file()}
