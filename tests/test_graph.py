"""The stage graph, as the stages declare it: producers, pipeline order, goals, and inputs a pipeline lacks."""

import pytest

from vgfcli import graph
from vgfcli.config import compose


def test_every_input_has_one_producer_and_every_pin_is_an_input():
    names = graph.upstream_names()
    assert names == ["collect", "dataset", "val_dataset", "policy", "critic"]
    assert {n: graph.producer(n).name for n in names} == {
        "collect": "collect", "dataset": "ingest", "val_dataset": "ingest", "policy": "pretrain-policy",
        "critic": "train-critic"}
    assert sorted(compose("train", []).upstream) == sorted(names)  # upstream.<name>=RUN_ID pins each
    for stage in graph.all_stages():
        assert all(need in names for need in stage.needs), stage.name
    with pytest.raises(KeyError):
        graph.producer("nothing")


def test_pipeline_steps_come_after_what_they_need():
    cfg = compose("train", [])
    assert graph.steps(cfg) == ["collect", "dataset", "val_dataset", "policy", "critic", "evaluate"]
    assert [s.name for s in graph.goals(cfg)] == ["evaluate"]
    with_finetune = compose("train", ["finetune=true"])
    assert graph.steps(with_finetune)[-2:] == ["evaluate", "finetune"]
    assert graph.step_stage("critic").name == "train-critic" and graph.step_stage("finetune").name == "finetune"


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
