"""Random training batches for the method tests (the contract's batch keys)."""

import torch


def random_batch(obs_dim: int, act_dim: int, n: int = 8, seed: int = 0) -> dict:
    """Observations and rewards ~ N(0, 1), actions in the box, about 30 % of masks 0."""
    g = torch.Generator().manual_seed(seed)
    return dict(observations=torch.randn(n, obs_dim, generator=g),
                actions=torch.rand(n, act_dim, generator=g) * 2 - 1,
                rewards=torch.randn(n, generator=g),
                masks=(torch.rand(n, generator=g) > 0.3).float(),
                next_observations=torch.randn(n, obs_dim, generator=g))
