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


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["method.alpha=foo"], "method.alpha=foo"),
        (["method.alhpa=1"], "unknown config key 'method.alhpa'"),
        (["method.critic_hidden=[8]"], "unknown config key 'method.critic_hidden'"),  # from critic.hidden
        (["method.num_particles=2.5"], "method.num_particles=2.5"),
        (["method=fql", "method.onestep_hidden=[a]"], "method.onestep_hidden=[a]"),
        (["method=qgf", "method.polyak_before_step=maybe"], "method.polyak_before_step=maybe"),
    ],
)
def test_a_method_value_of_the_wrong_type_or_an_unknown_method_key_fails_at_composition(overrides, fragment):
    with pytest.raises(VgfError) as info:
        compose("train", overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["vgf", "avgf", "qgf", "qam", "fql", "bc"])
def test_the_method_section_is_its_yaml_with_the_yamls_types(method):
    """The schema adds no key and converts no value: the resolved section is hashed into cache keys."""
    import yaml

    from vgfcli.config import config_dir

    values = yaml.safe_load((config_dir() / "method" / f"{method}.yaml").read_text())
    assert values.pop("defaults") == [f"{method}_schema", "_self_"]
    section = to_dict(compose("train", [f"method={method}", "preset=paper", "protocol=none"]).method)
    assert list(section.items()) == list(values.items())
    assert [type(v) for v in section.values()] == [type(v) for v in values.values()]


def test_an_integer_stays_an_int_in_a_float_knob():
    fql = to_dict(compose("train", ["method=fql", "protocol=fql_cube"]).method)
    assert fql["alpha"] == 300 and type(fql["alpha"]) is int  # protocol/fql_cube.yaml: alpha: 300
    vgf = to_dict(compose("train", ["method.alpha=1", "method.vgf_lr=0.1"]).method)
    assert type(vgf["alpha"]) is int and type(vgf["vgf_lr"]) is float
