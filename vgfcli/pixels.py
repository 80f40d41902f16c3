"""Frames as the reference codes feed them: frame stacks by index, and random-shift augmentation.

Frames are stored once (uint8, ``[N, H, W, C]``). A frame stack of row t is a row of indices into that
array, never a copy: ``[t - k + 1, ..., t]``, each clamped to the first frame of t's episode, so the
first steps of an episode repeat its first frame (FQL's and VGF's ``Dataset._prestack_frames``). The
next state's stack is the stack ending at the next frame, which is the current one shifted by one.
The frames of a stack are concatenated along channels, oldest first.

Augmentation (``p_aug``): with probability ``p_aug`` per batch (one coin for the whole batch, as the
reference's ``Dataset.sample`` draws), every sample is shifted by up to ``padding`` = 3 pixels in each
direction, edge pixels repeated (the reference pads with mode 'edge' and crops); a sample's current
and next frames get the same shift. Evaluation never augments.
"""

from __future__ import annotations

import torch
from torch import Tensor


def stack_indices(rows: Tensor, starts: Tensor, frame_stack: int) -> Tensor:
    """``[B, frame_stack]`` frame indices of the stacks ending at ``rows`` (oldest first), clamped to
    each frame's episode start (``starts``: ``vgfcli.training.frame_starts``)."""
    offsets = torch.arange(frame_stack - 1, -1, -1, device=rows.device)
    return torch.maximum(rows.unsqueeze(1) - offsets, starts[rows].unsqueeze(1))


def gather_stack(frames: Tensor, indices: Tensor) -> Tensor:
    """``[B, H, W, C * k]``: the frames at ``indices`` ``[B, k]``, concatenated along channels."""
    b, k = indices.shape
    picked = frames[indices.reshape(-1)]  # [B * k, H, W, C]
    h, w, c = picked.shape[1:]
    return picked.reshape(b, k, h, w, c).permute(0, 2, 3, 1, 4).reshape(b, h, w, k * c)


def random_shifts(batch: int, generator: torch.Generator, padding: int = 3, device="cpu") -> Tensor:
    """``[B, 2]`` shifts (rows, columns) in ``-padding .. padding``."""
    draws = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator, device=generator.device)
    return (draws - padding).to(device)


def shift_frames(frames: Tensor, shifts: Tensor) -> Tensor:
    """``frames`` ``[B, H, W, C]`` moved by ``shifts`` ``[B, 2]``, edge pixels repeated: padding by
    ``p`` with the edge and cropping at offset ``p + s`` is reading row ``clamp(i + s)``."""
    b, h, w, _ = frames.shape
    rows = (torch.arange(h, device=frames.device) + shifts[:, :1]).clamp(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=frames.device) + shifts[:, 1:]).clamp(0, w - 1)  # [B, W]
    batch = torch.arange(b, device=frames.device)[:, None, None]
    return frames[batch, rows[:, :, None], cols[:, None, :]]


def augment(batch: dict[str, Tensor], p_aug: float | None, generator: torch.Generator,
            keys: tuple[str, ...] = ("observations", "next_observations"), padding: int = 3) -> dict[str, Tensor]:
    """``batch`` with ``keys`` randomly shifted, all samples, with probability ``p_aug`` (None or 0:
    never); the same shift for a sample's every key."""
    if not p_aug:
        return batch
    coin = torch.rand((), generator=generator, device=generator.device)
    if float(coin) >= p_aug:
        return batch
    shifts = random_shifts(batch[keys[0]].shape[0], generator, padding, batch[keys[0]].device)
    return {**batch, **{k: shift_frames(batch[k], shifts) for k in keys}}
