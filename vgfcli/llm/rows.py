"""One prompt of `vgf evaluate domain=llm`, every row at once.

Per prompt: N responses sampled from the reference LM (its own stream, a function of the run's seed and
the prompt's index), scored by the reward model R. Rows:

- ``reference``: the first sample as it is (what the reference LM alone gives);
- ``L=0``: best-of-N by R, the samples themselves (no decoding: exactly best-of-N);
- ``L=k``: the samples moved k transport steps in R's embedding space (``llm.transport``), decoded
  (``llm.decoding``), re-scored by R, the best returned;
- adaptive rows (``auto``...): as L=k, each prompt stopping by the offline rules.

Each row records, for the response it returns: R's reward, the judge's score (where a judge is given),
the win against the reference sample under R and under the judge (1, 0, or 0.5 for a tie), the
reference LM's log-likelihood per token, the fraction of tokens changed from the sample it started as,
and what it cost: R's forward and backward passes and the reference LM's passes (each over one
sequence), and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.errors import VgfError
from vgfcli.llm.decoding import decode
from vgfcli.llm.models import RewardModel, cached_step, context_of, response_loglik
from vgfcli.llm.transport import ResponseParticles, TransportSettings
from vgfcli.nn.adaptive import StopRule
from vgfcli.nn.particles import aggregate_members


@torch.no_grad()
def sample_responses(policy, prompt_ids: Tensor, n: int, max_new_tokens: int, *, temperature: float,
                     top_k: int, eos: int, pad: int, generator: torch.Generator,
                     vocab: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """N responses of the reference LM to one prompt (ancestral sampling with its KV cache). ``vocab``:
    the tokenizer's size; logit rows beyond it (a vocabulary padded for speed, as GPT-NeoX's) are never
    sampled, since no tokenizer entry and no reward-table row stands behind them.

    Returns ``response`` ``[N, T]`` (pad after the EOS), ``lengths`` ``[N]`` (tokens up to and with
    the EOS) and ``movable`` ``[N, T]`` (the real tokens before the EOS: what the transport moves).
    """
    ids, cache, tokens = prompt_ids.expand(n, -1), None, []
    done = torch.zeros(n, dtype=torch.bool, device=prompt_ids.device)
    for _ in range(max_new_tokens):
        logits, cache = cached_step(policy, ids, cache)
        logits = logits[:, -1].float() / temperature
        if vocab is not None and logits.shape[-1] > vocab:
            logits[:, vocab:] = float("-inf")
        if top_k:
            kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        token = torch.where(done, torch.full_like(token, pad), token)
        tokens.append(token)
        done |= token == eos
        if bool(done.all()):
            break
        ids = token[:, None]
    response = torch.stack(tokens, 1)
    is_eos = response == eos
    first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(response[:, 0], response.shape[1]))
    lengths = torch.clamp(first_eos + 1, max=response.shape[1])
    movable = torch.arange(response.shape[1], device=response.device)[None] < first_eos[:, None]
    return response, lengths, movable


@dataclass
class RowKey:
    name: str  # "reference", "L=0", "L=2", "auto"
    budget: int | str | None  # None for the reference row


@dataclass
class LmRowsContext:
    policy: object
    tokenizer: object
    reward: RewardModel
    judge: Callable[[list[str], list[str]], Tensor] | None  # (prompts, responses) -> [B] scores
    settings: TransportSettings
    particles: int
    max_new_tokens: int
    temperature: float
    top_k: int
    decode: str
    decode_k: int
    stop: dict[str, StopRule]  # adaptive rows: budget name -> rule
    budget_max: int
    device: torch.device
    prompt_room: int  # prompt tokens kept (the end), so that prompt + response fit both models
    allowed: Tensor  # [V] bool: tokens decoding may write (the tokenizer's, no special ones)
    matched: bool = False  # also best-of-n at each L > 0 row's reward passes (``matched_passes``)


def room_for_prompts(policy, reward: RewardModel, max_new_tokens: int) -> int:
    """Prompt tokens that fit in front of a response in both models' positions; an error when none do."""
    rooms = [r for r in (context_of(policy), context_of(reward.model)) if r]
    room = min(rooms) - max_new_tokens if rooms else 10**9
    if room < 1:
        raise VgfError(f"evaluate.max_new_tokens={max_new_tokens} leaves no room for a prompt in the models' "
                       f"{min(rooms)} positions")
    return room


def prompt_ids_for(ctx: LmRowsContext, prompt: str) -> Tensor:
    ids = ctx.tokenizer(prompt, add_special_tokens=False)["input_ids"][-ctx.prompt_room:]  # keep the prompt's end
    if not ids:
        raise VgfError(f"the prompt {prompt[:40]!r} is no tokens under llm.policy's tokenizer")
    return torch.tensor(ids, dtype=torch.long, device=ctx.device)


def matched_passes(particles: int, steps: int) -> int:
    """The reward passes an L = ``steps`` row spends on one prompt (``ResponseParticles.move``'s count):
    N to score the samples, N forward and N backward per step, N to re-score the decoded particles."""
    return particles * (2 + 2 * steps) if steps else particles


def evaluate_prompt(ctx: LmRowsContext, prompt: str, budgets: list[int | str], generator: torch.Generator,
                    extra: torch.Generator | None = None, preferred: str | None = None) -> dict:
    """Every row's record for one prompt: ``{row name: {reward, judge, win, ...}}``.

    Besides the reference sample and the budgets' rows: where any L > 0 row runs, ``L=0 decoded`` (the
    best of the N samples put through the decoder with no transport step: the decoder's effect alone);
    with ``ctx.matched``, ``best-of-n`` rows at the reward passes each L > 0 row spends (n - N more
    samples drawn from ``extra``, a stream of their own, so the other rows' samples are unchanged); with a
    ``preferred`` response (the dataset's), each row's judge win rate against it too."""
    start = time.perf_counter()
    prompt_ids = prompt_ids_for(ctx, prompt)
    tok = ctx.tokenizer
    response, lengths, movable = sample_responses(
        ctx.policy, prompt_ids, ctx.particles, ctx.max_new_tokens, temperature=ctx.temperature, top_k=ctx.top_k,
        eos=tok.eos_token_id, pad=tok.pad_token_id, generator=generator, vocab=len(tok))
    sample_passes = ctx.particles * response.shape[1]
    particles = ResponseParticles(ctx.reward, prompt_ids, response, lengths, movable)
    start_scores = finite(aggregate_members(particles.members_at(particles.start), "mean"), prompt)  # [N]
    sampled_s = time.perf_counter() - start
    picks: dict[str, dict] = {"reference": {"ids": response[0], "reward": float(start_scores[0]), "source": 0,
                                            "seconds": sampled_s / ctx.particles, "forward": 1, "backward": 0,
                                            "policy": response.shape[1], "steps": 0}}
    best = int(start_scores.argmax())
    fixed = [b for b in budgets if isinstance(b, int)]
    t0 = time.perf_counter()
    moved = particles.move(sorted(set(fixed)), ctx.settings)
    transport_s = time.perf_counter() - t0
    for budget in fixed:
        u = moved.embeddings[budget]
        pick = _pick(ctx, particles, prompt_ids, response, movable, u, budget, start_scores, best)
        # each row's cost as if it ran alone: its steps' share of the one transport run
        share = transport_s * budget / max(1, max(fixed))
        pick.update(seconds=sampled_s + share + pick.pop("decode_s"), forward=ctx.particles + moved.forward[budget]
                    + (ctx.particles if budget else 0), backward=moved.backward[budget],
                    policy=sample_passes + pick.pop("decode_passes"), steps=budget)
        picks[f"L={budget}"] = pick
    if any(b > 0 for b in fixed):  # the decoder alone: the samples' own embeddings, decoded and re-scored
        pick = _pick(ctx, particles, prompt_ids, response, movable, particles.start, 0, start_scores, best,
                     decoded=True)
        pick.update(seconds=sampled_s + pick.pop("decode_s"), forward=2 * ctx.particles, backward=0,
                    policy=sample_passes + pick.pop("decode_passes"), steps=0)
        picks["L=0 decoded"] = pick
    if ctx.matched and extra is not None:
        picks |= _matched_best_of_n(ctx, prompt, prompt_ids, response, start_scores, sorted(b for b in set(fixed) if b),
                                    extra, sampled_s)
    for name in (b for b in budgets if isinstance(b, str)):
        t1 = time.perf_counter()
        result = particles.move_adaptive(ctx.budget_max, ctx.stop[name], ctx.settings)
        steps = int(result.steps[0])
        pick = _pick(ctx, particles, prompt_ids, response, movable, result.embeddings[-1], steps, start_scores, best)
        pick.update(seconds=sampled_s + time.perf_counter() - t1, forward=result.forward[-1] + ctx.particles * (steps > 0),
                    backward=result.backward[-1], policy=sample_passes + pick.pop("decode_passes"), steps=steps)
        pick.pop("decode_s")
        picks[name] = pick
    return _finish(ctx, prompt, prompt_ids, response, lengths, movable, picks, preferred)


def _matched_best_of_n(ctx, prompt, prompt_ids, response, start_scores, steps: list[int], extra,
                       sampled_s: float) -> dict:
    """``best-of-n`` rows, n = each L row's reward passes: the N samples and n - N more, the best under R.
    Their records carry the samples' ids and lengths of their own (``extra_ids``)."""
    if not steps:
        return {}
    tok, n0 = ctx.tokenizer, ctx.particles
    sizes = [matched_passes(n0, s) for s in steps]
    t = time.perf_counter()
    more, more_lengths, _ = sample_responses(ctx.policy, prompt_ids, max(sizes) - n0, response.shape[1],
                                             temperature=ctx.temperature, top_k=ctx.top_k, eos=tok.eos_token_id,
                                             pad=tok.pad_token_id, generator=extra, vocab=len(tok))
    more = torch.nn.functional.pad(more, (0, response.shape[1] - more.shape[1]), value=tok.pad_token_id)
    mask = torch.cat([torch.ones(more.shape[0], prompt_ids.numel(), dtype=torch.long, device=more.device),
                      (torch.arange(more.shape[1], device=more.device) < more_lengths[:, None]).long()], 1)
    full = torch.cat([prompt_ids.expand(more.shape[0], -1), more], 1)
    scores = torch.cat([start_scores, finite(aggregate_members(ctx.reward.from_ids(full, mask), "mean"), prompt)])
    seconds = sampled_s + time.perf_counter() - t
    out = {}
    for s, n in zip(steps, sizes):
        k = int(scores[:n].argmax())
        ids, length = (response[k], None) if k < n0 else (more[k - n0], more_lengths[k - n0])
        out[f"best-of-{n}"] = {"ids": ids, "reward": float(scores[k]), "source": k if k < n0 else 0,
                               "length": length, "seconds": seconds * n / max(sizes), "forward": n, "backward": 0,
                               "policy": n * response.shape[1], "steps": 0, "as_budget": s}
    return out


def _pick(ctx, particles, prompt_ids, response, movable, u, steps, start_scores, best, decoded: bool = False) -> dict:
    """Decode the particles ``u``, re-score them with R and keep the best (L = 0: the samples as they are,
    unless ``decoded``: then through the decoder too)."""
    t = time.perf_counter()
    if steps == 0 and not decoded:
        return {"ids": response[best], "reward": float(start_scores[best]), "source": best, "decode_s": 0.0,
                "decode_passes": 0}
    ids, passes = decode(ctx.decode, u, ctx.reward.table, response, movable, ctx.allowed, policy=ctx.policy,
                         prompt_ids=prompt_ids, k=ctx.decode_k)
    full = torch.cat([prompt_ids.expand(ids.shape[0], -1), ids], 1)
    scores = aggregate_members(ctx.reward.from_ids(full, particles.mask), "mean")
    scores = scores.nan_to_num(nan=float("-inf"))  # a NaN is never the best
    k = int(scores.argmax())
    return {"ids": ids[k], "reward": float(scores[k]), "source": k, "decode_s": time.perf_counter() - t,
            "decode_passes": passes}


def _finish(ctx, prompt, prompt_ids, response, lengths, movable, picks: dict, preferred: str | None = None) -> dict:
    """Judge, log-likelihood and changed tokens of every row's response, in one batch each."""
    names = list(picks)
    ids = torch.stack([picks[n]["ids"] for n in names])
    sources = [picks[n]["source"] for n in names]
    lengths = lengths[torch.tensor(sources, device=lengths.device)]  # a particle keeps its sample's length
    for i, name in enumerate(names):  # a best-of-n pick among the extra samples has a length of its own
        if picks[name].get("length") is not None:
            lengths[i] = picks[name]["length"]
    loglik = response_loglik(ctx.policy, prompt_ids, ids, lengths)
    texts = [ctx.tokenizer.decode(ids[i, :int(lengths[i])], skip_special_tokens=True) for i in range(len(names))]
    judged = [None] * len(names)
    if ctx.judge is not None:
        judged = ctx.judge([prompt] * (len(names) + bool(preferred)), texts + ([preferred] if preferred else [])).tolist()
    ref = names.index("reference")
    out = {}
    for i, name in enumerate(names):
        pick = picks[name]
        real = movable[sources[i]]
        changed = float((ids[i] != response[sources[i]])[real].float().mean()) if bool(real.any()) else 0.0
        record = {"reward": pick["reward"], "win": _win(pick["reward"], picks["reference"]["reward"]),
                  "loglik": float(loglik[i]), "changed": changed, "text": texts[i], "steps": pick["steps"],
                  "reward_forward": pick["forward"], "reward_backward": pick["backward"],
                  "policy_passes": pick["policy"], "seconds": pick["seconds"]}
        if judged[i] is not None:
            record |= {"judge": judged[i], "judge_win": _win(judged[i], judged[ref])}
            if preferred:  # against the dataset's preferred (or reference) response
                record["judge_win_data"] = _win(judged[i], judged[-1])
        if "as_budget" in pick:
            record["as_budget"] = pick["as_budget"]
        if pick.get("length") is not None:  # an extra sample: "changed" against the samples means nothing
            record["changed"] = 0.0
        out[name] = record
    return out


def finite(scores: Tensor, prompt: str) -> Tensor:
    """The samples' rewards with NaN as -inf (never chosen); an error when none is a number."""
    if not bool(torch.isfinite(scores).any()):
        raise VgfError(f"the reward model gave no finite reward for any sample of the prompt {prompt[:40]!r} "
                       "(a NaN or inf in its output: check llm.dtype and the model)")
    return scores.nan_to_num(nan=float("-inf"))


def _win(a: float, b: float) -> float:
    return 1.0 if a > b else 0.0 if a < b else 0.5
