"""The dataset sampler: uniform rows for H = 1, and H-step sequences that respect trajectories."""

import numpy as np
import pytest
import torch

from vgfcli.errors import VgfError
from vgfcli.training import Sampler, TensorData, chunk_starts


def make_data(lengths, masks=None, act_dim=2):
    """Trajectories of the given lengths; row i has observation [i], action [i, -i], reward i + 1."""
    n = sum(lengths)
    rows = torch.arange(n, dtype=torch.float32)
    terminals = torch.zeros(n)
    terminals[torch.tensor(np.cumsum(lengths) - 1)] = 1.0
    actions = torch.stack([rows, -rows], 1)[:, :act_dim]
    return TensorData(observations=rows[:, None], actions=actions, rewards=rows + 1, next_observations=rows[:, None] + 1,
                      masks=torch.ones(n) if masks is None else torch.as_tensor(masks, dtype=torch.float32),
                      terminals=terminals, attrs={})


def test_chunk_starts_never_cross_a_trajectory_end():
    # trajectories: rows 0-3, 4-5, 6-10
    starts = chunk_starts(np.array([0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1]), 3).tolist()
    assert starts == [0, 1, 6, 7, 8]
    assert chunk_starts(np.array([0, 0, 0, 1]), 1).tolist() == [0, 1, 2, 3]
    # a last trajectory without its terminal flag still ends at the last row
    assert chunk_starts(np.array([0, 1, 0, 0]), 2).tolist() == [0, 2]


def test_chunked_batch_by_hand():
    data = make_data([4, 2, 5])
    sampler = Sampler(data, batch_size=8, seed=0, chunk=3, discount=0.5)
    batch = sampler.batch_at(torch.tensor([1, 6]))
    assert batch["actions"].tolist() == [[1, -1, 2, -2, 3, -3], [6, -6, 7, -7, 8, -8]]
    # rewards r_i = i + 1: 2 + 0.5*3 + 0.25*4 = 4.5 ; 7 + 0.5*8 + 0.25*9 = 13.25
    assert batch["rewards"].tolist() == [4.5, 13.25]
    assert batch["masks"].tolist() == [1.0, 1.0]
    assert batch["next_observations"].squeeze(1).tolist() == [4.0, 9.0]  # after the 3rd step: row i+2's next
    assert batch["indices"].tolist() == [3, 8]
    assert batch["observations"].squeeze(1).tolist() == [1.0, 6.0]


def test_a_terminal_inside_the_chunk_stops_rewards_and_bootstrapping():
    masks = np.ones(6)
    masks[1] = 0.0  # row 1 is a true terminal (success): nothing after it counts
    data = make_data([6], masks=masks)
    batch = Sampler(data, batch_size=4, seed=0, chunk=3, discount=0.9).batch_at(torch.tensor([0, 2]))
    assert batch["rewards"][0].item() == pytest.approx(1 + 0.9 * 2)  # rows 0 and 1, not row 2
    assert batch["masks"].tolist() == [0.0, 1.0]
    assert batch["rewards"][1].item() == pytest.approx(3 + 0.9 * 4 + 0.81 * 5)


def test_sampled_chunks_come_from_valid_starts_only():
    data = make_data([4, 2, 5])
    sampler = Sampler(data, batch_size=256, seed=3, chunk=3)
    batch = sampler.sample()
    firsts = batch["observations"].squeeze(1).long()
    assert set(firsts.tolist()) <= {0, 1, 6, 7, 8}
    assert len(set(firsts.tolist())) == 5  # every valid start is reachable
    # within a sample the actions are consecutive rows of one trajectory
    assert torch.equal(batch["actions"][:, 2], batch["actions"][:, 0] + 1)


def test_chunk_one_is_the_plain_uniform_sampler():
    data = make_data([4, 2, 5])
    a = Sampler(data, batch_size=16, seed=1).sample()
    b = Sampler(data, batch_size=16, seed=1, chunk=1, discount=0.5).sample()
    for key in a:
        assert torch.equal(a[key], b[key])
    assert torch.equal(a["indices"], a["observations"].squeeze(1).long())


def test_a_chunk_longer_than_every_trajectory_is_a_clear_error():
    with pytest.raises(VgfError, match="no trajectory in the dataset has 7 steps"):
        Sampler(make_data([4, 2, 5]), batch_size=4, seed=0, chunk=7)


def test_reward_transforms_by_hand():
    from vgfcli.training import transform_rewards

    data = make_data([4, 2, 5])  # rewards i + 1: returns 10, 11, 45 -> spread 35
    assert transform_rewards(data, "return_range") == {"reward_scale": pytest.approx(1000 / 35)}
    assert data.rewards[0].item() == pytest.approx(1000 / 35)
    data = make_data([4, 2])
    transform_rewards(data, "minus_one")
    assert data.rewards.tolist() == [0, 1, 2, 3, 4, 5]
    data = make_data([4, 2])
    data.rewards.copy_(torch.tensor([-2.0, -1.0, 0.0, -0.5, 0.0, 3.0]))
    transform_rewards(data, "sparse")  # QAM's r -> -(r != 0)
    assert data.rewards.tolist() == [-1, -1, 0, -1, 0, -1]
    with pytest.raises(VgfError, match="reward_transform"):
        transform_rewards(make_data([3]), "scale")


def test_loaded_actions_are_clipped_inside_the_box_for_every_method(tmp_path):
    # Every reference repo clips dataset actions to +-(1 - 1e-5) before any training (flow AND critic).
    from vgfcli.data import canonical
    from vgfcli.training import ACTION_CLIP, load_tensors

    n = 4
    actions = np.array([[1.0, -1.0], [0.5, -0.2], [0.99999, -0.999999], [1.0, 0.0]], np.float32)
    ds = canonical.Dataset(np.zeros((n, 3), np.float32), actions, np.zeros(n, np.float32), np.zeros((n, 3), np.float32),
                           np.array([0, 0, 0, 1], np.float32), np.ones(n, np.float32))
    data = load_tensors(canonical.save(ds, tmp_path / "d.h5"), torch.device("cpu"))
    assert data.actions.abs().max().item() == pytest.approx(ACTION_CLIP)
    assert data.actions[1].tolist() == pytest.approx([0.5, -0.2])
