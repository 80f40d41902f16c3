"""VGF's particle bank: reference samples drawn once per dataset next state and reused by the updates.

The reference flow is frozen, so its samples at a state never go stale: drawing M of them per next state
once (``build_bank``) replaces K Euler steps of the flow at every update by a gather. ``RollingBank``
renews the bank slice by slice so that a long run does not reuse one draw per state forever, in a way
a resumed run rebuilds exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vgfcli.nn.flow import euler_sample
from vgfcli.nn.precision import autocast


class ParticleBank:
    """Precomputed reference samples ``samples[i]`` ``[M, d]`` for the next state of dataset row i.

    ``draw`` returns N of the M samples per row, chosen uniformly WITHOUT replacement: N distinct
    samples out of M i.i.d. draws are jointly distributed as N fresh i.i.d. draws, so one update sees
    the same distribution as fresh sampling (successive updates share samples, the price of the
    speed-up; ``refresh_bank`` renews rows). The bank may live on another device than the agent, and
    in float16 to halve its memory (actions lie in [-1, 1]; float16 resolves 5e-4 there).
    """

    def __init__(self, samples: Tensor):
        if samples.dim() != 3:
            raise ValueError("bank samples must be [num_states, M, act_dim]")
        self.samples = samples

    @property
    def num_states(self) -> int:
        return self.samples.shape[0]

    @property
    def per_state(self) -> int:
        return self.samples.shape[1]

    def draw(self, indices: Tensor, n: int, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> Tensor:
        """``[B, n, d]`` float32 samples for the dataset rows ``indices`` ``[B]``."""
        m = self.per_state
        if n > m:
            raise ValueError(f"cannot draw {n} distinct samples from a bank of {m} per state")
        idx = indices.to(self.samples.device)
        # Uniform random subset per row: the n largest of M uniform keys.
        keys = torch.rand((idx.shape[0], m), generator=generator, device=_gen_device(generator))
        pick = keys.topk(n, dim=1).indices.to(self.samples.device)
        out = self.samples[idx.unsqueeze(1), pick]
        return out.to(device=device or self.samples.device, dtype=torch.float32)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


@torch.no_grad()
def fill_bank(samples: Tensor, flow, next_observations: Tensor, rows: Tensor | None = None, *,
              steps: int = 10, chunk_rows: int = 8192, generator: torch.Generator | None = None,
              amp: str = "off") -> Tensor:
    """Write fresh reference samples for ``rows`` (all rows if None) of ``samples`` ``[S, M, d]``.

    ``next_observations`` ``[S, obs_dim]`` are the dataset's next states (row i of the bank belongs to
    row i of the dataset). The flow runs on the flow's device in chunks of about ``chunk_rows``
    samples; the results are copied into ``samples`` wherever it lives.
    """
    device = next(flow.parameters()).device
    num, m, d = samples.shape
    rows = torch.arange(num) if rows is None else torch.as_tensor(rows).reshape(-1).cpu()
    per_chunk = max(1, chunk_rows // m)
    for start in range(0, rows.numel(), per_chunk):
        part = rows[start:start + per_chunk]
        obs = torch.as_tensor(next_observations[part.numpy()] if isinstance(next_observations, np.ndarray)
                              else next_observations[part.to(next_observations.device)])
        obs = obs.to(device=device, dtype=torch.float32).unsqueeze(1)
        noise = torch.randn((part.numel(), m, d), generator=generator, device=device)
        with autocast(device, amp):
            acts = euler_sample(flow, obs, noise, steps)
        samples[part.to(samples.device)] = acts.to(device=samples.device, dtype=samples.dtype)
    return samples


def build_bank(flow, next_observations, per_state: int, *, steps: int = 10, chunk_rows: int = 8192,
               generator: torch.Generator | None = None, storage_device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, amp: str = "off") -> ParticleBank:
    """A bank of ``per_state`` reference samples for every row of ``next_observations``."""
    act_dim = _act_dim(flow)
    samples = torch.empty((len(next_observations), per_state, act_dim), dtype=dtype,
                          device=storage_device)
    fill_bank(samples, flow, next_observations, steps=steps, chunk_rows=chunk_rows,
              generator=generator, amp=amp)
    return ParticleBank(samples)


class RollingBank:
    """Which samples a rolling-refreshed bank holds after ``n`` refreshes, as a pure function of n.

    The rows form slices of ``rows_per_slice``; refresh k (k = 0, 1, ...) redraws slice k mod C (C
    slices), so after n refreshes slice c holds its generation ceil((n - c) / C) (0: the initial draw).
    Generation g of slice c draws from its own stream, seeded by (seed, c, g): the bank after n
    refreshes is the same whether it was refreshed step by step or rebuilt at once on resume.
    """

    def __init__(self, num_states: int, rows_per_slice: int, seed: int):
        self.num_states, self.rows, self.seed = num_states, max(1, min(rows_per_slice, num_states)), seed
        self.slices = -(-num_states // self.rows)

    def slice_rows(self, c: int) -> Tensor:
        return torch.arange(c * self.rows, min((c + 1) * self.rows, self.num_states))

    def generation(self, c: int, n: int) -> int:
        return 0 if n <= c else -(-(n - c) // self.slices)

    def generator(self, c: int, g: int, device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(
            (self.seed * 1_000_003 + c * 7_919 + g * 104_729) % (2 ** 63))


def refresh_bank(bank: ParticleBank, flow, next_observations, rows, *, steps: int = 10,
                 chunk_rows: int = 8192, generator: torch.Generator | None = None,
                 amp: str = "off") -> ParticleBank:
    """Redraw the samples of ``rows`` in place (e.g. a rolling slice every few thousand updates)."""
    fill_bank(bank.samples, flow, next_observations, rows, steps=steps, chunk_rows=chunk_rows,
              generator=generator, amp=amp)
    return bank


def _act_dim(flow) -> int:
    if hasattr(flow, "act_dim"):
        return int(flow.act_dim)
    raise ValueError("the reference flow must expose act_dim")
