"""The replay buffer of online fine-tuning: the offline dataset first, then online transitions.

Preallocated tensors (no Python lists of transitions), in the same layout as the offline
``TensorData``, so the training ``Sampler`` draws batches from it as it does from a dataset. The three
ways VGF's ``main.py`` (``--off2on_style``) fills and samples it are ``sampling``:

- ``uniform`` (its ``iql``, the default; FQL's main.py without ``--balanced_sampling``): one buffer of
  ``max(buffer_size, |D| + 1)`` rows seeded with the dataset; online rows are written after it and,
  once it is full, wrap around first-in first-out, over the dataset's oldest rows first (the reference
  ``ReplayBuffer.add_transition``). Batches are uniform over every filled row.
- ``balanced`` (``rlpd``; FQL's and QAM's ``--balanced_sampling``): the dataset kept whole, the online
  rows in a ring of their own of ``buffer_size`` rows; batches half dataset, half online.
- ``online`` (``wsrl``): the same separate ring; batches from the online rows alone.

``buffer_size`` None never overwrites anything (QAM's main.py sizes its buffer |D| + online steps).
Rows nothing will ever write are not allocated: the buffer holds at most ``|D| + online steps`` rows.
Before the first online row, ``balanced`` and ``online`` batches come from the dataset.

On camera frames (``data.pixels``) the transition rows name frames, as in the dataset: each online
frame is written once into the frame store after the dataset's (``add_frame``, with its episode's
first frame for stacking), and ``add`` takes frame rows. Frames are never overwritten: a wrapped ring
reuses transition rows only, so the store holds the dataset's frames plus one per online step and one
per online episode's reset (the dataset's frames must be in memory).

With action chunks (H > 1) a batch row is an H-step sequence inside one trajectory; the online rows
of an episode become sequence starts when the episode ends (its last row is then known). A buffer
that would wrap is refused with chunks: a wrapped ring has no contiguous trajectories to cut them from.
"""

from __future__ import annotations

import torch

from vgfcli.training import PixelFrames, Sampler, TensorData, chunk_starts

SAMPLING = ("uniform", "balanced", "online")
_COLUMNS = ("observations", "actions", "rewards", "next_observations", "masks", "terminals")


class ReplayBuffer(TensorData):
    """``TensorData`` whose ``size`` is the filled part; rows ``[0, offline)`` start as the dataset and
    online rows go into the ring ``[ring_start, ring_end)`` at ``pointer``."""

    def __init__(self, data: TensorData, online_steps: int, *, sampling: str = "uniform",
                 buffer_size: int | None = None, chunk: int = 1):
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, not {sampling!r}")
        d = data.size
        if sampling == "uniform":  # one ring over dataset and online rows, entered after the dataset
            ring_start, capacity = 0, d + online_steps if buffer_size is None else max(buffer_size, d + 1)
        else:  # the dataset apart, the online rows in a ring of their own
            ring_start, capacity = d, d + (online_steps if buffer_size is None else buffer_size)
        rows = min(capacity, d + online_steps)
        self.wraps = d + online_steps > rows
        if self.wraps and chunk > 1:
            raise ValueError(f"the replay buffer ({capacity - ring_start:,} rows for {d:,} dataset and "
                             f"{online_steps:,} online rows) would wrap around, which action chunks (chunk={chunk}) "
                             f"cannot sample across: raise online.buffer_size or set it to null")

        super().__init__(*(_grown(getattr(data, k), rows) for k in _COLUMNS), dict(data.attrs))
        self.pixels, self.frames_used = None, 0
        if data.pixels is not None:
            self._frame_store(data.pixels, online_steps)
        self.sampling = sampling
        self.offline = d
        self.ring_start, self.ring_end = ring_start, rows
        self.written = 0  # online transitions added so far (also those since overwritten)
        self.pointer = d
        self.episode_start = d  # first row of the online episode being filled (chunks: never wraps)

    def _frame_store(self, pixels: PixelFrames, online_steps: int) -> None:
        if not isinstance(pixels.frames, torch.Tensor):
            raise ValueError("fine-tuning on frames needs the dataset's frames in memory (they take more than "
                             "half of the memory available here)")
        self.pixels = PixelFrames(pixels.frames, pixels.starts, pixels.frame_stack)
        self.frames_used = self.dataset_frames = pixels.frames.shape[0]
        # one frame per online step, and a reserve for the episodes' reset frames (grown if it runs out)
        self._reserve_frames(self.dataset_frames + online_steps + online_steps // 8 + 16)

    def _reserve_frames(self, rows: int) -> None:
        """Room for at least ``rows`` frames in the store (the frames kept, the new rows zero)."""
        p = self.pixels
        if rows > p.frames.shape[0]:
            p.frames, p.starts = _grown(p.frames, rows), _grown(p.starts, rows)

    def add_frame(self, frame, episode_start: int | None = None) -> int:
        """Store one online camera frame ``[H, W, C]`` and return its row; ``episode_start``: the row of
        its episode's first frame (None: this frame starts an episode)."""
        p, row = self.pixels, self.frames_used
        self._reserve_frames(row + 1 if row < p.frames.shape[0] else 2 * row)  # out of reserve: double it
        p.frames[row] = torch.as_tensor(frame, dtype=p.frames.dtype, device=p.frames.device)
        p.starts[row] = row if episode_start is None else episode_start
        self.frames_used = row + 1
        return row

    @property
    def size(self) -> int:
        """Rows holding data: ``[0, size)``."""
        return min(self.offline + self.written, self.ring_end)

    @property
    def online(self) -> int:
        return self.written

    def add(self, obs, action, reward: float, next_obs, mask: float, terminal: bool) -> None:
        """One online transition; ``obs`` and ``next_obs`` are states, or frame rows (``add_frame``)."""
        i, dev, kind = self.pointer, self.observations.device, self.observations.dtype
        self.observations[i] = torch.as_tensor(obs, dtype=kind, device=dev)
        self.actions[i] = torch.as_tensor(action, dtype=torch.float32, device=dev)
        self.rewards[i] = float(reward)
        self.next_observations[i] = torch.as_tensor(next_obs, dtype=kind, device=dev)
        self.masks[i] = float(mask)
        self.terminals[i] = float(terminal)
        self.written += 1
        self.pointer = self._position(self.written)
        if terminal:
            self.episode_start = self.pointer

    def _position(self, written: int) -> int:
        """The row the next online transition goes to after ``written`` of them."""
        first_lap = self.ring_end - self.offline
        if written < first_lap:
            return self.offline + written
        return self.ring_start + (written - first_lap) % (self.ring_end - self.ring_start)

    def _written_rows(self) -> slice:
        """The rows online transitions have touched: after the dataset, or the whole ring once wrapped."""
        if self.written <= self.ring_end - self.offline:
            return slice(self.offline, self.offline + self.written)
        return slice(self.ring_start, self.ring_end)

    def online_state(self) -> dict:
        """What the online rows changed, for a checkpoint (the dataset part is reloaded from its file)."""
        rows = self._written_rows()
        state = {k: getattr(self, k)[rows].cpu().clone() for k in _COLUMNS}
        state["written"] = self.written
        if self.pixels is not None:
            online = slice(self.dataset_frames, self.frames_used)
            state |= {"frames": self.pixels.frames[online].cpu().clone(), "starts": self.pixels.starts[online].cpu().clone()}
        return state

    def load_online_state(self, state: dict) -> None:
        self.written = int(state["written"])
        rows = self._written_rows()
        for key in _COLUMNS:
            getattr(self, key)[rows] = state[key].to(self.observations.device)
        self.pointer = self._position(self.written)
        if self.pixels is not None:
            p, online = self.pixels, slice(self.dataset_frames, self.dataset_frames + len(state["frames"]))
            self._reserve_frames(online.stop)
            p.frames[online] = state["frames"].to(p.frames.device)
            p.starts[online] = state["starts"].to(p.starts.device)
            self.frames_used = online.stop
        online_terminals = self.terminals[self.offline:self.offline + min(self.written, self.ring_end - self.offline)]
        ends = torch.nonzero(online_terminals > 0).flatten()
        self.episode_start = self.offline + (int(ends[-1]) + 1 if len(ends) else 0)


class ReplaySampler(Sampler):
    """Batches from a ``ReplayBuffer`` by its ``sampling`` (see the module docstring)."""

    def __init__(self, buffer: ReplayBuffer, batch_size: int, seed: int, chunk: int = 1, discount: float = 1.0,
                 sampling: str | None = None, p_aug: float | None = None):
        # starts: the dataset rows' alone; p_aug: frames shifted as in offline training
        super().__init__(buffer, batch_size, seed, chunk=1, discount=discount, p_aug=p_aug)
        self.chunk, self.buffer = int(chunk), buffer
        self.sampling = buffer.sampling if sampling is None else sampling  # another mix over the same rows
        self.offline_starts = chunk_starts(buffer.terminals[:buffer.offline], self.chunk) if self.chunk > 1 else None
        self._online_starts = torch.zeros(0, dtype=torch.int64)
        self._all_starts = self.offline_starts  # dataset and online starts, remade only when an episode ends
        self._counted = buffer.offline  # online rows whose chunk starts are in _online_starts

    def _refresh(self) -> None:
        """Chunk starts of the online episodes finished since the last call."""
        b = self.buffer
        if self.chunk == 1 or b.episode_start <= self._counted:
            return
        rows = slice(self._counted, b.episode_start)
        new = chunk_starts(b.terminals[rows], self.chunk) + self._counted
        self._online_starts = torch.cat([self._online_starts, new])
        self._all_starts = torch.cat([self.offline_starts, self._online_starts])
        self._counted = b.episode_start

    def _pools(self) -> list:
        """Where each part of a batch comes from: ``(lo, hi)`` row ranges (H = 1) or start tensors."""
        b = self.buffer
        if self.chunk == 1:
            dataset, online, everything = (0, b.offline), (b.offline, b.size), (0, b.size)
            has_online = b.size > b.offline
        else:
            self._refresh()
            dataset, online, everything = self.offline_starts, self._online_starts, self._all_starts
            has_online = len(online) > 0
        if self.sampling == "uniform" or not has_online:
            return [everything]
        return [dataset, online] if self.sampling == "balanced" else [online]

    def sample(self) -> dict[str, torch.Tensor]:
        g = self.generator
        pools = self._pools()
        sizes = _split(self.batch_size, len(pools))
        parts = []
        for pool, n in zip(pools, sizes):
            if isinstance(pool, tuple):
                parts.append(torch.randint(pool[0], pool[1], (n,), generator=g))
            else:
                parts.append(pool[torch.randint(0, len(pool), (n,), generator=g)])
        return self.batch_at(torch.cat(parts))


def _grown(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with room for ``rows`` rows along its first dimension (the new rows zero)."""
    out = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[:t.shape[0]] = t
    return out


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
