"""Every method on camera frames: each network's own encoder, frames encoded once per network per update
and per acting call (whatever the particles, transport steps or Euler steps), and the pipeline end to
end on a small visual dataset."""

import math

import pytest
import torch

from vgfcli import methods
from vgfcli.nn.encoders import EncodedFlow, ImpalaEncoder, make_encoder
from vgfcli.nn.flow import FlowPolicy

SHAPE, ACT, B = (16, 16, 6), 3, 4
SMALL = {"critic_hidden": (16, 16), "actor_hidden": (16, 16), "encoder": "impala_debug", "flow_steps": 3}
# (method, small settings, larger settings): the larger ones multiply particles and steps
SIZES = {
    "vgf": ({"num_particles": 2, "train_steps": 1, "test_steps": 1, "bank_size": 0},
            {"num_particles": 8, "train_steps": 4, "test_steps": 4, "bank_size": 0}),
    "vgf-autograd": ({"num_particles": 2, "train_steps": 1, "test_steps": 1, "bank_size": 0, "closed_form": False},
                     {"num_particles": 8, "train_steps": 4, "test_steps": 4, "bank_size": 0, "closed_form": False}),
    "vgf-adaptive": ({"num_particles": 2, "train_steps": 1, "test_steps": 1, "bank_size": 0, "train_budget": "auto"},
                     {"num_particles": 8, "train_steps": 4, "test_steps": 4, "bank_size": 0, "train_budget": "auto"}),
    "avgf": ({"num_particles": 2, "train_steps": 1, "test_steps": 1}, {"num_particles": 8, "train_steps": 4, "test_steps": 4}),
    "qgf": ({"num_particles": 2, "guidance": 0.1}, {"num_particles": 8, "guidance": 0.1}),
    "qam": ({"best_of_n": 2}, {"best_of_n": 8}),
    "qam-fql": ({"best_of_n": 2, "variant": "fql"}, {"best_of_n": 8, "variant": "fql"}),
    "qam-edit": ({"best_of_n": 2, "variant": "edit"}, {"best_of_n": 8, "variant": "edit"}),
    "fql": ({"flow_steps": 2}, {"flow_steps": 8}),  # the distillation target's Euler steps
}


def pixel_agent(name: str, **overrides):
    module = methods.load(name.split("-")[0])
    torch.manual_seed(0)
    encoder = make_encoder("impala_debug", SHAPE)
    reference = EncodedFlow(encoder, FlowPolicy(encoder.out_dim, ACT, (16, 16)))
    return module.Agent.create({**SMALL, **overrides}, SHAPE, ACT, "cpu", reference=reference)


def frames_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.randint(0, 256, (B, *SHAPE), generator=g, dtype=torch.uint8)  # noqa: E731
    return {"observations": frames(), "actions": torch.rand((B, ACT), generator=g) * 2 - 1,
            "rewards": torch.rand((B,), generator=g), "masks": torch.ones(B), "next_observations": frames()}


def frames_encoded(agent, run) -> dict[str, int]:
    """Frames each encoder of the agent encodes while ``run()`` runs, by the network it belongs to."""
    counts, hooks = {}, []
    for part in ("reference", "critic", "target_critic", "policy", "onestep", "edit", "field", "value"):
        net = getattr(agent, part, None)
        for module in (net.modules() if isinstance(net, torch.nn.Module) else ()):
            if isinstance(module, ImpalaEncoder):
                counts[part] = 0

                def count(_m, inputs, _out, part=part):
                    counts[part] += math.prod(inputs[0].shape[:-3])

                hooks.append(module.register_forward_hook(count))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return counts


@pytest.mark.parametrize("name", list(SIZES))
def test_each_network_encodes_each_frame_once_per_update_and_per_action(name):
    small, large = SIZES[name]
    seen = []
    for settings in (small, large):
        agent = pixel_agent(name, **settings)
        parts = {id(m) for p in ("reference", "critic", "target_critic", "policy", "onestep", "edit", "field", "value")
                 for m in getattr(getattr(agent, p, None), "modules", lambda: [])() if isinstance(m, ImpalaEncoder)}
        assert len(parts) == sum(getattr(agent, p, None) is not None and hasattr(getattr(agent, p), "encoder")
                                 for p in ("reference", "critic", "target_critic", "policy", "onestep", "edit",
                                           "field", "value"))  # one encoder per network, none shared
        batch = frames_batch()
        update = frames_encoded(agent, lambda: agent.update(batch))
        # at most the batch's states and its next states, once each, per network
        assert all(n <= 2 * B for n in update.values()), update
        acting = frames_encoded(agent, lambda: agent.act(batch["observations"], num_particles=3))
        assert all(n <= B for n in acting.values()), acting
        # a critic reads every state once (QGF guides with its target critic by default)
        assert acting["critic"] + acting["target_critic"] == B
        seen.append((update, acting))
    assert seen[0] == seen[1]  # more particles and steps: not one more frame encoded


def test_the_target_critic_blends_its_encoder_and_the_checkpoint_keeps_it():
    agent = pixel_agent("vgf", num_particles=2, train_steps=1, bank_size=0, tau=0.5)
    before = agent.target_critic.encoder.dense[0].weight.clone()
    agent.update(frames_batch())
    learned = agent.critic.encoder.dense[0].weight.clone()
    agent.update(frames_batch(2))  # blends the critic as it was before this step: `learned`
    after = agent.target_critic.encoder.dense[0].weight
    torch.testing.assert_close(after, 0.5 * before + 0.5 * learned)
    assert not torch.equal(after, agent.critic.encoder.dense[0].weight)
    again = pixel_agent("vgf", num_particles=2, train_steps=1, bank_size=0, tau=0.5)
    again.load_state_dict(agent.state_dict())
    obs = frames_batch(1)["observations"]
    torch.testing.assert_close(again.act(obs, generator=torch.Generator().manual_seed(0)),
                               agent.act(obs, generator=torch.Generator().manual_seed(0)), rtol=0, atol=0)


def test_the_encoder_names_the_config_accepts_are_the_encoders_there_are():
    from vgfcli.nn.encoders import ENCODERS
    from vgfcli.schema import ENCODER_NAMES

    assert set(ENCODER_NAMES) == set(ENCODERS)


def test_critic_encoder_defaults_to_the_policys_and_can_differ():
    from vgfcli.agents import method_config
    from vgfcli.config import compose

    saved = {"hidden": [16], "flow_steps": 3, "encoder": "impala_small"}  # what a pixel policy file records
    task = "task=visual-cube-single-play-singletask-task1-v0"
    assert method_config(compose("train", [task]), saved)[1].encoder == "impala_small"
    own = compose("train", [task, "critic.encoder=impala_debug"])
    assert method_config(own, saved)[1].encoder == "impala_debug"
    assert method_config(compose("train", []), {"hidden": [16], "flow_steps": 3})[1].encoder is None  # states


def test_frames_need_an_encoder_and_states_refuse_one():
    with pytest.raises(ValueError, match="critic.encoder"):
        pixel_agent("fql", encoder=None)
    with pytest.raises(ValueError, match="state vectors"):
        methods.load("fql").Agent.create({**SMALL}, 7, ACT, "cpu")


def test_the_bank_on_frames_holds_the_reference_samples_of_each_next_state():
    from vgfcli.training import ObservedRows, PixelFrames

    frames = torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8)
    pixels = PixelFrames(frames, torch.zeros(10, dtype=torch.int64), 2)
    rows = ObservedRows(torch.arange(1, 9), pixels)
    agent = pixel_agent("vgf", num_particles=2, bank_size=4, bank_refresh_every=0)
    encoded = frames_encoded(agent, lambda: agent.prepare(rows))
    assert agent.bank.samples.shape == (8, 4, ACT) and encoded["reference"] == 8  # each next state once
    # a row's samples are the reference's at that row's frame stack
    assert torch.equal(rows[torch.tensor([2])][0], pixels.observe(torch.tensor([3]))[0])
    assert agent.bank.samples.abs().max() <= 1


def test_every_method_runs_the_pipeline_and_exports_on_frames(vgf_home):
    """A small visual dataset collected by vgf (camera frames rendered headless), then every method's
    pipeline on it with preset=smoke's visual sizes (conf/observation_preset/pixels_smoke.yaml)."""
    import json

    from typer.testing import CliRunner

    from vgfcli.cli import app
    from vgfcli.tracking import Store

    args = ["preset=smoke", "task=visual-cube-single-play-singletask-task1-v0"]
    for method in ("vgf", "avgf", "qgf", "qam", "fql"):
        workers = ["evaluate.workers=2"] if method == "vgf" else []  # rows on frames in worker processes too
        result = CliRunner().invoke(app, ["pipeline", *args, f"method={method}", *workers, "--json"])
        assert result.exit_code == 0, (method, result.output)
    runs = Store("vgf").find()
    assert [r.stage for r in runs].count("train-critic") == 5
    assert [r.stage for r in runs].count("collect") == 1 and [r.stage for r in runs].count("pretrain-policy") == 1
    # the exported acting program takes uint8 frame stacks, every encoder inside it
    export = CliRunner().invoke(app, ["export", *args, "method=fql", "export.format=onnx", "--json"])
    assert export.exit_code == 0, export.output
    summary = json.loads(export.stdout)["summary"]
    assert summary["observation_shape"] == [64, 64, 6] and summary["observations_dtype"] == "uint8"
    assert max(summary["parity_max_abs_diff"].values()) <= 1e-4
    export = CliRunner().invoke(app, ["export", *args, "method=vgf", "export.format=pt2", "--json"])
    assert export.exit_code == 0, export.output
    assert max(json.loads(export.stdout)["summary"]["parity_max_abs_diff"].values()) <= 1e-4
    # fine-tuning on frames: online camera frames into the buffer's frame store, the curves on frames
    finetune = CliRunner().invoke(app, ["finetune", *args, "method=vgf", "--json"])
    assert finetune.exit_code == 0, finetune.output
    assert json.loads(finetune.stdout)["summary"]["online_steps"] == 16


def test_the_replay_buffer_stores_each_online_frame_once_and_stacks_it_as_training_does():
    from vgfcli.replay import ReplayBuffer, ReplaySampler
    from vgfcli.training import PixelFrames, TensorData

    frames = torch.randint(0, 256, (6, 4, 4, 3), dtype=torch.uint8)  # one dataset episode of 6 frames
    rows = torch.arange(5)
    data = TensorData(rows, torch.zeros(5, 2), torch.zeros(5), rows + 1, torch.ones(5), torch.zeros(5), {},
                      PixelFrames(frames, torch.zeros(6, dtype=torch.int64), 2))
    buffer = ReplayBuffer(data, online_steps=4)
    online = [torch.full((4, 4, 3), v, dtype=torch.uint8) for v in range(1, 6)]
    first = buffer.add_frame(online[0])
    assert first == 6  # after the dataset's frames
    previous = first
    for i, frame in enumerate(online[1:]):
        row = buffer.add_frame(frame, first)
        buffer.add(previous, torch.zeros(2), 1.0, row, 1.0, i == 3)
        previous = row
    assert buffer.size == 9 and buffer.frames_used == 11
    stack = buffer.pixels.observe(torch.tensor([first, first + 1]))
    assert torch.equal(stack[0], torch.cat([online[0], online[0]], -1))  # the reset frame repeated
    assert torch.equal(stack[1], torch.cat([online[0], online[1]], -1))
    batch = ReplaySampler(buffer, 4, seed=0).batch_at(torch.tensor([5]))  # the first online transition
    assert torch.equal(batch["next_observations"][0], stack[1])
    again = ReplayBuffer(data, online_steps=4)
    again.load_online_state(buffer.online_state())
    assert again.frames_used == 11 and torch.equal(again.pixels.frames[:11], buffer.pixels.frames[:11])
    assert torch.equal(again.pixels.observe(torch.tensor([9])), buffer.pixels.observe(torch.tensor([9])))
