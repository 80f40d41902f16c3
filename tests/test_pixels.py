"""Pixels: the IMPALA encoder's shapes and pooling, frame-stack indices at episode starts, and the
random-shift augmentation (deterministic given the seed, off when p_aug is 0)."""

import pytest
import torch

from vgfcli.nn.encoders import ENCODERS, _same_pool, make_encoder
from vgfcli.pixels import augment, episode_starts, gather_stack, next_stack_indices, shift_frames, stack_indices


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
    terminals = torch.tensor([0, 0, 1, 0, 1, 0, 0, 0])  # episodes: rows 0-2, 3-4, 5-7
    starts = episode_starts(terminals)
    assert starts.tolist() == [0, 0, 0, 3, 3, 5, 5, 5]
    stacks = stack_indices(torch.arange(8), starts, 3)
    assert stacks.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [3, 3, 3], [3, 3, 4], [5, 5, 5], [5, 5, 6],
                               [5, 6, 7]]
    assert next_stack_indices(stacks[:2], torch.tensor([1, 2])).tolist() == [[0, 0, 1], [0, 1, 2]]


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
