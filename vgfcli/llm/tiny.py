"""Language models vgf makes itself, for machines with no model hub: a byte-level BPE tokenizer trained
on the prompt set's own texts, and GPT-2-shaped causal LMs and reward models of a few layers.

They are ordinary Hugging Face models (``save_pretrained`` folders), loaded by the same code as a hub
model, so the tests and the demo run the real loading path.
"""

from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A GPT-2-style byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with ``vocab_size`` entries
    at most, EOS ``<|endoftext|>`` and a pad token of its own (so padding is never mistaken for EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)


def gpt2_config(tokenizer, *, layers: int, heads: int, width: int, context: int, num_labels: int | None = None):
    from transformers import GPT2Config

    extra = {} if num_labels is None else {"num_labels": num_labels, "id2label": {i: f"member_{i}" for i in range(num_labels)},
                                            "label2id": {f"member_{i}": i for i in range(num_labels)}}
    return GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=width, n_layer=layers, n_head=heads,
                      bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **extra)


def new_causal_lm(tokenizer, *, layers: int, heads: int, width: int, context: int, seed: int):
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(tokenizer, layers=layers, heads=heads, width=width, context=context))


def reward_from_lm(lm_dir: str, members: int, seed: int):
    """A sequence-classification model on the body of the LM saved in ``lm_dir`` (the usual start of a
    reward model: the SFT model's weights and tokenizer), with a fresh head of ``members`` outputs."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from vgfcli.llm.models import load_model

    torch.manual_seed(seed)
    labels = {i: f"member_{i}" for i in range(members)}
    model = load_model("reward.base", lm_dir, AutoModelForSequenceClassification, num_labels=members,
                       id2label=labels, label2id={v: k for k, v in labels.items()})
    if model.config.pad_token_id is None:  # sequence classifiers look for it; GPT-2 style configs lack one
        model.config.pad_token_id = model.config.eos_token_id
    return model
