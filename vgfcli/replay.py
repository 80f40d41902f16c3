"""The replay buffer of online fine-tuning: the offline dataset first, then online transitions.

Preallocated tensors of capacity ``dataset + online steps`` (no Python lists of transitions), in the
same layout as the offline ``TensorData``, so the training ``Sampler`` draws batches from it as it
does from a dataset. Mixing follows the reference code (FQL's main.py, reused by the VGF and QAM
codebases): batches uniform over everything in the buffer, or with ``balanced`` half from the
dataset and half from the online rows (its ``--balanced_sampling``).

With action chunks (H > 1) a batch row is an H-step sequence inside one trajectory; the online rows
of an episode become sequence starts when the episode ends (its last row is then known).
"""

from __future__ import annotations

import torch

from vgfcli.training import Sampler, TensorData, chunk_starts


class ReplayBuffer(TensorData):
    """``TensorData`` whose ``size`` is the filled part; rows ``[0, offline)`` are the dataset."""

    def __init__(self, data: TensorData, online_capacity: int):
        def grow(t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((data.size + online_capacity, *t.shape[1:]), dtype=t.dtype, device=t.device)
            out[:data.size] = t
            return out

        super().__init__(grow(data.observations), grow(data.actions), grow(data.rewards),
                         grow(data.next_observations), grow(data.masks), grow(data.terminals), dict(data.attrs))
        self.offline = data.size
        self.filled = data.size
        self.episode_start = data.size  # first row of the online episode being filled

    @property
    def size(self) -> int:
        return self.filled

    @property
    def online(self) -> int:
        return self.filled - self.offline

    def add(self, obs, action, reward: float, next_obs, mask: float, terminal: bool) -> None:
        i = self.filled
        if i >= self.observations.shape[0]:
            raise ValueError("replay buffer full")
        dev = self.observations.device
        self.observations[i] = torch.as_tensor(obs, dtype=torch.float32, device=dev)
        self.actions[i] = torch.as_tensor(action, dtype=torch.float32, device=dev)
        self.rewards[i] = float(reward)
        self.next_observations[i] = torch.as_tensor(next_obs, dtype=torch.float32, device=dev)
        self.masks[i] = float(mask)
        self.terminals[i] = float(terminal)
        self.filled += 1
        if terminal:
            self.episode_start = self.filled

    def online_state(self) -> dict[str, torch.Tensor]:
        """The online rows, for a checkpoint (the dataset part is reloaded from its file)."""
        rows = slice(self.offline, self.filled)
        return {k: getattr(self, k)[rows].cpu().clone() for k in
                ("observations", "actions", "rewards", "next_observations", "masks", "terminals")}

    def load_online_state(self, state: dict[str, torch.Tensor]) -> None:
        n = state["observations"].shape[0]
        for key, value in state.items():
            getattr(self, key)[self.offline:self.offline + n] = value.to(self.observations.device)
        self.filled = self.offline + n
        ends = torch.nonzero(state["terminals"] > 0).flatten()
        self.episode_start = self.offline + (int(ends[-1]) + 1 if len(ends) else 0)


class ReplaySampler(Sampler):
    """Batches from a ``ReplayBuffer``: uniform over it, or half dataset / half online (``balanced``)."""

    def __init__(self, buffer: ReplayBuffer, batch_size: int, seed: int, chunk: int = 1, discount: float = 1.0,
                 balanced: bool = False):
        super().__init__(buffer, batch_size, seed, chunk=1, discount=discount)  # starts: the dataset rows' alone
        self.chunk, self.buffer, self.balanced = int(chunk), buffer, balanced
        self.offline_starts = chunk_starts(buffer.terminals[:buffer.offline], self.chunk) if self.chunk > 1 else None
        self._online_starts = torch.zeros(0, dtype=torch.int64)
        self._counted = buffer.offline  # online rows whose chunk starts are in _online_starts

    def _refresh(self) -> None:
        """Chunk starts of the online episodes finished since the last call."""
        b = self.buffer
        if self.chunk == 1 or b.episode_start <= self._counted:
            return
        rows = slice(self._counted, b.episode_start)
        new = chunk_starts(b.terminals[rows], self.chunk) + self._counted
        self._online_starts = torch.cat([self._online_starts, new])
        self._counted = b.episode_start

    def sample(self) -> dict[str, torch.Tensor]:
        b, g = self.buffer, self.generator
        self._refresh()
        if self.chunk == 1:
            pools = [(0, b.filled)] if not self.balanced or b.online == 0 else [(0, b.offline), (b.offline, b.filled)]
            sizes = _split(self.batch_size, len(pools))
            idx = torch.cat([torch.randint(lo, hi, (n,), generator=g) for (lo, hi), n in zip(pools, sizes)])
            return self.batch_at(idx)
        online = self._online_starts
        if self.balanced and len(online):
            groups = [self.offline_starts, online]
        else:
            groups = [torch.cat([self.offline_starts, online])]
        sizes = _split(self.batch_size, len(groups))
        idx = torch.cat([grp[torch.randint(0, len(grp), (n,), generator=g)] for grp, n in zip(groups, sizes)])
        return self.batch_at(idx)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
