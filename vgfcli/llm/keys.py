"""What a model named by ``llm.*`` or ``*.base`` contributes to a cache key: a local folder its files'
digests (the same folder saved again is another model; the same files elsewhere are the same one), a
hub id its name (and revision, where the id carries one)."""

from __future__ import annotations

from pathlib import Path


def model_key(spec: str | None):
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if not path.is_dir():
        return spec
    from vgfcli.cache import path_digest
    from vgfcli.tracking import vgf_home

    memo = vgf_home() / "digests.json"
    return {f.relative_to(path).as_posix(): path_digest(f, memo) for f in sorted(path.rglob("*")) if f.is_file()}
