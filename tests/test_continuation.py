"""A longer training run continues the longest finished shorter run of the same config (Stage.continues):
its key is the one a run from scratch has, and its outputs are the same bytes as an uninterrupted run's."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from vgfcli.cli import app

runner = CliRunner()
SMOKE = ["preset=smoke", "threads=1", "evaluate.budgets=[0]"]


def _digest(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _run(*args) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_longer_runs_continue_shorter_ones_bit_for_bit(tmp_path, monkeypatch, empty_store):
    import shutil

    homes = {}
    for name in ("scratch", "continued"):
        homes[name] = tmp_path / name
        homes[name].mkdir()
        shutil.copy(empty_store, homes[name] / "mlflow.db")
    monkeypatch.setenv("VGF_HOME", str(homes["scratch"]))
    scratch = _run("pipeline", *SMOKE, "policy.steps=40", "critic.steps=40")["stages"]
    keys = {stage: _run(stage, *SMOKE, "policy.steps=40", "critic.steps=40")["cache_key"]  # cache hits
            for stage in ("pretrain-policy", "train-critic")}

    monkeypatch.setenv("VGF_HOME", str(homes["continued"]))
    _run("pipeline", *SMOKE, "policy.steps=20", "critic.steps=20")
    policy = _run("pretrain-policy", *SMOKE, "policy.steps=40")
    assert policy["summary"]["continued_from"]["step"] == 20 and not policy["cache_hit"]
    assert policy["cache_key"] == keys["pretrain-policy"]
    assert _digest(policy["outputs"]["policy"]) == _digest(scratch["policy"]["outputs"]["policy"])
    _run("train-critic", *SMOKE, "policy.steps=40", "critic.steps=10")  # from scratch: nothing shorter
    critic = _run("train-critic", *SMOKE, "policy.steps=40", "critic.steps=40")
    assert critic["summary"]["continued_from"]["step"] == 10  # the longest of the shorter ones
    assert critic["cache_key"] == keys["train-critic"]
    assert _digest(critic["outputs"]["critic"]) == _digest(scratch["critic"]["outputs"]["critic"])
    again = _run("train-critic", *SMOKE, "policy.steps=40", "critic.steps=40", "--force")  # --force: from scratch
    assert "continued_from" not in again["summary"]
    assert _digest(again["outputs"]["critic"]) == _digest(scratch["critic"]["outputs"]["critic"])
