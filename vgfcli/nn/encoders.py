"""Visual encoders: frames (uint8, channels last) to a feature vector the flow and critic read.

The reference codes (FQL's and VGF's ``utils/encoders.py``) use an IMPALA encoder; ``impala_small``
is the one their visual commands pass (``--agent.encoder=impala_small``):

- pixels / 255, then one ResNet stack per size in ``stacks`` = (16, 32, 32): a 3x3 convolution,
  3x3 max pooling with stride 2 ('SAME' padding as XLA pads it: the extra row and column at the
  end), then ``blocks`` residual blocks (ReLU, conv, ReLU, conv, plus the input); ``impala_small``
  has one block per stack, ``impala`` two;
- ReLU, flatten (height, width, channel order, as the reference flattens NHWC), and a dense layer of
  512 units with GELU (tanh approximation, flax's default) after it;
- Xavier-uniform weights and zero biases (the reference's initialisers).

A 64 x 64 frame becomes 32 x 8 x 8 = 2048 values before the dense layer. Frame stacks arrive as
channels concatenated (3 x frame_stack), so the first convolution takes them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EncoderSpec:
    """The shape of an IMPALA encoder (``ENCODERS`` names the reference's)."""

    stacks: tuple[int, ...] = (16, 32, 32)  # channels of each ResNet stack
    blocks: int = 2  # residual blocks per stack
    hidden: tuple[int, ...] = (512,)  # dense layers after the convolutions, each followed by GELU


ENCODERS = {
    "impala": EncoderSpec(),
    "impala_small": EncoderSpec(blocks=1),
    "impala_large": EncoderSpec(stacks=(64, 128, 128), hidden=(1024,)),
    "impala_debug": EncoderSpec(stacks=(4, 4), blocks=1),
}


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ResNetStack(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int):
        super().__init__()
        self.conv = _conv(cin, cout)
        self.blocks = nn.ModuleList(nn.ModuleList([_conv(cout, cout), _conv(cout, cout)]) for _ in range(blocks))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = _same_pool(x)
        for first, second in self.blocks:
            x = x + second(F.relu(first(F.relu(x))))
        return x


def _same_pool(x: Tensor) -> Tensor:
    """3x3 max pooling, stride 2, padded as XLA's 'SAME': out = ceil(size / 2), the padding split with
    the larger half at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class ImpalaEncoder(nn.Module):
    """``[..., H, W, C]`` uint8 frames (or floats in 0..255) -> ``[..., out_dim]`` features."""

    def __init__(self, frame_shape: tuple[int, int, int], spec: EncoderSpec = ENCODERS["impala_small"]):
        super().__init__()
        height, width, channels = (int(v) for v in frame_shape)
        stacks, cin = [], channels
        for cout in spec.stacks:
            stacks.append(ResNetStack(cin, cout, spec.blocks))
            cin = cout
            height, width = -(-height // 2), -(-width // 2)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]), channels)
        self.stacks = nn.Sequential(*stacks)
        dense, fan_in = [], cin * height * width
        for units in spec.hidden:
            layer = nn.Linear(fan_in, units)
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
            dense.append(layer)
            fan_in = units
        self.dense = nn.ModuleList(dense)
        self.out_dim = fan_in

    def forward(self, frames: Tensor) -> Tensor:
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).to(torch.float32) / 255.0
        x = self.stacks(x.permute(0, 3, 1, 2))  # NHWC -> NCHW for torch's convolutions
        x = F.relu(x).permute(0, 2, 3, 1).flatten(1)  # back to NHWC order before flattening
        for layer in self.dense:
            x = F.gelu(layer(x), approximate="tanh")
        return x.reshape(*lead, self.out_dim)


def feature_size(name: str, frame_shape: tuple[int, int, int]) -> int:
    """The width of the features encoder ``name`` makes of frames of ``frame_shape`` (no weights drawn)."""
    spec = _spec(name)
    if spec.hidden:
        return spec.hidden[-1]
    height, width = frame_shape[0], frame_shape[1]
    for _ in spec.stacks:
        height, width = -(-height // 2), -(-width // 2)
    return spec.stacks[-1] * height * width


def _spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}' (choose from {', '.join(ENCODERS)})")
    return ENCODERS[name]


def make_encoder(name: str, frame_shape: tuple[int, int, int]) -> ImpalaEncoder:
    """The encoder called ``name`` (``ENCODERS``) for frames of ``frame_shape`` (H, W, C)."""
    return ImpalaEncoder(frame_shape, _spec(name))


class Encoded(nn.Module):
    """A network on frames: its own encoder (as the reference code gives each network, the target
    critic included, one of its own) in front of ``head``, the same network a state-based run uses,
    built on the encoder's features. ``encode`` + ``head`` is ``forward`` split in two, for callers
    that encode a batch once and then run the head many times (``vgfcli.nn.networks.PlainInput``)."""

    def __init__(self, encoder: ImpalaEncoder, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def encode(self, frames: Tensor) -> Tensor:
        return self.encoder(frames)

    def forward(self, frames: Tensor, *rest: Tensor) -> Tensor:
        return self.head(self.encoder(frames), *rest)

    @property
    def members(self) -> int:  # a critic ensemble's size (one encoder serves all its members)
        return self.head.members

    @property
    def act_dim(self) -> int:
        return self.head.act_dim

    @torch.no_grad()
    def polyak_(self, source: "Encoded", tau: float) -> None:
        """In place: self <- tau * source + (1 - tau) * self, the encoder included (the target network)."""
        torch._foreach_lerp_(list(self.parameters()), list(source.parameters()), tau)


class EncodedFlow(nn.Module):
    """A flow policy on frames: its own encoder (as the reference gives the BC flow one) in front of a
    ``FlowPolicy`` on the features. Every method the flow offers encodes the frames once per call,
    whatever the number of samples or Euler steps; ``encode`` gives the features to callers that
    reuse them."""

    def __init__(self, encoder: ImpalaEncoder, flow):
        super().__init__()
        self.encoder, self.flow = encoder, flow
        self.act_dim = flow.act_dim
        self.obs_shape = encoder.frame_shape

    def encode(self, frames: Tensor) -> Tensor:
        return self.encoder(frames)

    @property
    def head(self):
        """The flow on features (``PlainInput``'s contract)."""
        return self.flow

    def forward(self, frames: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return self.flow(self.encoder(frames), x, t)

    def conditioned(self, frames: Tensor):
        return self.flow.conditioned(self.encoder(frames))

    def loss(self, frames: Tensor, actions: Tensor, generator: torch.Generator | None = None,
             t_grid: int | None = None) -> Tensor:
        return self.flow.loss(self.encoder(frames), actions, generator, t_grid)

    @torch.no_grad()
    def sample(self, frames: Tensor, num: int | None = None, steps: int = 10,
               generator: torch.Generator | None = None, clip: float | None = 1.0) -> Tensor:
        return self.flow.sample(self.encoder(frames), num, steps, generator, clip)
