"""Settings that cannot work are refused before any stage of a pipeline runs (exit 2, naming the key),
and domain=llm takes the RL domain's preset names."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.tracking import Store

runner = CliRunner()


@pytest.mark.parametrize("args, key", [
    (["domain=llm", "llm.policy=/no/such/model"], "llm.policy=/no/such/model: no such folder"),
    (["domain=llm", "llm.reward=/no/such/rm", "llm.judge=rule:long_words"], "llm.reward=/no/such/rm"),
    (["domain=llm", "reward.base=/no/such/base"], "reward.base=/no/such/base"),
    (["domain=llm", "sft.base=/no/such/lm"], "sft.base=/no/such/lm"),
    (["domain=llm", "llm.reward=some/hub-rm"], "llm.judge must be named with llm.reward"),
    (["task=visual-cube-single-noisy-singletask-task1-v0", "observation=state", "preset=smoke"],
     "observes camera frames but policy.encoder is null (observation=state)"),
    (["task=visual-cube-single-noisy-singletask-task1-v0", "policy.encoder=null", "preset=smoke"],
     "observes camera frames but policy.encoder is null"),
    (["task=cube-single-noisy-singletask-task1-v0", "policy.encoder=impala_small", "preset=smoke"],
     "policy.encoder=impala_small reads camera frames"),
])
def test_bad_settings_end_before_any_stage(args, key):
    start = time.perf_counter()
    result = runner.invoke(app, ["pipeline", *args])
    assert result.exit_code == 2, result.output
    assert key in result.stderr and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1  # one line
    assert Store("vgf").find(status=None) == []  # no run of any stage was started
    assert time.perf_counter() - start < 30


def test_llm_pipeline_at_the_smoke_preset():
    result = runner.invoke(app, ["pipeline", "domain=llm", "preset=smoke", "--budget", "0,1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert sorted(out["stages"]) == ["evaluate-lm", "lm", "prompts", "reward"]
    assert out["summary"]["prompts"] == 3 and out["summary"]["particles"] == 4
    assert out["summary"]["judge_is_gold_rule"] is True
    paper = runner.invoke(app, ["evaluate", "domain=llm", "preset=paper", "--cfg"])
    assert paper.exit_code == 0 and "max_new_tokens: 53" in paper.stdout and "prompts: null" in paper.stdout
    other = runner.invoke(app, ["pipeline", "domain=llm", "preset=huge"])
    assert other.exit_code == 2 and "choose from: paper, quick, smoke" in other.stderr
