"""Multi-layer perceptrons and a vectorised critic ensemble.

Both follow the public reference code (github ryanxhr/vgf, ``utils/networks.py``, itself derived from
seohongpark/fql):

- Dense layers initialised like flax's ``variance_scaling(1, 'fan_avg', 'uniform')`` (Xavier uniform),
  biases zero.
- Optional LayerNorm (eps 1e-6, flax's default) on every hidden layer, never on the output layer.
  ``norm="pre"`` is the VGF code's order (Dense -> LayerNorm -> activation); ``norm="post"`` is FQL's
  (Dense -> activation -> LayerNorm).
- ReLU is VGF's default activation; ``gelu`` is the tanh approximation, as ``flax.linen.gelu``.

Inputs may come in several parts (``MLP(in_dims=(obs_dim, act_dim, 1))``): the first layer is one
Dense layer on their concatenation, computed as a sum of per-part products so that parts broadcast
over leading dimensions. An observation of shape ``[B, 1, obs_dim]`` next to particles of shape
``[B, N, act_dim]`` is projected once per state, not once per particle, and never copied N times.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6  # flax.linen.LayerNorm's default epsilon (torch's is 1e-5)


def activation_fn(name: str):
    """The elementwise activation called ``name``: relu, gelu (tanh approximation) or swish."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return lambda x: F.gelu(x, approximate="tanh")
    if name in ("swish", "silu"):
        return F.silu
    raise ValueError(f"unknown activation '{name}' (expected relu, gelu or swish)")


def _check_norm(norm: str | None) -> str | None:
    if norm not in (None, "pre", "post"):
        raise ValueError(f"unknown norm position '{norm}' (expected pre, post or None)")
    return norm


def _xavier_(weight: Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class PlainInput:
    """What every network on state vectors offers the methods: ``encode`` (the identity) and ``head``
    (the network itself). On camera frames a network is ``vgfcli.nn.encoders.Encoded`` instead: its own
    visual encoder in front of the same head. Methods encode a batch once (``features =
    net.encode(obs)``) and run ``net.head`` on the features as often as they need (every particle,
    every transport or Euler step), so the two cases share one code path."""

    def encode(self, obs: Tensor) -> Tensor:
        return obs

    @property
    def head(self):
        return self


def _as_dims(in_dims: int | Sequence[int]) -> tuple[int, ...]:
    return (int(in_dims),) if isinstance(in_dims, int) else tuple(int(d) for d in in_dims)


class MLP(PlainInput, nn.Module):
    """``in -> hidden_dims -> out_dim`` perceptron; the output layer is linear.

    Args:
        in_dims: input width, or the widths of input parts that are concatenated (see module doc).
        hidden_dims: widths of the hidden layers.
        out_dim: output width.
        activation: relu | gelu | swish.
        norm: None (no LayerNorm), "pre" (LayerNorm before the activation, VGF) or "post" (after, FQL).
    """

    def __init__(self, in_dims: int | Sequence[int], hidden_dims: Sequence[int], out_dim: int,
                 activation: str = "relu", norm: str | None = None):
        super().__init__()
        self.in_dims = _as_dims(in_dims)
        self.norm = _check_norm(norm)
        self.act = activation_fn(activation)
        widths = [sum(self.in_dims), *hidden_dims, out_dim]
        self.layers = nn.ModuleList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layer = nn.Linear(fan_in, fan_out)
            _xavier_(layer.weight, fan_in, fan_out)
            nn.init.zeros_(layer.bias)
            self.layers.append(layer)
        self.norms = nn.ModuleList(
            nn.LayerNorm(w, eps=LN_EPS) for w in hidden_dims) if norm else None

    def share(self, i: int, part: Tensor) -> Tensor:
        """Input part ``i``'s share of the first layer, ``part @ W_i^T`` (a width-1 part is a
        broadcast product, the same numbers without a matmul call)."""
        w = self.layers[0].weight.split(self.in_dims, dim=1)[i]
        return part * w[:, 0] if self.in_dims[i] == 1 else part @ w.t()

    def forward(self, *parts: Tensor, shares: dict[int, Tensor] | None = None) -> Tensor:
        """``shares`` maps a part's index to its precomputed ``share`` (e.g. an observation's, fixed
        over the Euler steps of sampling); that part's entry in ``parts`` is then not read."""
        if len(parts) != len(self.in_dims):
            raise ValueError(f"MLP expects {len(self.in_dims)} input parts, got {len(parts)}")
        first = self.layers[0]
        if len(parts) == 1 and not shares:
            x = first(parts[0])
        else:
            x = None
            for i, part in enumerate(parts):
                y = shares[i] if shares and i in shares else self.share(i, part)
                x = y if x is None else x + y
            x = x + first.bias
        for i in range(1, len(self.layers)):
            x = self._hidden(x, i - 1)
            x = self.layers[i](x)
        return x

    def _hidden(self, x: Tensor, i: int) -> Tensor:
        if self.norm == "pre":
            return self.act(self.norms[i](x))
        x = self.act(x)
        return self.norms[i](x) if self.norm == "post" else x


class _SharedInputMatmul(torch.autograd.Function):
    """``[R, k] @ [M, k, H] -> [M, R, H]``: one input shared by all members.

    ``torch.matmul`` broadcasts the input fine in the forward pass, but its backward pass transposes
    the [M, R, H] gradient through a strided copy; here the input gradient is one batched matmul
    summed over members.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return torch.matmul(x, w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        grad_x = grad_w = None
        # (dtype casts: under autocast the forward ran in a lower precision than x and w)
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad, w.transpose(1, 2).to(grad.dtype)).sum(0).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.matmul(x.t().to(grad.dtype), grad).to(w.dtype)
        return grad_x, grad_w


def _shared_input_matmul(x: Tensor, w: Tensor) -> Tensor:
    return _SharedInputMatmul.apply(x, w)


class EnsembleCritic(PlainInput, nn.Module):
    """``members`` independent Q(s, a) perceptrons evaluated together.

    Every layer holds the weights of all members stacked, ``[members, in, out]``, and runs as one
    batched matmul (``torch.baddbmm``); there is no Python loop over members. Member ``m`` computes
    exactly what ``MLP((obs_dim, act_dim), hidden, 1, activation, norm)`` would with its weights.

    ``forward(obs, actions)`` broadcasts the leading dimensions of ``obs`` and ``actions``
    (``[B, 1, obs_dim]`` with ``[B, N, act_dim]`` is the particle case) and returns ``[members, *lead]``.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (512, 512, 512, 512),
                 members: int = 2, activation: str = "relu", norm: str | None = "pre"):
        super().__init__()
        self.obs_dim, self.act_dim, self.members = int(obs_dim), int(act_dim), int(members)
        self.norm = _check_norm(norm)
        self.activation = activation
        self.act = activation_fn(activation)
        widths = [self.obs_dim + self.act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            w = torch.empty(members, fan_in, fan_out)
            _xavier_(w, fan_in, fan_out)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, fan_out)))
        if norm:
            self.ln_scale = nn.ParameterList(nn.Parameter(torch.ones(members, 1, w)) for w in hidden)
            self.ln_shift = nn.ParameterList(nn.Parameter(torch.zeros(members, 1, w)) for w in hidden)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        lead = torch.broadcast_shapes(obs.shape[:-1], actions.shape[:-1])
        x = self._first(obs, actions, lead)                       # [M, R, H0]
        for i in range(1, len(self.weights)):
            x = self._hidden(x, i - 1)
            x = torch.baddbmm(self.biases[i], x, self.weights[i])
        return x.reshape(self.members, *lead)

    def _first(self, obs: Tensor, actions: Tensor, lead: torch.Size) -> Tensor:
        w_obs, w_act = self.weights[0].split((self.obs_dim, self.act_dim), dim=1)
        m, h = self.members, w_obs.shape[-1]
        # Each input part is projected at its own leading shape (an observation once per state, not
        # once per particle), then the parts broadcast-add to [M, *lead, H].
        xo = _shared_input_matmul(obs.reshape(-1, self.obs_dim), w_obs).reshape(m, *obs.shape[:-1], h)
        xa = _shared_input_matmul(actions.reshape(-1, self.act_dim), w_act)
        xa = xa.reshape(m, *actions.shape[:-1], h)
        x = (xo + xa).expand(m, *lead, h).reshape(m, -1, h)
        return x + self.biases[0]

    def _hidden(self, x: Tensor, i: int) -> Tensor:
        if self.norm == "pre":
            x = F.layer_norm(x, x.shape[-1:], eps=LN_EPS)
            return self.act(torch.addcmul(self.ln_shift[i], x, self.ln_scale[i]))
        x = self.act(x)
        if self.norm == "post":
            x = F.layer_norm(x, x.shape[-1:], eps=LN_EPS)
            x = torch.addcmul(self.ln_shift[i], x, self.ln_scale[i])
        return x

    @torch.no_grad()
    def polyak_(self, source: "EnsembleCritic", tau: float) -> None:
        """In place: self <- tau * source + (1 - tau) * self (the target-network update)."""
        mine = list(self.parameters())
        theirs = list(source.parameters())
        torch._foreach_lerp_(mine, theirs, tau)


class CastCopy(nn.Module):
    """A frozen copy of ``module`` whose weights live in ``dtype`` (e.g. bfloat16), taking and
    returning float32 tensors. Under autocast a float32 module's weights are cast again at every
    call; for a network whose weights do not change (the frozen reference flow, a critic while
    acting) casting them once saves that work and computes the same low-precision matmuls."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = copy.deepcopy(module).to(dtype).requires_grad_(False)
        self.dtype = dtype
        if hasattr(module, "act_dim"):  # a flow's: what samplers read of it
            self.act_dim = module.act_dim

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.inner(*(x.to(self.dtype) for x in inputs)).float()

    @torch.no_grad()
    def refresh_(self, module: nn.Module) -> "CastCopy":
        """Take ``module``'s current weights, in place: the same object, so compiled code that reads it
        as an argument stays valid (the reference flow learning online changes them every update)."""
        for mine, theirs in zip(self.inner.state_dict().values(), module.state_dict().values()):
            mine.copy_(theirs)
        return self

    def conditioned(self, obs: Tensor):
        """The inner velocity field's ``conditioned`` (see ``FlowPolicy``), in ``dtype``."""
        inner = self.inner.conditioned(obs.to(self.dtype))
        return lambda o, x, t: inner(None, x.to(self.dtype), t.to(self.dtype)).float()
