"""Types of the language-model domain's config (``conf/llm.yaml``, composed when a command is given
``domain=llm``); values live in the YAML, ranges in ``vgfcli.schema.CHECKS["llm"]``. No torch here:
composing stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class PromptSource:
    """vgf ingest domain=llm: where the prompt set comes from and which columns hold what."""

    source: str = MISSING  # demo (vgf makes it from the demo corpus) | file
    path: Optional[str] = None  # source=file: a .jsonl or .parquet file, or a datasets folder (save_to_disk)
    prompt_field: str = "prompt"
    reference_field: Optional[str] = None  # a reference response per prompt (pretrain-policy's SFT target)
    chosen_field: Optional[str] = None  # a preference pair (train-reward): the preferred response
    rejected_field: Optional[str] = None  # ... and the other one
    split_field: Optional[str] = None  # a column saying train / val; None: the folder's own split or a hash split
    val_fraction: float = 0.1  # hash split: the share of prompts held out for evaluation
    demo_rows: int = 6000  # source=demo: prompts made from the corpus
    demo_rule: str = "long_words"  # source=demo: the known scoring rule that labels the preference pairs


@dataclass
class ModelSpecs:
    # Each a local save_pretrained folder or a hub id (hubs are unreachable offline: use local copies).
    policy: Optional[str] = None  # the reference LM; None: this config's pretrain-policy run (SFT)
    reward: Optional[str] = None  # the reward model (sequence classification); None: this config's train-reward run
    # A held-out judge: a reward model folder/id (never llm.reward: judging with the reward the transport
    # climbs flatters every row), or rule:<name>. None: the demo corpus's gold rule (prompts.demo_rule),
    # only on the demo (with models or prompts of your own a judge must be named: stages/llm_evaluate.judge_spec).
    judge: Optional[str] = None
    decode: str = "nearest"  # embeddings -> tokens: nearest | topk (the reference LM's top-k, nearest of them)
    decode_k: int = 10  # decode=topk: candidates per position
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16


@dataclass
class SftConfig:
    """vgf pretrain-policy domain=llm: the reference LM, fine-tuned on prompt -> reference pairs."""

    base: Optional[str] = None  # the LM to fine-tune; None: a GPT-2-shaped LM from scratch, sizes below
    vocab_size: int = 2048  # from scratch: the BPE tokenizer trained on the prompt set's texts
    layers: int = 4
    heads: int = 4
    width: int = 128
    context: int = 96  # positions (prompt + response tokens)
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1.0e-3
    warmup: int = 100  # linear warm-up steps of AdamW
    prompt_loss: bool = True  # also learn the prompts' tokens (from scratch, they are text it must model)
    log_every: int = 100
    checkpoint_every: int = 1000


@dataclass
class RewardTrainConfig:
    """vgf train-reward: a Bradley-Terry reward model on the prompt set's chosen/rejected pairs."""

    base: str = "policy"  # policy (the reference LM's body and tokenizer) | a folder or hub id
    members: int = 2  # outputs trained as an ensemble (members' mean drives VGF; their spread: adaptive budgets)
    steps: int = 600
    batch_size: int = 32
    lr: float = 3.0e-4
    calibration_quantile: float = 0.9  # adaptive rule a: the members' std quantile at held-out responses
    log_every: int = 100
    checkpoint_every: int = 500


@dataclass
class LlmEvaluateConfig:
    prompts: Optional[int] = 200  # held-out prompts scored, in file order (None: all)
    split: str = "val"  # val (held out: the results) | train (for choosing alpha, lr, decode without the val prompts)
    particles: int = 8  # N responses sampled per prompt (L = 0 is best-of-N)
    budgets: list[Any] = field(default_factory=lambda: [0, 1, 2, 3])  # steps L; auto | auto_std | auto_gain
    budget_max: Optional[int] = None  # adaptive rows: most steps (None: the largest L in budgets)
    stop_gain: float = 0.5  # adaptive rule b: least gain, in units of the members' std
    max_new_tokens: int = 24  # response length at most (sampling stops at EOS)
    temperature: float = 1.0
    top_k: int = 0  # sampling's top-k (0: the full distribution)
    alpha: float = 1.0  # the drive's 1/alpha weight against the kernel's repulsion
    lr: float = 0.05  # transport step (adam: about lr per embedding coordinate per step)
    step_rule: str = "adam"  # adam (the offline transport's default) | plain
    bandwidth_grad: bool = True  # the offline transport's repulsion (through the median bandwidth)
    # Also best-of-n at the reward passes each L > 0 row spends (n = N (2 + 2L)): the compute-matched
    # baseline, from more samples of a stream of their own (the other rows' samples stay the same).
    matched_best_of_n: bool = True


@dataclass
class LlmUpstream:
    prompts: Optional[str] = None
    lm: Optional[str] = None
    reward: Optional[str] = None


@dataclass
class LlmConfig:
    domain: str = "llm"
    seed: int = MISSING
    device: str = MISSING  # auto (CUDA when present) | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch threads per stage (None: one per core)
    prompts: PromptSource = MISSING
    llm: ModelSpecs = MISSING
    sft: SftConfig = MISSING
    reward: RewardTrainConfig = MISSING
    evaluate: LlmEvaluateConfig = MISSING
    upstream: LlmUpstream = MISSING
    tracking: Any = MISSING
    choices: dict[str, Optional[str]] = field(default_factory=dict)

