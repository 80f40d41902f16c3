"""VGF's particle bank (``vgfcli.methods.vgf``): the frozen reference's samples at every dataset next
state, drawn once before training and renewed on a rolling schedule, so that a TD target reads N
samples from memory instead of running K Euler steps of the flow.

``ReferenceBank`` is a mixin of ``VGFAgent``: it relies on the agent's config (``bank_size``,
``bank_refresh_every``, ``bank_refresh_rows``, ``flow_steps``, ``seed``), ``step``, ``device``,
``reference`` and ``_sampling_flow``, all defined in vgf.py.
"""

from __future__ import annotations

import torch

from vgfcli import seeds
from vgfcli.methods.base import Info
from vgfcli.nn.bank import ParticleBank, RollingBank, fill_bank
from vgfcli.nn.encoders import EncodedFlow


class ReferenceBank:
    """Building, renewing and resuming the particle bank. See the module docstring."""

    def set_bank(self, bank: ParticleBank | None) -> None:
        self.bank = bank
        self._rolling = None

    def prepare(self, next_observations) -> Info:
        """Build the particle bank for the training data's next states (when ``bank_size`` > 0), as it
        stands after the refreshes of the first ``self.step`` updates (none for a new agent).
        ``next_observations``: row-indexable, a tensor or, for frames, ``vgfcli.training.ObservedRows``
        (a chunk of rows' frame stacks made at a time)."""
        if self.cfg.bank_size == 0:
            return {}
        cfg = self.cfg
        # On the agent's device, where batch indices live: drawing from it needs no host round trip.
        samples = torch.empty((len(next_observations), cfg.bank_size, self.act_dim), device=self.device)
        self.bank = ParticleBank(samples)
        self._bank_obs = next_observations
        # Its own seeded streams: a resumed run rebuilds exactly the bank it had.
        self._rolling = RollingBank(len(next_observations), cfg.bank_refresh_rows, cfg.seed + seeds.BANK_ROLLING)
        self._bank_at = None
        self._fill_bank_at(self._refreshes_done())
        return {"bank_states": torch.tensor(float(self.bank.num_states))}

    def _refreshes_done(self) -> int:
        every = self.cfg.bank_refresh_every
        return self.step // every if every else 0

    def _fill_slice(self, c: int, g: int) -> None:
        flow = self._sampling_flow()
        if self.pixels:  # the next states' frames, encoded once per chunk of rows by the reference's encoder
            flow = EncodedFlow(self.reference.encoder, flow)
        fill_bank(self.bank.samples, flow, self._bank_obs, self._rolling.slice_rows(c),
                  steps=self.cfg.flow_steps, generator=self._rolling.generator(c, g, self.device))

    def _fill_bank_at(self, n: int) -> None:
        """Bring the bank to its state after ``n`` refreshes, redrawing only the slices that differ."""
        rolling, now = self._rolling, self._bank_at
        for c in range(rolling.slices):
            g = rolling.generation(c, n)
            if now is None or g != rolling.generation(c, now):
                self._fill_slice(c, g)
        self._bank_at = n

    def _maybe_refresh_bank(self) -> None:
        """After update ``self.step``: redraw the next slice when a refresh falls due."""
        every = self.cfg.bank_refresh_every
        if self._rolling is None or not every or self.step % every:
            return
        self._fill_bank_at(self.step // every)  # one slice: refresh number step // every - 1

    def _resume_bank(self) -> None:
        """After a checkpoint's step is loaded: a bank built by prepare() is brought to that step."""
        if self._rolling is not None:
            self._fill_bank_at(self._refreshes_done())
