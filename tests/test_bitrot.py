"""Bit rot that keeps a file's size, mtime and inode: a cache hit reads its small outputs in full, and
`vgf verify` reads every output, so a flipped byte is never served from the cache as a FINISHED run."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from vgfcli.cli import app

runner = CliRunner()
SMOKE = ["preset=smoke", "method=bc", "threads=1", "--json"]


def flip_a_byte(path: str) -> None:
    """One bit of the file's middle byte flipped in place, its timestamps put back (same size, same inode)."""
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(stat.st_size // 2)
        byte = f.read(1)
        f.seek(stat.st_size // 2)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def status_of(run_id: str) -> str:
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)["runs"]
    return next(r["status"] for r in listed if r["run_id"] == run_id)


def test_verify_and_small_cache_hits_find_a_flipped_byte():
    first = runner.invoke(app, ["pipeline", *SMOKE])
    assert first.exit_code == 0, first.output
    stages = json.loads(first.stdout)["stages"]
    policy, evaluate = stages["policy"], stages["evaluate"]
    clean = runner.invoke(app, ["verify", "--json"])
    assert clean.exit_code == 0 and json.loads(clean.stdout)["damaged"] == []

    # verify: the evaluation's results.json rots; the stamps still say FINISHED until verify reads it
    flip_a_byte(evaluate["outputs"]["results"])
    assert status_of(evaluate["run_id"]) == "FINISHED"
    found = runner.invoke(app, ["verify", "--json"])
    assert found.exit_code == 1
    damaged = json.loads(found.stdout)["damaged"]
    assert [d["run_id"] for d in damaged] == [evaluate["run_id"]] and "sha256" in damaged[0]["problem"]
    assert status_of(evaluate["run_id"]) == "DAMAGED"

    # a cache hit: the policy (a small output) rots; the next pipeline reads it in full and trains again
    flip_a_byte(policy["outputs"]["policy"])
    again = runner.invoke(app, ["pipeline", *SMOKE])
    assert again.exit_code == 0, again.output
    redone = json.loads(again.stdout)["stages"]
    assert redone["policy"]["cache_hit"] is False and redone["policy"]["run_id"] != policy["run_id"]
    assert redone["dataset"]["cache_hit"] is True
    assert "not reused" in again.stderr and status_of(policy["run_id"]) == "DAMAGED"
