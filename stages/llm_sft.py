"""`vgf pretrain-policy domain=llm`: the reference LM, by supervised fine-tuning on prompt -> reference
pairs: the language counterpart of cloning the reference flow.

``sft.base`` names a model to fine-tune (a folder or hub id). Left null, a GPT-2-shaped LM of the sizes
in ``sft`` is made from scratch, with a byte-level BPE tokenizer trained on the prompt set's own texts
(``vgfcli.llm.tiny``): the embedded default on a machine without a model hub. The loss is the next
token's cross-entropy over the response (and over the prompt too with ``sft.prompt_loss``, which a model
from scratch needs to learn the language at all); AdamW with a linear warm-up. The output is a
``save_pretrained`` folder: any Hugging Face code loads it.
"""

from __future__ import annotations

from vgfcli.errors import VgfError
from vgfcli.llm.keys import model_key
from vgfcli.stage import Inputs, Outcome, Stage, StageResult
from vgfcli.ui import summary_table

VAL_ROWS = 256  # validation loss on at most this many held-out pairs


class PretrainLmStage(Stage):
    name = "pretrain-lm"
    config_name = "llm"
    domain = "llm"
    code_version = 1
    main_metrics = ("loss", "val_loss")
    needs = ("prompts",)
    produces = ("lm",)

    def config_for(self, cfg, name: str, upstream):
        return None if cfg.llm.policy else cfg  # a policy of the user's own: nothing to make

    def preflight(self, cfg) -> None:
        from vgfcli.llm.models import check_model_folder

        if cfg.llm.policy:
            check_model_folder(cfg.llm.policy, "llm.policy")
            return
        check_model_folder(cfg.sft.base, "sft.base")
        if cfg.sft.base is None and cfg.sft.width % cfg.sft.heads:
            raise VgfError(f"sft.width={cfg.sft.width} must be a multiple of sft.heads={cfg.sft.heads}")

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        if cfg.sft.base is None and cfg.sft.width % cfg.sft.heads:
            raise VgfError(f"sft.width={cfg.sft.width} must be a multiple of sft.heads={cfg.sft.heads}")
        return super().resolve_inputs(cfg, upstream)

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        sft = to_dict(cfg.sft)
        if sft["base"] is not None:  # a model of the user's: its files, not the sizes of one from scratch
            sft = {k: v for k, v in sft.items() if k not in ("vocab_size", "layers", "heads", "width")}
            sft["base"] = model_key(sft["base"])
        return {"sft": sft, "seed": cfg.seed}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from vgfcli.llm import tiny
        from vgfcli.llm import training as lm
        from vgfcli.llm.models import load_policy, load_tokenizer, resolve_dtype
        from vgfcli.training import train_loop

        s = cfg.sft
        device = lm.stage_start(cfg, run)
        rows, val_rows = lm.rows_with(inputs.upstream["prompts"], "reference", VAL_ROWS,
                                      "pretrain-policy domain=llm needs reference responses in the prompt set "
                                      "(prompts.reference_field=COLUMN), or a policy of your own: llm.policy=FOLDER")
        torch.manual_seed(cfg.seed)
        if s.base is None:
            with ui.status(f"training a {s.vocab_size}-token BPE tokenizer on {len(rows)} texts"):
                tokenizer = tiny.train_tokenizer((r["prompt"] + r["reference"] for r in rows), s.vocab_size)
            model = tiny.new_causal_lm(tokenizer, layers=s.layers, heads=s.heads, width=s.width, context=s.context,
                                       seed=cfg.seed).to(device)
        else:
            tokenizer = load_tokenizer(s.base, "sft.base")
            model = load_policy(s.base, device, torch.float32)[0].requires_grad_(True)
        model.train()
        batches = lm.TokenBatches(tokenizer, rows, s.context, s.batch_size, cfg.seed, prompt_loss=s.prompt_loss)
        val = lm.TokenBatches(tokenizer, val_rows or rows[:VAL_ROWS], s.context, s.batch_size, cfg.seed,
                           prompt_loss=s.prompt_loss)
        optimizer, schedule = lm.warmup_adamw(model, s.lr, s.warmup)
        amp = device.type == "cuda"

        def step_fn(step: int) -> dict:
            ids, mask, labels = (t.to(device) for t in batches.sample())
            with torch.autocast(device.type, dtype=resolve_dtype("auto", device), enabled=amp):
                loss = lm.lm_loss(lm.model_outputs(model, ids, mask), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            return {"loss": loss.detach()}

        def val_fn(step: int) -> dict:
            model.eval()
            with torch.no_grad():
                losses = [lm.lm_loss(lm.model_outputs(model, *(t.to(device) for t in b[:2])), b[2].to(device))
                          for b in val.all_batches()]
            model.train()
            return {"val_loss": float(torch.stack(losses).mean())}

        def state_fn() -> dict:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "sampler": batches.generator.get_state(), "rng": lm.rng_state()}

        def load_fn(state: dict) -> int:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            batches.generator.set_state(state["sampler"])
            lm.set_rng_state(state["rng"])  # dropout draws from torch's global stream
            return int(state["step"])

        loop = train_loop(run, ui, "pretrain-policy (lm)", steps=s.steps, step_fn=step_fn, state_fn=state_fn,
                          load_fn=load_fn, checkpoint_every=s.checkpoint_every, log_every=s.log_every,
                          every={s.log_every * 5: val_fn})
        outputs = lm.save_model(model.eval(), tokenizer, run.staging / "lm")
        summary = {"base": s.base or f"gpt2-shaped {s.layers}x{s.width} from scratch", "pairs": len(rows),
                   "vocab": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
                   "steps": s.steps, "loss": round(loop.last.get("loss", float("nan")), 4),
                   "val_loss": round(loop.last.get("val_loss", float("nan")), 4), "seconds": round(loop.seconds, 1),
                   "resumed_from_step": loop.resumed_from, "device": str(device)}
        return StageResult(outputs=outputs, metrics={"parameters": float(summary["parameters"])}, summary=summary)

    def render(self, outcome: Outcome):
        return summary_table("pretrain-policy (lm)", outcome.summary)


STAGE = PretrainLmStage()
