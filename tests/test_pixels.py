"""Pixels: the IMPALA encoder's shapes and pooling, frame-stack indices at episode starts, and the
random-shift augmentation (deterministic given the seed, off when p_aug is 0)."""

import pytest
import torch

from vgfcli.nn.encoders import ENCODERS, _same_pool, make_encoder
from vgfcli.pixels import augment, gather_stack, shift_frames, stack_indices


@pytest.mark.parametrize("name, frames, out", [("impala_small", 3, 512), ("impala_small", 9, 512),
                                              ("impala_debug", 3, 512), ("impala", 3, 512)])
def test_encoder_shapes(name, frames, out):
    encoder = make_encoder(name, (64, 64, frames))
    x = torch.randint(0, 256, (2, 5, 64, 64, frames), dtype=torch.uint8)  # leading dims kept
    assert encoder(x).shape == (2, 5, out) and encoder.out_dim == out
    # 64 -> 32 -> 16 -> 8 per stack: the dense layer reads last-stack channels x 8 x 8
    assert encoder.dense[0].in_features == ENCODERS[name].stacks[-1] * (64 // 2 ** len(ENCODERS[name].stacks)) ** 2


def test_impala_small_has_one_block_per_stack_and_the_reference_sizes():
    encoder = make_encoder("impala_small", (64, 64, 3))
    assert [len(s.blocks) for s in encoder.stacks] == [1, 1, 1]
    assert [s.conv.out_channels for s in encoder.stacks] == [16, 32, 32] and encoder.dense[0].in_features == 2048
    with pytest.raises(ValueError, match="unknown encoder"):
        make_encoder("resnet", (64, 64, 3))


def test_same_pooling_pads_at_the_end_as_xla_does():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # windows start at 0 and 2 (padding after, not before): maxima of rows/cols {0,1,2} and {2,3}
    assert _same_pool(x).reshape(-1).tolist() == [10.0, 11.0, 14.0, 15.0]
    assert _same_pool(torch.zeros(1, 1, 5, 5)).shape[-2:] == (3, 3)


def test_frame_stacks_repeat_the_first_frame_at_episode_starts():
    import numpy as np

    from vgfcli.training import frame_starts

    # OGBench's layout: episodes of frames 0-3, 4-5 and 6-8; a transition per frame but each episode's
    # last, whose next frame is the row after it
    rows = np.array([0, 1, 2, 4, 6, 7])
    terminals = np.array([0, 0, 1, 1, 0, 1], np.float32)
    starts = frame_starts(rows, rows + 1, terminals, 9)
    assert starts.tolist() == [0, 0, 0, 0, 4, 4, 6, 6, 6]
    stacks = stack_indices(torch.arange(9), starts, 3)
    assert stacks.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [4, 4, 4], [4, 4, 5], [6, 6, 6],
                               [6, 6, 7], [6, 7, 8]]
    # the next state's stack is the current one shifted by one, ending in the next frame
    current, following = stack_indices(torch.as_tensor(rows), starts, 3), stack_indices(torch.as_tensor(rows + 1),
                                                                                         starts, 3)
    assert torch.equal(following, torch.cat([current[:, 1:], torch.as_tensor(rows + 1).unsqueeze(1)], dim=1))


def test_gathered_stacks_are_channels_oldest_first():
    frames = torch.arange(4, dtype=torch.uint8).reshape(4, 1, 1, 1).expand(4, 2, 2, 3).contiguous()
    out = gather_stack(frames, torch.tensor([[0, 1], [2, 3]]))
    assert out.shape == (2, 2, 2, 6)
    assert out[0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1] and out[1, 1, 1].tolist() == [2, 2, 2, 3, 3, 3]


def test_shift_repeats_edge_pixels():
    frame = torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4, 1)
    down_right = shift_frames(frame, torch.tensor([[1, 1]]))[0, :, :, 0]
    assert down_right[0].tolist() == [5, 6, 7, 7] and down_right[3].tolist() == [13, 14, 15, 15]
    assert torch.equal(shift_frames(frame, torch.tensor([[0, 0]])), frame)


def test_augmentation_is_seeded_shared_by_a_samples_keys_and_off_at_zero():
    batch = {"observations": torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)}
    batch["next_observations"] = batch["observations"].clone()

    def run(seed, p):
        return augment(batch, p, torch.Generator().manual_seed(seed))

    a, b = run(0, 1.0), run(0, 1.0)
    assert torch.equal(a["observations"], b["observations"])
    assert torch.equal(a["observations"], a["next_observations"])  # one shift per sample, every key
    assert not torch.equal(a["observations"], batch["observations"])
    assert run(0, 0.0) is batch and run(0, None) is batch
    applied = sum(not torch.equal(run(s, 0.5)["observations"], batch["observations"]) for s in range(40))
    assert 8 < applied < 32  # one coin per batch, p = 0.5


# --- pixel datasets: ingest stores every frame once, chunked and compressed -------------------------


def _visual_npz(path, episodes=2, length=6, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = episodes * length
    terminals = np.zeros(n, bool)
    terminals[length - 1::length] = True
    np.savez(path, observations=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
             actions=rng.uniform(-1, 1, (n, 5)).astype(np.float32), terminals=terminals,
             qpos=rng.normal(size=(n, 21)).astype(np.float32), qvel=np.zeros((n, 20), np.float32))
    return path


def test_a_visual_dataset_keeps_each_frame_once_and_names_transitions_by_row(tmp_path):
    import h5py
    import numpy as np

    from vgfcli.data import canonical
    from vgfcli.data.ogbench_npz import read_ogbench_npz

    src = _visual_npz(tmp_path / "visual-cube-single-play-v0.npz")
    ds = read_ogbench_npz(src, dataset_name="visual-cube-single-play-v0", task=1)
    raw = np.load(src)["observations"]
    assert ds.is_pixels and ds.frames is not None and ds.frames.shape == (12, 64, 64, 3)
    assert ds.n_transitions == 10 and ds.obs_dim == 64 * 64 * 3
    # s and s' are rows of the one frame array: s' of a transition is the next row of its episode
    assert ds.observations.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert ds.next_observations.tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    np.testing.assert_array_equal(ds.frames[ds.next_observations[0]], raw[1])
    path = canonical.save(ds, tmp_path / "dataset.h5")
    with h5py.File(path) as f:
        assert f["frames"].shape == (12, 64, 64, 3) and f["frames"].dtype == np.uint8
        assert f["frames"].chunks == (1, 64, 64, 3) and f["frames"].compression == "gzip"
        assert f["observations"].dtype == np.int64 and f["next_observations"].shape == (10,)
    memory, lazy = canonical.load(path), canonical.load(path, frames="lazy")
    np.testing.assert_array_equal(memory.frames, raw)
    rows = np.array([5, 0, 5, 11])  # any order, repeats included
    np.testing.assert_array_equal(lazy.frames[rows], raw[rows])
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy.frames))[rows], raw[rows])


def test_a_corrupt_frame_array_is_a_clear_error(tmp_path):
    import h5py
    import numpy as np

    from vgfcli.data import canonical
    from vgfcli.data.ogbench_npz import read_ogbench_npz
    from vgfcli.errors import VgfError

    ds = read_ogbench_npz(_visual_npz(tmp_path / "visual-cube-single-play-v0.npz"),
                          dataset_name="visual-cube-single-play-v0", task=1)
    path = canonical.save(ds, tmp_path / "dataset.h5")
    with h5py.File(path) as f:
        chunk = f["frames"].id.get_chunk_info(3)
    with open(path, "r+b") as f:  # scribble over one compressed frame
        f.seek(chunk.byte_offset)
        f.write(b"\xff" * min(chunk.size, 64))
    with pytest.raises(VgfError, match="frames"):
        canonical.load(path)
    with pytest.raises(VgfError, match="frames could not be read"):
        canonical.load(path, frames="lazy").frames[np.array([3])]


def test_ingest_of_a_truncated_visual_file_is_exit_2_and_caches_nothing(tmp_path, vgf_home):
    from typer.testing import CliRunner

    from vgfcli.cli import app
    from vgfcli.tracking import Store

    src = _visual_npz(tmp_path / "visual-cube-single-play-v0.npz", episodes=3)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])  # the frames member cut short
    result = CliRunner().invoke(app, ["ingest", f"dataset.path={src}", "dataset.task=1"])
    assert result.exit_code == 2 and "corrupt or truncated" in result.output
    assert Store("vgf").find(stage="ingest", status=None) == []


# --- training on frames: batches of frame stacks, and the reference flow with its own encoder -------


def _pixel_data(tmp_path, frame_stack=3, monkeypatch=None, lazy=False):
    from vgfcli.data import canonical
    from vgfcli.data.ogbench_npz import read_ogbench_npz
    from vgfcli.training import load_tensors

    ds = read_ogbench_npz(_visual_npz(tmp_path / "visual-cube-single-play-v0.npz", episodes=3, length=7),
                          dataset_name="visual-cube-single-play-v0", task=1)
    path = canonical.save(ds, tmp_path / f"dataset-{lazy}.h5")
    if lazy:
        monkeypatch.setattr("vgfcli.data.frames.fits_in_memory", lambda shape, share=0.5: False)
    return ds, load_tensors(path, torch.device("cpu"), frame_stack=frame_stack)


def test_batches_of_a_pixel_dataset_are_frame_stacks_in_memory_or_read_per_batch(tmp_path, monkeypatch):
    from vgfcli.training import Sampler

    ds, data = _pixel_data(tmp_path)
    assert data.obs_shape == (64, 64, 9) and isinstance(data.pixels.frames, torch.Tensor)
    batch = Sampler(data, 8, seed=0).batch_at(torch.tensor([0, 1, 6]))  # rows 0, 1 and episode 2's first
    frames = torch.as_tensor(ds.frames)
    assert batch["observations"].shape == (3, 64, 64, 9) and batch["observations"].dtype == torch.uint8
    # row 1's stack: frames [0, 0, 1] (the first repeated); its next: [0, 1, 2]
    assert torch.equal(batch["observations"][1], torch.cat([frames[0], frames[0], frames[1]], dim=-1))
    assert torch.equal(batch["next_observations"][1], torch.cat([frames[0], frames[1], frames[2]], dim=-1))
    assert torch.equal(batch["observations"][2], frames[7].repeat(1, 1, 3))  # transition 6 = frame 7
    _, lazy = _pixel_data(tmp_path, monkeypatch=monkeypatch, lazy=True)
    assert not isinstance(lazy.pixels.frames, torch.Tensor)
    a, b = Sampler(data, 16, seed=3, p_aug=0.5).sample(), Sampler(lazy, 16, seed=3, p_aug=0.5).sample()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_pixel_flow_encodes_once_per_call_and_survives_its_file(tmp_path):
    from vgfcli.agents import load_policy
    from vgfcli.nn.encoders import EncodedFlow, make_encoder
    from vgfcli.nn.flow import FlowPolicy

    encoder = make_encoder("impala_debug", (64, 64, 6))
    flow = EncodedFlow(encoder, FlowPolicy(encoder.out_dim, 5, (32, 32)))
    calls = []
    encoder.register_forward_hook(lambda *args: calls.append(1))
    frames = torch.randint(0, 256, (4, 64, 64, 6), dtype=torch.uint8)
    actions = flow.sample(frames, num=8, steps=10, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (4, 8, 5) and len(calls) == 1  # 8 samples x 10 Euler steps, one encoding
    path = tmp_path / "policy.pt"
    torch.save({"flow": flow.state_dict(), "obs_dim": 64 * 64 * 6, "act_dim": 5, "hidden": [32, 32],
                "flow_steps": 10, "encoder": "impala_debug", "obs_shape": [64, 64, 6]}, path)
    loaded, saved = load_policy(path, "cpu")
    again = loaded.sample(frames, num=8, steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(actions, again) and saved["encoder"] == "impala_debug"


def test_rollouts_stack_camera_frames_as_the_reference_wrapper_does():
    import types

    import numpy as np

    from vgfcli.rollout import _Slot

    slot = _Slot(env=types.SimpleNamespace(unwrapped=types.SimpleNamespace()))
    frames = [np.full((4, 4, 3), v, np.uint8) for v in range(4)]
    slot.observe(frames[0], 3, reset=True)
    assert slot.obs.shape == (4, 4, 9) and slot.obs.dtype == np.uint8 and (slot.obs == 0).all()
    slot.observe(frames[1], 3, reset=False)
    slot.observe(frames[2], 3, reset=False)
    slot.observe(frames[3], 3, reset=False)
    assert slot.obs[0, 0].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # oldest first
    slot.observe(np.arange(3.0), 3, reset=True)  # a state stays a float32 vector
    assert slot.obs.dtype == np.float32 and slot.obs.shape == (3,)


def test_bc_on_frames_end_to_end_and_frames_without_an_encoder_refused_clearly(tmp_path, vgf_home):
    import json

    from typer.testing import CliRunner

    from vgfcli.cli import app
    from vgfcli.tracking import Store

    path = _visual_npz(tmp_path / "visual-cube-single-play-v0.npz", episodes=3, length=8)
    _visual_npz(tmp_path / "visual-cube-single-play-v0-val.npz", episodes=1, length=8, seed=1)
    args = ["pipeline", "preset=smoke", "data.source=file", f"data.path={path}",
            "task=visual-cube-single-play-singletask-task1-v0", "policy.steps=4", "policy.batch_size=8",
            "evaluate.episodes=1", "evaluate.num_envs=1", "evaluate.max_episode_steps=4"]
    pixels = ["policy.encoder=impala_debug", "frame_stack=2", "p_aug=0.5"]
    result = CliRunner().invoke(app, [*args, *pixels, "method=bc", "--json"])
    assert result.exit_code == 0, result.output
    assert {r.stage for r in Store("vgf").find()} == {"ingest", "pretrain-policy", "evaluate"}
    # the exported program takes uint8 frame stacks, its encoder inside; parity is checked by the stage
    export = CliRunner().invoke(app, ["export", *args[1:], *pixels, "method=bc", "export.format=onnx", "--json"])
    assert export.exit_code == 0, export.output
    summary = json.loads(export.stdout)["summary"]
    assert summary["observation_shape"] == [64, 64, 6] and summary["observations_dtype"] == "uint8"
    assert max(summary["parity_max_abs_diff"].values()) <= 1e-4
    # --video: the usual front view beside what the agent sees; the observations keep their 64 x 64
    video = CliRunner().invoke(app, ["evaluate", *args[1:], *pixels, "method=bc", "--video", "1",
                                     "evaluate.video_size=96", "--json"])
    assert video.exit_code == 0, video.output
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(json.loads(video.stdout)["videos"][0])
    assert next(reader)["size"] == (192, 96)  # width, height
    reader.close()
    wrong = CliRunner().invoke(app, [*args, "method=bc", "observation=state"])  # frames, no encoder
    assert wrong.exit_code == 2 and "policy.encoder" in wrong.output
