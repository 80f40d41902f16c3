"""Where acting's randomness comes from: a ``torch.Generator``, or standard normals handed in.

Every random draw of a method's ``act`` is a standard normal tensor whose first dimension is the batch
of states (reference-flow noise, QAM's edit noise, ...), made by ``normal``. ``act`` takes, in place of
its generator, a ``RecordedNoise`` (draws from a generator as usual and keeps them) or a ``GivenNoise``
(hands out given normals, in draw order): that is how an exported acting program takes its noise as
an input ``[B, K]`` and how the export's parity check feeds both programs the same noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GivenNoise:
    """Stands in for a generator: successive ``normal`` draws are successive column blocks of
    ``noise`` ``[B, K]`` (row b feeds state b), reshaped to the asked shape."""

    def __init__(self, noise: Tensor):
        self.noise, self.used = noise, 0

    def normal(self, shape: tuple[int, ...], device, dtype) -> Tensor:
        width = math.prod(shape[1:])
        if self.used + width > self.noise.shape[1]:
            raise ValueError(f"acting asked for more noise than given ({self.used + width} > {self.noise.shape[1]} "
                             "per state)")
        block = self.noise[:, self.used:self.used + width]
        self.used += width
        return block.reshape(shape).to(device=device, dtype=dtype)


class RecordedNoise:
    """Draws from ``generator`` exactly as ``torch.randn`` would and keeps every draw, so that
    ``matrix()`` is the ``[B, K]`` noise a ``GivenNoise`` replays."""

    def __init__(self, generator: torch.Generator):
        self.generator, self.draws = generator, []

    def normal(self, shape: tuple[int, ...], device, dtype) -> Tensor:
        out = torch.randn(shape, generator=self.generator, device=device, dtype=dtype)
        self.draws.append(out.reshape(shape[0], -1))
        return out

    def matrix(self) -> Tensor:
        return torch.cat([d.float() for d in self.draws], dim=1)


def normal(shape: tuple[int, ...], generator, device=None, dtype=torch.float32) -> Tensor:
    """``torch.randn(shape, generator=generator)``, or the next block of a Given/RecordedNoise."""
    if isinstance(generator, (GivenNoise, RecordedNoise)):
        return generator.normal(tuple(shape), device, dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)
