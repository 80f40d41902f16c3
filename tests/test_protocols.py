"""Per-task settings: the protocol file picked from the method and the task, and what wins over it."""

import pytest

from vgfcli.config import compose, to_yaml
from vgfcli.protocols import family_candidates, task_label


@pytest.mark.parametrize("label, families", [
    ("cube-single-play-singletask-task2-v0", ["cube-single", "cube"]),
    ("antmaze-large-navigate-singletask-task1-v0", ["antmaze-large", "antmaze"]),
    ("puzzle-4x4-play-singletask-v0", ["puzzle-4x4", "puzzle"]),
    ("scene-play-singletask-task2-v0", ["scene"]),
    ("hopper-medium-v2", ["d4rl-hopper-medium", "d4rl-locomotion"]),
    ("antmaze-large-diverse-v2", ["d4rl-antmaze"]),
    ("antmaze-medium-play-v2", ["d4rl-antmaze"]),  # not OGBench's antmaze-medium: OGBench has no "play" maze
    ("antmaze-umaze-v2", ["d4rl-antmaze"]),
    ("pen-cloned-v1", ["d4rl-pen-cloned", "d4rl-adroit"]),
    ("visual-cube-single-play-singletask-task1-v0", ["visual-cube-single", "visual-cube", "cube-single", "cube"]),
    ("visual-scene-play-singletask-task1-v0", ["visual-scene", "scene"]),
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


def test_camera_tasks_get_the_visual_settings_and_their_own_fql_alphas():
    """seohongpark/fql README's visual commands: impala_small, p_aug 0.5, frame_stack 3, 500k steps;
    alpha 300 (cube-single, puzzle) or 100 (cube-double, scene). Methods without visual commands keep
    their state task's settings."""
    for task, alpha in (("visual-cube-single-play-singletask-task1-v0", 300),
                        ("visual-cube-double-play-singletask-task1-v0", 100),
                        ("visual-scene-play-singletask-task1-v0", 100), ("visual-puzzle-4x4-play-singletask-task1-v0", 300)):
        cfg = compose("train", ["method=fql", f"task={task}", "preset=paper"])
        assert cfg.choices.observation == "pixels" and cfg.method.alpha == alpha
        assert (cfg.policy.encoder, cfg.p_aug, cfg.frame_stack, cfg.critic.steps) == ("impala_small", 0.5, 3, 500000)
    vgf = compose("train", ["task=visual-scene-play-singletask-task1-v0"])
    assert vgf.choices.protocol == "vgf_scene" and vgf.policy.encoder == "impala_small"
    state = compose("train", ["task=scene-play-singletask-task1-v0"])
    assert state.choices.observation == "state" and state.policy.encoder is None and state.frame_stack is None
    # the user's word wins: no frames for a state task unless asked, and a value over the file's
    assert compose("train", ["task=visual-scene-play-singletask-task1-v0", "frame_stack=1"]).frame_stack == 1
    assert compose("train", ["task=visual-scene-play-singletask-task1-v0", "observation=state"]).policy.encoder is None


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
    assert head.startswith("# composed from: method/fql.yaml, online/fql.yaml, protocol/fql_scene.yaml, preset/quick.yaml")


def test_qgf_paper_preset():
    cfg = compose("train", ["method=qgf", "preset=qgf-paper"])
    assert cfg.chunk == 5 and cfg.method.discount == 0.999 and cfg.critic.batch_size == 1024
    assert list(cfg.policy.hidden) == [1024] * 4 and (cfg.policy.activation, cfg.policy.layer_norm) == ("gelu", "pre")
    assert len(cfg.evaluate.guidance) == 9


# ryanxhr/vgf@3ec8f9b run_scripts/run_vgf_off2on_ogbench.sh, read by hand: every block has
# vgf_particles 10 (l.12), vgf_lr 0.1 (l.14), vgf_alpha 1.0 (l.16), train_vgf_steps 5 (l.18); per block:
VGF_OFF2ON = [  # (task, discount, train_q_agg, source lines of discount / train_q_agg)
    ("antmaze-large-navigate-singletask-task4-v0", 0.995, "min", "l.37 / l.46"),
    ("antmaze-giant-navigate-singletask-task4-v0", 0.99, "min", "l.71 / l.80"),
    ("humanoidmaze-medium-navigate-singletask-task4-v0", 0.995, "mean", "l.104 / l.111"),
    ("humanoidmaze-large-navigate-singletask-task4-v0", 0.995, "mean", "l.134 / l.141"),
    ("antsoccer-arena-navigate-singletask-task4-v0", 0.995, "mean", "l.164 / l.171"),
    ("cube-single-play-singletask-task4-v0", 0.99, "mean", "l.194 / l.201"),
    ("cube-double-play-singletask-task4-v0", 0.99, "mean", "l.224 / l.231"),
    ("scene-play-singletask-task4-v0", 0.99, "mean", "l.254 / l.261"),
    ("puzzle-3x3-play-singletask-task4-v0", 0.99, "mean", "l.286 / l.293 (the active block)"),
    ("puzzle-4x4-play-singletask-task4-v0", 0.99, "mean", "l.319 / l.326"),
]


@pytest.mark.parametrize("task, discount, q_agg, source", VGF_OFF2ON)
def test_vgf_off2on_takes_its_own_scripts_settings(task, discount, q_agg, source):
    m = compose("train", ["method.variant=off2on", "preset=paper", f"task={task}"]).method
    assert (m.num_particles, m.train_steps, m.vgf_lr, m.alpha, m.grad_q_agg) == (10, 5, 0.1, 1.0, "mean")
    assert (m.discount, m.q_agg) == (discount, q_agg), source


# ryanxhr/vgf@3ec8f9b run_scripts/run_a_vgf_off2on_ogbench.sh: vgf_particles 5 (l.12) in every block; per block:
AVGF_OFF2ON = [  # (task, discount, train_q_agg, train_vgf_steps, vgf_lr, source lines)
    ("antmaze-large-navigate-singletask-task1-v0", 0.995, "min", 5, 0.1, "l.38 l.46 l.52 l.53"),
    ("antmaze-giant-navigate-singletask-task1-v0", 0.995, "min", 5, 0.1, "l.73 l.81 l.87 l.88"),
    ("humanoidmaze-medium-navigate-singletask-task1-v0", 0.995, "mean", 1, 0.05, "l.107 l.115 l.121 l.122"),
    ("antsoccer-arena-navigate-singletask-task1-v0", 0.995, "mean", 2, 0.05, "l.175 l.183 l.189 l.190"),
    ("cube-single-play-singletask-task1-v0", 0.99, "mean", 1, 0.05, "l.209 l.217 l.223 l.224"),
    ("scene-play-singletask-task1-v0", 0.99, "mean", 1, 0.1, "l.277 l.285 l.291 l.292"),
    ("puzzle-4x4-play-singletask-task1-v0", 0.99, "mean", 5, 0.1, "l.345 l.353 l.359 l.360"),
]


@pytest.mark.parametrize("task, discount, q_agg, steps, lr, source", AVGF_OFF2ON)
def test_avgf_takes_its_off2on_scripts_settings(task, discount, q_agg, steps, lr, source):
    m = compose("train", ["method=avgf", "preset=paper", f"task={task}"]).method
    assert (m.num_particles, m.discount, m.q_agg, m.train_steps, m.vgf_lr) == (5, discount, q_agg, steps, lr), source


def test_the_base_variant_keeps_the_offline_script():
    base = compose("train", ["preset=paper", "task=cube-double-play-singletask-task1-v0"])
    assert base.choices.protocol == "vgf_cube" and base.method.train_steps == 3


D4RL_ANTMAZE = ["preset=paper", "data.source=file", "data.kind=d4rl", "data.path=/data/antmaze-medium-play-v2.hdf5"]


def test_d4rl_antmaze_protocols():
    """run_vgf_off2on_d4rl.sh (N 10 l.37, vgf_lr 0.1 l.39, vgf_alpha 0.1 l.41, L_train 5 l.43, discount
    0.99 l.60, train_q_agg min l.68) and run_a_vgf_off2on_d4rl.sh (N 5 l.38, vgf_lr 0.1 l.40, L_train 5
    l.44, discount 0.99 l.61, min l.68); every method shifts rewards by -1 (FQL envs/d4rl_utils.py l.37,
    VGF's l.198)."""
    vgf = compose("train", ["method.variant=off2on", *D4RL_ANTMAZE])
    m = vgf.method
    assert (m.num_particles, m.vgf_lr, m.alpha, m.train_steps, m.discount, m.q_agg) == (10, 0.1, 0.1, 5, 0.99, "min")
    avgf = compose("train", ["method=avgf", *D4RL_ANTMAZE])
    assert avgf.choices.protocol == "avgf_d4rl-antmaze"
    m = avgf.method
    assert (m.num_particles, m.vgf_lr, m.train_steps, m.discount, m.q_agg) == (5, 0.1, 5, 0.99, "min")
    for cfg in (vgf, avgf, compose("train", ["method=fql", *D4RL_ANTMAZE])):
        assert cfg.critic.reward_transform == "minus_one", cfg.method.name


@pytest.mark.parametrize("method, start, buffer, episodes", [
    ("vgf", 5000, 2000000, 50), ("avgf", 5000, 2000000, 50), ("qam", 5000, None, 50), ("fql", 0, 2000000, 50),
    ("qgf", 0, 2000000, 30)])
def test_each_methods_online_loop(method, start, buffer, episodes):
    """VGF main.py start_training 5000 (l.34), buffer_size 2000000 (l.35), eval_episodes 50 (l.40); QAM
    main.py start_training 5000 (l.30), a buffer of |D| + online steps (l.258-261); FQL main.py: no warm-up,
    buffer_size 2000000 (l.33); QGF main.py: no warm-up, buffer_size 2000000 (l.57), eval_episodes 30
    (l.69), eval_interval 100000 (l.60). Every reference trains its flow online (online.train_reference);
    only QAM acts at random before its updates, and only under balanced sampling (main.py l.298-300)."""
    from vgfcli import methods

    cfg = compose("train", [f"method={method}", "preset=paper"])
    assert (cfg.online.start_training, cfg.online.buffer_size, cfg.online.sampling) == (start, buffer, "uniform")
    assert cfg.online.explore_budget is None and cfg.online.train_reference is True
    steps, every = (500000, 50000) if method == "qam" else (1000000, 100000)  # QAM reproduce.py l.251
    assert (cfg.online.steps, cfg.online.eval_every, cfg.online.eval_episodes) == (steps, every, episodes)
    agent = methods.load(method).Agent
    assert agent.random_warmup_under == (("balanced",) if method == "qam" else ())
    assert agent.reference_grad_clip == (1.0 if method in ("qam", "avgf") else None)  # a_vgf.py l.441, qam.py l.385
    smoke = compose("train", [f"method={method}", "preset=smoke"]).online
    assert smoke.steps <= 500 and smoke.start_training < smoke.steps


# ryanxhr/vgf@3ec8f9b run_scripts/run_vgf_off2on_ogbench.sh (commented blocks): --offline_steps per block
@pytest.mark.parametrize("task, offline, source", [
    ("antmaze-large-navigate-singletask-task4-v0", 2000000, "l.33"),
    ("antmaze-giant-navigate-singletask-task4-v0", 3000000, "l.67"),
    ("cube-double-play-singletask-task4-v0", 1000000, "the paper preset's 1M (l.281's active block)"),
])
def test_vgf_off2on_offline_phase_per_block(task, offline, source):
    cfg = compose("train", ["method.variant=off2on", "preset=paper", f"task={task}"])
    assert (cfg.policy.steps, cfg.critic.steps) == (offline, offline), source
    assert cfg.online.steps == 1000000
    quick = compose("train", ["method.variant=off2on", f"task={task}"])  # the schedule is the paper preset's
    assert quick.critic.steps < 1000000


def test_vgf_off2on_d4rl_schedule():
    """run_vgf_off2on_d4rl.sh: --offline_steps=500000 (l.55), --online_steps=1000000 (l.56),
    --eval_interval=50000 (l.57), --eval_episodes=50 (l.58), vgf_particles 10 (l.37)."""
    cfg = compose("train", ["method.variant=off2on", *D4RL_ANTMAZE])
    assert cfg.choices.protocol == "vgf-off2on_d4rl-antmaze"
    assert (cfg.policy.steps, cfg.critic.steps) == (500000, 500000)
    assert (cfg.online.steps, cfg.online.eval_every, cfg.online.eval_episodes) == (1000000, 50000, 50)
    assert cfg.method.num_particles == 10 and cfg.critic.reward_transform == "minus_one"
    offline = compose("train", D4RL_ANTMAZE)  # the offline variant keeps the paper preset's schedule
    assert offline.choices.protocol == "vgf_d4rl-antmaze" and offline.critic.steps == 1000000


# seohongpark/fql@719d044 README, offline-to-online commands (method.variant=off2on) against offline ones
@pytest.mark.parametrize("task, off2on, offline, q_agg, source", [
    ("humanoidmaze-medium-navigate-singletask-task1-v0", 100, 30, "mean", "l.251 / l.90"),
    ("antsoccer-arena-navigate-singletask-task1-v0", 30, 10, "mean", "l.253 / l.94"),
    ("pen-cloned-v1", 1000, 10000, "min", "l.273 / l.205"),
    ("door-cloned-v1", 1000, 30000, "min", "l.275 / l.211"),
    ("hammer-cloned-v1", 1000, 10000, "min", "l.277 / l.217"),
    ("relocate-cloned-v1", 10000, 30000, "min", "l.279 / l.223"),
    ("pen-expert-v1", 3000, 3000, "min", "no off2on command: the offline one, l.207"),
    ("cube-double-play-singletask-task1-v0", 300, 300, "mean", "l.255"),
])
def test_fql_off2on_alphas(task, off2on, offline, q_agg, source):
    data = ["data.source=file", "data.kind=d4rl", f"data.path=/data/{task}.hdf5"] if "-v1" in task else [f"task={task}"]
    online = compose("train", ["method=fql", "method.variant=off2on", *data]).method
    assert (online.alpha, online.q_agg) == (off2on, q_agg), source
    assert compose("train", ["method=fql", *data]).method.alpha == offline
