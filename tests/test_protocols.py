"""Per-task settings: the protocol file picked from the method and the task, and what wins over it."""

import pytest

from vgfcli.config import compose, to_yaml
from vgfcli.protocols import family_candidates, task_label


@pytest.mark.parametrize("label, families", [
    ("cube-single-play-singletask-task2-v0", ["cube-single", "cube"]),
    ("antmaze-large-navigate-singletask-task1-v0", ["antmaze-large", "antmaze"]),
    ("puzzle-4x4-play-singletask-v0", ["puzzle-4x4", "puzzle"]),
    ("scene-play-singletask-task2-v0", ["scene"]),
    ("hopper-medium-v2", ["d4rl-locomotion"]),
    ("antmaze-large-diverse-v2", ["d4rl-antmaze"]),
    ("pen-cloned-v1", ["d4rl-adroit"]),
    ("something-else", []),
])
def test_task_families_most_specific_first(label, families):
    assert family_candidates(label) == families


def test_each_method_gets_its_task_settings():
    qam = compose("train", ["method=qam", "task=puzzle-4x4-play-singletask-task4-v0"])
    assert qam.choices.protocol == "qam_puzzle-4x4"
    assert (qam.method.tau_inv, qam.chunk, qam.critic.reward_transform) == (30, 5, "sparse")
    humanoid = compose("train", ["method=qam", "task=humanoidmaze-medium-navigate-singletask-task1-v0"])
    assert (humanoid.method.rho, humanoid.method.discount, humanoid.chunk) == (0.0, 0.995, 1)
    fql = compose("train", ["method=fql", "task=puzzle-3x3-play-singletask-task4-v0"])
    assert fql.method.alpha == 1000
    antmaze = compose("train", ["method=fql", "task=antmaze-large-navigate-singletask-task1-v0"])
    assert (antmaze.method.alpha, antmaze.method.q_agg) == (10, "min")
    vgf = compose("train", ["task=antmaze-large-navigate-singletask-task1-v0"])
    assert (vgf.method.discount, vgf.method.q_agg, vgf.method.grad_q_agg) == (0.995, "min", "mean")


def test_a_variant_has_its_own_row():
    cfg = compose("train", ["method=qam", "method.variant=fql", "task=cube-triple-play-singletask-task2-v0"])
    assert cfg.choices.protocol == "qam-fql_cube-triple"
    assert (cfg.method.tau_inv, cfg.method.fql_alpha) == (10, 300)


def test_an_override_wins_and_protocol_none_turns_the_settings_off():
    cfg = compose("train", ["method=fql", "task=puzzle-3x3-play-singletask-task4-v0", "method.alpha=42"])
    assert cfg.method.alpha == 42 and cfg.choices.protocol == "fql_puzzle"
    plain = compose("train", ["method=fql", "task=puzzle-3x3-play-singletask-task4-v0", "protocol=none"])
    assert plain.method.alpha == 10.0  # the method's own default
    chosen = compose("train", ["method=fql", "task=puzzle-3x3-play-singletask-task4-v0", "protocol=fql_cube"])
    assert chosen.method.alpha == 300


def test_d4rl_data_is_tuned_under_its_own_name():
    cfg = compose("train", ["data.source=file", "data.kind=d4rl", "data.path=/data/hopper-medium-v2.hdf5"])
    assert cfg.choices.protocol == "vgf_d4rl-locomotion"
    assert task_label(cfg) == "hopper-medium-v2"  # evaluate and report file the run under it
    assert task_label(compose("train", ["data.source=file", "data.kind=minari", "data.path=/m/medium-v0/",
                                        "data.env_id=Hopper-v5"])) == "Hopper-v5"
    assert (cfg.method.train_steps, cfg.method.vgf_lr, cfg.critic.reward_transform) == (5, 0.1, "return_range")


def test_cfg_output_names_the_files_that_chose_the_values():
    head = to_yaml(compose("train", ["method=fql", "task=scene-play-singletask-task2-v0"])).splitlines()[0]
    assert head.startswith("# composed from: method/fql.yaml, protocol/fql_scene.yaml, preset/quick.yaml")


def test_qgf_paper_preset():
    cfg = compose("train", ["method=qgf", "preset=qgf-paper"])
    assert cfg.chunk == 5 and cfg.method.discount == 0.999 and cfg.critic.batch_size == 1024
    assert list(cfg.policy.hidden) == [1024] * 4 and (cfg.policy.activation, cfg.policy.layer_norm) == ("gelu", "pre")
    assert len(cfg.evaluate.guidance) == 9


@pytest.mark.parametrize("method", ["method.variant=off2on", "method=avgf"])
def test_the_off2on_scripts_settings(method):
    """VGF with variant=off2on and A-VGF take the off2on OGBench script's per-family values."""
    antmaze = compose("train", [method, "preset=paper", "task=antmaze-giant-navigate-singletask-task1-v0"])
    assert antmaze.choices.protocol.endswith("_antmaze-giant")
    m = antmaze.method
    assert (m.discount, m.q_agg, m.num_particles, m.train_steps, m.vgf_lr) == (0.995, "min", 5, 5, 0.1)
    cube = compose("train", [method, "preset=paper", "task=cube-double-play-singletask-task1-v0"]).method
    assert (cube.discount, cube.q_agg, cube.num_particles, cube.train_steps, cube.vgf_lr) == (0.99, "mean", 5, 1, 0.05)
    soccer = compose("train", [method, "preset=paper", "task=antsoccer-arena-navigate-singletask-task1-v0"]).method
    assert (soccer.discount, soccer.train_steps) == (0.995, 2)
    base = compose("train", ["preset=paper", "task=cube-double-play-singletask-task1-v0"])
    assert base.choices.protocol == "vgf_cube" and base.method.train_steps == 3
