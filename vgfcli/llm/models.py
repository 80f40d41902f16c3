"""Hugging Face models as the LM domain reads them: the reference policy (a causal LM), the reward
model (sequence classification, one output per member) and a held-out judge.

A model is named by a local directory (``save_pretrained``'s layout) or a hub id. No hub is reachable
on an offline machine: a hub id that is not in the local cache is a one-line error, never a traceback.
The reward model must read the policy's token ids: the transport moves the embeddings of the policy's
samples through the reward model's embedding table, so both must share one vocabulary
(``check_same_tokenizer``).

The reward of a response is computed from input embeddings (``RewardModel.from_embeddings``): the
model's body on ``inputs_embeds``, the hidden state of the last real token (right padding), then the
classification head. For token ids this equals the model's own ``logits`` (tested), and the same
function differentiated with respect to the embeddings gives the transport's drive.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vgfcli.errors import VgfError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quiet_transformers() -> None:
    """No weight-loading bars or advisory warnings on stderr: vgf's own progress says what runs."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # its own stream handler would hold on to whatever sys.stderr was at the first call (a test
    # runner's temporary stream, say); errors reach Python's last-resort handler instead
    transformers.utils.logging.disable_default_handler()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 where the GPU has no bf16), fp32 on a CPU."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def check_model_folder(spec: str | None, key: str) -> None:
    """A local model named by ``key`` (a path: it exists or starts with ., / or ~) must be a Hugging Face
    model folder; a hub id is left to loading. One line naming the key otherwise."""
    if not spec:
        return
    path = Path(spec).expanduser()
    if not (path.exists() or spec.startswith((".", "/", "~"))):
        return
    if not path.exists():
        raise VgfError(f"{key}={spec}: no such folder")
    if not (path / "config.json").is_file():
        raise VgfError(f"{key}={spec}: not a Hugging Face model folder (no config.json)")


def load_model(kind: str, spec: str, loader, **kwargs):
    """``loader.from_pretrained(spec)`` with one-line errors for a missing folder or an unreachable hub."""
    quiet_transformers()
    check_model_folder(spec, kind)
    path = Path(spec).expanduser()
    local = path.exists() or spec.startswith((".", "/", "~"))
    try:
        return loader.from_pretrained(str(path) if local else spec, **kwargs)
    except VgfError:
        raise
    except Exception as exc:  # OSError, ValueError, a SafetensorError of a damaged weights file, ...
        detail = " ".join(str(exc).split())[:200]
        where = "the folder" if local else "the hub (offline here? set HF_HUB_OFFLINE=1 and use a local copy)"
        raise VgfError(f"{kind} '{spec}' could not be loaded from {where}: {detail}") from None


def load_tokenizer(spec: str, kind: str):
    from transformers import AutoTokenizer

    tokenizer = load_model(kind, spec, AutoTokenizer)
    if tokenizer.eos_token_id is None or len(tokenizer) < 3:
        raise VgfError(f"{kind} '{spec}': no usable tokenizer there ({len(tokenizer)} tokens, EOS "
                       f"{tokenizer.eos_token!r}); save the model's tokenizer beside it")
    if tokenizer.pad_token_id is None:  # GPT-2 style tokenizers have none: pad with EOS, masked everywhere
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(spec: str, device: torch.device, dtype: torch.dtype):
    """(causal LM in eval mode, its tokenizer)."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(spec, "llm.policy")
    model = load_model("llm.policy", spec, AutoModelForCausalLM, dtype=dtype)
    return model.to(device).eval().requires_grad_(False), tokenizer


def load_reward(spec: str, device: torch.device, dtype: torch.dtype, kind: str = "llm.reward") -> "RewardModel":
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = load_tokenizer(spec, kind)
    check_reward_config(load_model(kind, spec, AutoConfig), spec, kind)
    model = load_model(kind, spec, AutoModelForSequenceClassification, dtype=dtype)
    return RewardModel(model.to(device).eval().requires_grad_(False), tokenizer, kind)


def load_judge(spec: str, device: torch.device, dtype: torch.dtype):
    """A held-out judge: any sequence classifier with one output (a causal LM's or an encoder's, e.g. a
    DeBERTa reward model), read through its own forward on prompt + response text in its own tokenizer,
    as ``(prompts, responses) -> [B]`` scores. vgf's own ensembles are read as their members' mean."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = load_tokenizer(spec, "llm.judge")
    check_one_output(load_model("llm.judge", spec, AutoConfig), spec, "llm.judge")
    model = load_model("llm.judge", spec, AutoModelForSequenceClassification, dtype=dtype).to(device).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    room = context_of(model) or 512
    # a causal LM's classifier (score head) reads the last token: end the text as vgf trains them, with EOS
    eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token and hasattr(model, "score") else []

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str]) -> Tensor:
        rows = [judge_input(tokenizer, p, r, eos_ids, room, spec) for p, r in zip(prompts, responses)]
        ids, mask = pad_right(rows, tokenizer.pad_token_id, device)
        return model(input_ids=ids, attention_mask=mask).logits.float().mean(-1).double().cpu()

    return score


def judge_input(tokenizer, prompt: str, response: str, eos_ids: list[int], room: int, spec: str) -> list[int]:
    """The judge's token ids for one (prompt, response), within its context of ``room`` positions: the
    whole response (and the EOS a causal LM's classifier reads at), the prompt cut from the LEFT to fit,
    so the judge always reads what it judges. Special tokens (BOS, CLS/SEP) as the tokenizer adds them
    to the pair, where it adds any and there is no EOS to end with. A response longer than the context
    is an error: its score would be of a truncated text."""
    # a decoder read at its last token: prompt + response + EOS; an encoder: the tokenizer's own specials
    extra = len(eos_ids) if eos_ids else len(tokenizer.build_inputs_with_special_tokens([]))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    budget = room - len(response_ids) - extra
    if budget < 0:
        raise VgfError(f"llm.judge '{spec}' reads {room} positions, too few for a response of "
                       f"{len(response_ids)} tokens: use a judge with a longer context or fewer evaluate.max_new_tokens")
    body = prompt_ids[max(0, len(prompt_ids) - budget):] + response_ids
    return body + eos_ids if eos_ids else tokenizer.build_inputs_with_special_tokens(body)


def check_reward_config(config, spec: str, kind: str) -> None:
    """A reward model is a sequence classifier with one output, or vgf's ensemble (outputs ``member_i``).
    Loading a language model or a multi-class classifier as one would give a fresh random head or read
    class logits as rewards: refused."""
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise VgfError(f"{kind} '{spec}' is a {architectures[0]}, not a reward model (a *ForSequenceClassification "
                       "model with one output)")
    check_one_output(config, spec, kind)


def check_one_output(config, spec: str, kind: str) -> None:
    """One output, or vgf's ensemble (outputs ``member_i``, read as their mean): never class logits."""
    labels = [str(v) for v in (getattr(config, "id2label", None) or {}).values()]
    if config.num_labels > 1 and not all(label.startswith("member_") for label in labels):
        raise VgfError(f"{kind} '{spec}' has {config.num_labels} outputs ({', '.join(labels[:4])}): a reward model has "
                       "one (or is an ensemble that train-reward made)")


def check_same_tokenizer(policy_tokenizer, reward_tokenizer, policy_spec: str, reward_spec: str) -> None:
    """Refuse a reward model that reads other token ids than the policy writes (exit 2, saying why). A
    reward vocabulary that extends the policy's (every policy token at the same id, plus entries of its own
    such as an added pad token) reads every id the policy writes, and is accepted."""
    a, b = policy_tokenizer.get_vocab(), reward_tokenizer.get_vocab()
    differ = [token for token, i in a.items() if b.get(token) != i]
    if differ:
        raise VgfError(f"llm.reward '{reward_spec}' does not read llm.policy '{policy_spec}''s token ids "
                       f"({len(a)} vs {len(b)} tokens, {len(differ)} of the policy's entries missing or at other ids, "
                       f"e.g. {differ[0]!r}): the transport moves the policy's samples through the reward model's "
                       "embedding table, so it must read every policy token at the same id")
    if policy_tokenizer.eos_token_id != reward_tokenizer.eos_token_id:
        raise VgfError(f"llm.reward '{reward_spec}' and llm.policy '{policy_spec}' end texts with different EOS "
                       f"tokens ({reward_tokenizer.eos_token_id} vs {policy_tokenizer.eos_token_id})")


@dataclass
class RewardModel:
    """A sequence-classification model read as a reward: ``[B] sequences -> [members, B]``."""

    model: object
    tokenizer: object
    kind: str = "llm.reward"

    def __post_init__(self):
        self.head = getattr(self.model, "score", None)
        if self.head is None:
            raise VgfError(f"{self.kind}: {type(self.model).__name__} is not a causal LM's sequence classifier (no "
                       "score head): the transport reads the reward at the response's last token of a decoder "
                       "such as GPT-2, Pythia or Llama; an encoder reward model can be the judge (llm.judge)")
        self.body = getattr(self.model, self.model.base_model_prefix)
        pad, eos = self.model.config.pad_token_id, self.tokenizer.eos_token_id
        # HF's classifiers pool at the last token that is not the pad id: where pad == EOS (GPT-2 and
        # Pythia reward models), that is the token before a final EOS. Pooling here follows it.
        self.pad_id = pad if pad is not None and pad == eos else None

    @property
    def members(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def table(self) -> Tensor:
        """The input-embedding table ``[V, d]``: the particles' space."""
        return self.model.get_input_embeddings().weight

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def last_index(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``[B]``: the position the reward is read at, as the model's own forward reads it (right padding)."""
        if self.pad_id is None:
            return mask.long().sum(1).clamp_min(1) - 1
        positions = torch.arange(ids.shape[1], device=ids.device)
        return (positions * ((ids != self.pad_id) & (mask > 0)).long()).argmax(1)

    def from_embeddings(self, embeds: Tensor, mask: Tensor, last: Tensor) -> Tensor:
        """``[B, T, d]`` input embeddings, ``[B, T]`` attention mask (right-padded), ``[B]`` positions to read
        (``last_index``) -> ``[members, B]``."""
        hidden = self.body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled).float().transpose(0, 1)

    @torch.no_grad()
    def from_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.from_embeddings(self.embed(ids), mask, self.last_index(ids, mask))


def context_of(model) -> int:
    """The positions a model has (0 when its config does not say)."""
    config = model.config
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 0)


def pad_right(rows: list[list[int]], pad: int, device) -> tuple[Tensor, Tensor]:
    """Token lists -> ``[B, T]`` ids padded on the right with ``pad`` and the ``[B, T]`` attention mask."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids.to(device), mask.to(device)


def cached_step(model, ids: Tensor, cache):
    """One forward pass of a causal LM with its KV cache: (logits ``[B, T, V]``, the new cache).
    transformers 5 names the cache ``cache``, 4.x ``past_key_values``: both are read here."""
    name = _cache_argument(type(model))
    result = model(input_ids=ids, use_cache=True, **({name: cache} if cache is not None else {}))
    return result.logits, result[name]


@functools.cache
def _cache_argument(model_class) -> str:
    """The KV cache's keyword in ``model_class.forward`` (read once per class: this runs once per token)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def response_loglik(model, prompt_ids: Tensor, response: Tensor, lengths: Tensor) -> Tensor:
    """Mean log-likelihood per token of each response under the reference LM: ``prompt_ids`` ``[P]``,
    ``response`` ``[N, T]`` (right-padded), ``lengths`` ``[N]`` real tokens -> ``[N]``."""
    n, t = response.shape
    ids = torch.cat([prompt_ids.expand(n, -1), response], 1)
    positions = torch.arange(t, device=ids.device)
    mask = torch.cat([torch.ones(n, prompt_ids.numel(), dtype=torch.long, device=ids.device),
                      (positions < lengths[:, None]).long()], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt_ids.numel() - 1:-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, response[..., None]).squeeze(-1)
    real = (positions < lengths[:, None]).float()
    return (logp * real).sum(1) / real.sum(1).clamp_min(1.0)
