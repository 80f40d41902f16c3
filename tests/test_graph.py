"""The stage graph, as the stages declare it: producers, pipeline order, goals, and inputs a pipeline lacks."""

import pytest

from vgfcli import graph
from vgfcli.config import compose


def test_every_input_has_one_producer_and_every_pin_is_an_input():
    names = graph.upstream_names()
    assert names == ["collect", "dataset", "val_dataset", "policy", "critic", "prompts", "lm", "reward"]
    assert {n: graph.producer(n).name for n in names} == {
        "collect": "collect", "dataset": "ingest", "val_dataset": "ingest", "policy": "pretrain-policy",
        "critic": "train-critic", "prompts": "ingest-prompts", "lm": "pretrain-lm", "reward": "train-reward"}
    for domain, spec in graph.DOMAINS.items():  # upstream.<name>=RUN_ID pins each input of the domain
        produced = [n for s in graph.all_stages() if s.domain == domain for n in s.produces]
        assert sorted(compose(spec["config"], []).upstream) == sorted(produced)
    for stage in graph.all_stages():
        assert all(need in names for need in stage.needs), stage.name
        assert all(graph.producer(need).domain == stage.domain for need in stage.needs), stage.name
    with pytest.raises(KeyError):
        graph.producer("nothing")


def test_pipeline_steps_come_after_what_they_need():
    cfg = compose("train", [])
    assert graph.steps(cfg) == ["collect", "dataset", "val_dataset", "policy", "critic", "evaluate"]
    assert [s.name for s in graph.goals(cfg)] == ["evaluate"]
    with_finetune = compose("train", ["finetune=true"])
    assert graph.steps(with_finetune)[-2:] == ["evaluate", "finetune"]
    assert graph.step_stage("critic").name == "train-critic" and graph.step_stage("finetune").name == "finetune"


def test_the_llm_domain_has_its_own_commands_config_and_pipeline():
    cfg = compose(graph.pipeline_config(["domain=llm"]), ["domain=llm"])
    assert graph.steps(cfg) == ["prompts", "lm", "reward", "evaluate-lm"]
    assert graph.command_stage("evaluate", ["domain=llm"]).name == "evaluate-lm"
    assert graph.command_stage("evaluate", []).name == "evaluate"
    assert graph.command_stage("ingest", ["domain=llm"]).name == "ingest-prompts"
    own = compose("llm", ["llm.policy=some/lm", "llm.reward=some/rm"])
    assert graph.steps(own) == ["prompts", "lm", "reward", "evaluate-lm"]  # steps; the lm and reward have no run
    assert graph.producer("lm").config_for(own, "lm", _NoLookups()) is None
    assert graph.producer("reward").config_for(own, "reward", _NoLookups()) is None
    from vgfcli.errors import VgfError

    with pytest.raises(VgfError, match="domain=rl"):
        graph.command_stage("train-critic", ["domain=llm"])
    with pytest.raises(VgfError, match="domain must be"):
        graph.domain_of(["domain=vision"])


class _NoLookups:
    def record(self, name):
        raise AssertionError(f"{name} should not be looked up")


@pytest.mark.parametrize("overrides, name, absent", [
    (["method=bc"], "critic", True),  # nothing to train after pretrain-policy
    (["method=vgf"], "critic", False),
    (["data.source=ogbench"], "collect", True),
    (["data.source=file", "data.path=x.hdf5", "data.kind=d4rl"], "val_dataset", True),  # D4RL has no val split
    (["data.source=file", "data.path=x.hdf5", "data.kind=d4rl"], "dataset", False),
    (["data.source=ogbench"], "val_dataset", False),
])
def test_a_pipeline_without_an_input_says_so(overrides, name, absent):
    cfg = compose("train", overrides)
    derived = graph.producer(name).config_for(cfg, name, _NoLookups())
    assert (derived is None) == absent
