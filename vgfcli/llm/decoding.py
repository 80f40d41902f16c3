"""Moved embeddings back to tokens (``llm.decode``), position by position over a response's real tokens:

- ``nearest``: the token whose input embedding (the reward model's table) is nearest in Euclidean
  distance. Undisturbed embeddings decode to the tokens they came from.
- ``topk``: COLD decoding's filter: the candidates are the reference LM's k most likely next tokens
  given the prompt and the tokens decoded so far, and the nearest of them is taken, so every token stays
  one the reference finds plausible in its context. One LM pass per position (with its KV cache).

Fixed positions (the EOS and the padding after it) keep their tokens either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vgfcli.llm.models import cached_step

DECODERS = ("nearest", "topk")


def allowed_tokens(tokenizer, size: int, device) -> Tensor:
    """``[size]`` bool: the ids decoding may write, those of the tokenizer's vocabulary that are not special
    (an EOS or pad in mid-response would be read by R and dropped from the text)."""
    allowed = torch.zeros(size, dtype=torch.bool, device=device)
    allowed[:min(size, len(tokenizer))] = True
    special = [i for i in tokenizer.all_special_ids if i is not None and i < size]
    allowed[special] = False
    return allowed


def nearest_tokens(u: Tensor, table: Tensor, allowed: Tensor | None = None) -> Tensor:
    """``[..., d]`` embeddings -> ``[...]`` ids of the nearest rows of ``table`` ``[V, d]`` (of the
    ``allowed`` rows)."""
    flat = u.reshape(-1, u.shape[-1]).float()
    t = table.float()
    d2 = (flat.square().sum(-1, keepdim=True) - 2.0 * flat @ t.T + t.square().sum(-1)[None])
    if allowed is not None:
        d2 = d2.masked_fill(~allowed[None], float("inf"))
    return d2.argmin(-1).reshape(u.shape[:-1])


def decode_nearest(u: Tensor, table: Tensor, original: Tensor, movable: Tensor, allowed: Tensor | None = None) -> Tensor:
    return torch.where(movable, nearest_tokens(u, table, allowed), original)


@torch.no_grad()
def decode_topk(u: Tensor, table: Tensor, original: Tensor, movable: Tensor, policy, prompt_ids: Tensor,
                k: int, allowed: Tensor | None = None) -> Tensor:
    """``u`` ``[N, T, d]`` -> ``[N, T]`` ids, each movable token the nearest of the policy's top-k."""
    n, t = original.shape
    out = original.clone()
    step_ids = prompt_ids.expand(n, -1)
    cache = None
    for pos in range(t):
        logits, cache = cached_step(policy, step_ids, cache)
        scores = logits[:, -1].float()[:, :table.shape[0]]
        if allowed is not None:
            scores = scores.masked_fill(~allowed[None], float("-inf"))
        candidates = scores.topk(min(k, scores.shape[-1]), -1).indices  # [N, k]
        d2 = (table[candidates].float() - u[:, pos, None].float()).square().sum(-1)
        chosen = candidates.gather(1, d2.argmin(-1, keepdim=True))[:, 0]
        out[:, pos] = torch.where(movable[:, pos], chosen, original[:, pos])
        if pos + 1 >= t or not bool(movable[:, pos + 1:].any()):
            break  # nothing later moves: the rest keeps its tokens
        step_ids = out[:, pos:pos + 1]
    return out


def decode(how: str, u: Tensor, table: Tensor, original: Tensor, movable: Tensor, allowed: Tensor | None = None, *,
           policy=None, prompt_ids: Tensor | None = None, k: int = 10) -> tuple[Tensor, int]:
    """(decoded ids ``[N, T]``, reference-LM passes over one particle each that decoding cost)."""
    if how == "nearest":
        return decode_nearest(u, table, original, movable, allowed), 0
    if how == "topk":
        last = int(movable.any(0).nonzero().max()) + 1 if bool(movable.any()) else 0
        return decode_topk(u, table, original, movable, policy, prompt_ids, k, allowed), u.shape[0] * last
    raise ValueError(f"llm.decode must be one of {', '.join(DECODERS)}, got {how!r}")
