"""Digests and cache keys: content, not names or times, decides."""

import os

import pytest

from vgfcli.cache import cache_key, file_sha256, path_digest, write_bytes_atomic
from vgfcli.errors import VgfError


def test_digest_follows_content_and_memo_notices_changes(tmp_path):
    memo = tmp_path / "memo.json"
    data = tmp_path / "a.bin"
    data.write_bytes(b"hello")
    first = path_digest(data, memo)
    assert first == file_sha256(data) and memo.exists()
    assert path_digest(data, memo) == first  # from the memo
    data.write_bytes(b"hellO")
    os.utime(data, ns=(1, 1))  # even with an old mtime the size/inode/mtime stamp changes
    assert path_digest(data, memo) != first


def test_directory_digest_covers_names_and_contents(tmp_path):
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    (root / "metadata.json").write_text("{}")
    (root / "data" / "main.h5").write_bytes(b"x")
    first = path_digest(root)
    (root / "data" / "main.h5").write_bytes(b"y")
    assert path_digest(root) != first


def test_missing_and_empty_inputs_are_user_errors(tmp_path):
    with pytest.raises(VgfError, match="no such file"):
        path_digest(tmp_path / "nope.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VgfError, match="empty"):
        path_digest(tmp_path / "empty")


def test_cache_key_depends_on_every_part():
    base = cache_key("ingest", 1, {"a": 1}, {"source": "d1"})
    assert base == cache_key("ingest", 1, {"a": 1}, {"source": "d1"})
    assert base != cache_key("ingest", 2, {"a": 1}, {"source": "d1"})
    assert base != cache_key("ingest", 1, {"a": 2}, {"source": "d1"})
    assert base != cache_key("ingest", 1, {"a": 1}, {"source": "d2"})
    assert base != cache_key("collect", 1, {"a": 1}, {"source": "d1"})


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "x.json"
    write_bytes_atomic(target, b"1")
    write_bytes_atomic(target, b"2")
    assert target.read_bytes() == b"2"
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]
