"""Config composition: overrides, types, unknown keys and missing values."""

import pytest

from vgfcli.config import compose, flatten, to_dict
from vgfcli.errors import VgfError


def test_defaults_compose_to_typed_config():
    cfg = compose("ingest")
    assert cfg.dataset.kind == "ogbench"
    assert cfg.dataset.task is None
    assert cfg.action_bounds == "warn"
    assert cfg.tracking.experiment == "vgf"


def test_group_switch_and_typed_override():
    cfg = compose("ingest", ["dataset=d4rl", "dataset.path=/data/hopper.hdf5", "action_bounds=clip"])
    assert cfg.dataset.kind == "d4rl"
    assert cfg.dataset.path == "/data/hopper.hdf5"
    cfg = compose("ingest", ["dataset.task=3"])
    assert cfg.dataset.task == 3


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["dataset.task=abc"], "dataset.task=abc"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["dataset.bogus=1"], "unknown config key 'dataset.bogus'"),
        (["+bogus=1"], "adding or removing"),
        (["dataset=nope"], "unknown option 'nope' for config group 'dataset'"),
        (["dataset=d4rl"], "missing required config value(s): dataset.path"),
        (["justaword"], "expected key=value"),
        (["dataset.path=a=b=["], "cannot parse override"),
    ],
)
def test_bad_config_is_one_line_error(overrides, fragment):
    with pytest.raises(VgfError) as info:
        compose("ingest", overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_option_lists_choices_without_schemas():
    with pytest.raises(VgfError) as info:
        compose("ingest", ["dataset=nope"])
    assert "d4rl, minari, ogbench" in str(info.value)
    assert "schema" not in str(info.value)


def test_config_is_read_only_and_flattens():
    cfg = compose("ingest")
    with pytest.raises(Exception):
        cfg.action_bounds = "clip"
    flat = flatten(to_dict(cfg))
    assert flat["dataset.kind"] == "ogbench" and flat["tracking.experiment"] == "vgf"
