"""What the LM stages train with: token batches of prompt -> response pairs (SFT), preference batches
(Bradley-Terry), the optimiser, and saving and finding ``save_pretrained`` folders in stage runs."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # labels the loss skips (padding; the prompt without sft.prompt_loss)


def encode_pair(tokenizer, prompt: str, response: str, context: int) -> tuple[list[int], int]:
    """Token ids of ``prompt + response + EOS`` and the prompt's length in tokens. Longer than ``context``:
    the prompt loses its start (as evaluation cuts it) and then the response its end, so the response
    and its EOS are what is kept."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = (tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:context - 1]
    p = p[max(0, len(p) - (context - len(r))):]
    return p + r, len(p)


def rng_state() -> dict:
    """torch's global random streams (dropout draws from them), for a checkpoint."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TokenBatches:
    """Random batches of encoded pairs, right-padded: ``(ids, attention mask, labels)``."""

    def __init__(self, tokenizer, rows: list[dict], context: int, batch_size: int, seed: int, *,
                 prompt_loss: bool, field: str = "reference"):
        self.pad, self.batch_size = tokenizer.pad_token_id, batch_size
        encoded = [encode_pair(tokenizer, r["prompt"], r[field], context) for r in rows]
        self.rows = [ids for ids, _ in encoded]
        self.starts = [0 if prompt_loss else n for _, n in encoded]
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, index: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        width = max(len(self.rows[i]) for i in index)
        ids = torch.full((len(index), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for k, i in enumerate(index):
            row = torch.tensor(self.rows[i])
            ids[k, :len(row)], mask[k, :len(row)] = row, 1
            labels[k, self.starts[i]:len(row)] = row[self.starts[i]:]
        return ids, mask, labels

    def sample(self) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.randint(len(self.rows), (self.batch_size,), generator=self.generator).tolist()
        return self.batch(index)

    def all_batches(self):
        for start in range(0, len(self.rows), self.batch_size):
            yield self.batch(list(range(start, min(start + self.batch_size, len(self.rows)))))


def model_outputs(model, ids: Tensor, mask: Tensor) -> Tensor:
    return model(input_ids=ids, attention_mask=mask).logits


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy over the labelled positions."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


def warmup_adamw(model, lr: float, warmup: int):
    """AdamW (weight decay 0.01) and a linear warm-up over ``warmup`` steps, then a constant rate."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup)))
    return optimizer, schedule


class PairBatches:
    """Random batches of preference pairs: chosen and rejected sequences, each ``(ids, mask)``."""

    def __init__(self, tokenizer, rows: list[dict], context: int, batch_size: int, seed: int):
        self.pad, self.batch_size = tokenizer.pad_token_id, batch_size
        self.chosen = [encode_pair(tokenizer, r["prompt"], r["chosen"], context)[0] for r in rows]
        self.rejected = [encode_pair(tokenizer, r["prompt"], r["rejected"], context)[0] for r in rows]
        self.generator = torch.Generator().manual_seed(seed)

    def _pad(self, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        from vgfcli.llm.models import pad_right

        return pad_right(seqs, self.pad, "cpu")

    def batch(self, index: list[int]):
        return self._pad([self.chosen[i] for i in index]), self._pad([self.rejected[i] for i in index])

    def sample(self):
        return self.batch(torch.randint(len(self.chosen), (self.batch_size,), generator=self.generator).tolist())

    def all_batches(self):
        for start in range(0, len(self.chosen), self.batch_size):
            yield self.batch(list(range(start, min(start + self.batch_size, len(self.chosen)))))


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, weights: Tensor | None = None) -> Tensor:
    """``-log sigmoid(r_chosen - r_rejected)`` per member ``[M, B]``, each member's pairs weighted by its
    own bootstrap ``weights`` ``[M, B]`` (members of an ensemble see differently drawn data)."""
    losses = -F.logsigmoid(chosen - rejected)
    if weights is None:
        return losses.mean()
    return ((losses * weights).sum(1) / weights.sum(1).clamp_min(1e-6)).mean()


def save_model(model, tokenizer, folder: Path) -> dict[str, Path]:
    """``save_pretrained`` of the model and its tokenizer into ``folder``; every file a stage output."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {f.name: f for f in sorted(folder.iterdir()) if f.is_file()}


def stage_start(cfg, run):
    """What every LM training stage does first: transformers quiet, the device resolved and tagged."""
    from vgfcli.llm.models import quiet_transformers
    from vgfcli.training import resolve_device

    quiet_transformers()
    device = resolve_device(cfg.device)
    run.set_tags({"vgf.device": str(device)})
    return device


def rows_with(record, key: str, val_limit: int, missing: str) -> tuple[list[dict], list[dict]]:
    """The prompt set's training rows that have ``key`` (a reference, a chosen response) and at most
    ``val_limit`` held-out ones, from an ingest-prompts run; ``missing`` is the error when none has it."""
    from vgfcli.errors import VgfError
    from vgfcli.llm.prompts import load_jsonl

    paths = record.output_paths()
    rows = [r for r in load_jsonl(paths["prompts"]) if key in r]
    if not rows:
        raise VgfError(missing)
    return rows, [r for r in load_jsonl(paths["val_prompts"]) if key in r][:val_limit]


def model_folder(record) -> Path:
    """The ``save_pretrained`` folder of a finished LM stage run (its outputs lie side by side)."""
    from vgfcli.errors import VgfError

    paths = record.output_paths()
    if paths is None or "config.json" not in paths:
        raise VgfError(f"{record.stage} run {record.run_id}: its model files are missing or damaged; rerun it "
                       "with --force")
    return Path(paths["config.json"]).parent
