"""`vgf train-reward`: a Bradley-Terry reward model on the prompt set's chosen/rejected pairs, the
language counterpart of training the critic (for users who bring pairs and no reward model).

The model is a sequence classifier on a base LM's body: by default the reference LM itself
(``reward.base=policy``: its weights and, what the transport needs, its tokenizer), else a folder or
hub id of the user's. It has ``reward.members`` outputs trained as an ensemble, each on its own
bootstrap weights of the pairs: their mean is the reward VGF climbs, their spread at a response is
what adaptive budgets read (rule a's threshold is the ``reward.calibration_quantile`` of the members'
std at the held-out pairs' responses, kept in ``calibration.json``, as the critic's is at the
dataset's actions). Loss: ``-log sigmoid(r(chosen) - r(rejected))`` per member.
"""

from __future__ import annotations

from vgfcli.stage import Inputs, Outcome, Stage, StageResult
from vgfcli.ui import summary_table

VAL_PAIRS = 512


class TrainRewardStage(Stage):
    name = "train-reward"
    config_name = "llm"
    domain = "llm"
    code_version = 1
    main_metrics = ("val_accuracy",)
    needs = ("prompts", "lm")
    produces = ("reward",)

    def preflight(self, cfg) -> None:
        from vgfcli.llm.models import check_model_folder

        check_model_folder(cfg.llm.policy, "llm.policy")  # the base when reward.base=policy
        if cfg.reward.base != "policy":
            check_model_folder(cfg.reward.base, "reward.base")

    def needed(self, cfg) -> tuple[str, ...]:
        # the reference LM's run is the base only when the base is the policy and the policy is ours
        return self.needs if cfg.reward.base == "policy" and not cfg.llm.policy else ("prompts",)

    def config_for(self, cfg, name: str, upstream):
        return None if cfg.llm.reward else cfg  # a reward model of the user's own: nothing to make

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict
        from vgfcli.llm.keys import model_key

        base = cfg.reward.base
        if base == "policy":
            base = {"policy": model_key(cfg.llm.policy)} if cfg.llm.policy else "policy"  # the lm run: its digest
        else:
            base = model_key(base)
        return {"reward": to_dict(cfg.reward) | {"base": base}, "seed": cfg.seed}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from vgfcli.cache import write_json_atomic
        from vgfcli.llm import tiny
        from vgfcli.llm import training as lm
        from vgfcli.llm.models import RewardModel, context_of, load_tokenizer, resolve_dtype
        from vgfcli.training import train_loop

        r = cfg.reward
        device = lm.stage_start(cfg, run)
        pairs, val_pairs = lm.rows_with(inputs.upstream["prompts"], "chosen", VAL_PAIRS,
                                        "train-reward needs preference pairs in the prompt set (prompts.chosen_field="
                                        "COLUMN prompts.rejected_field=COLUMN), or a reward model of your own: "
                                        "llm.reward=FOLDER")
        base = r.base if r.base != "policy" else (cfg.llm.policy or str(lm.model_folder(inputs.upstream["lm"])))
        tokenizer = load_tokenizer(base, "reward.base")
        model = tiny.reward_from_lm(base, r.members, cfg.seed).to(device).train()
        context = context_of(model) or 1024
        reward = RewardModel(model, tokenizer, "reward.base")
        batches = lm.PairBatches(tokenizer, pairs, context, r.batch_size, cfg.seed)
        val = lm.PairBatches(tokenizer, val_pairs or pairs[:VAL_PAIRS], context, r.batch_size, cfg.seed)
        optimizer, schedule = lm.warmup_adamw(model, r.lr, 50)
        members = torch.Generator().manual_seed(cfg.seed + 1)  # each member's bootstrap weights of a batch
        amp = device.type == "cuda"

        def scores(batch):
            (ci, cm), (ri, rm) = batch
            with torch.autocast(device.type, dtype=resolve_dtype("auto", device), enabled=amp):
                return tuple(reward.from_embeddings(reward.embed(i.to(device)), m.to(device),
                                                    reward.last_index(i.to(device), m.to(device)))
                             for i, m in ((ci, cm), (ri, rm)))

        def step_fn(step: int) -> dict:
            chosen, rejected = scores(batches.sample())
            weights = torch.poisson(torch.ones(chosen.shape), generator=members).to(device)
            loss = lm.bradley_terry_loss(chosen, rejected, weights if r.members > 1 else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            return {"loss": loss.detach(), "accuracy": (chosen > rejected).float().mean().detach()}

        def val_fn(step: int = 0) -> dict:
            model.eval()
            with torch.no_grad():
                pairs_scored = [scores(b) for b in val.all_batches()]
            model.train()
            chosen = torch.cat([c for c, _ in pairs_scored], 1)
            rejected = torch.cat([x for _, x in pairs_scored], 1)
            mean_right = (chosen.mean(0) > rejected.mean(0)).float().mean()
            return {"val_accuracy": float(mean_right), "val_loss": float(lm.bradley_terry_loss(chosen, rejected))}

        def state_fn() -> dict:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "sampler": batches.generator.get_state(),
                    "members": members.get_state(), "rng": lm.rng_state()}

        def load_fn(state: dict) -> int:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            batches.generator.set_state(state["sampler"])
            members.set_state(state["members"])
            lm.set_rng_state(state["rng"])  # dropout draws from torch's global stream
            return int(state["step"])

        loop = train_loop(run, ui, "train-reward", steps=r.steps, step_fn=step_fn, state_fn=state_fn,
                          load_fn=load_fn, checkpoint_every=r.checkpoint_every, log_every=r.log_every,
                          every={r.log_every * 5: val_fn})
        model.eval()
        final = val_fn()
        calibration = {"members": r.members, "quantile": r.calibration_quantile, "threshold": None}
        if r.members > 1:
            with torch.no_grad():
                spread = torch.cat([torch.cat(scores(b), 1) for b in val.all_batches()], 1).std(0)
            calibration["threshold"] = float(spread.quantile(r.calibration_quantile))
        outputs = lm.save_model(model, tokenizer, run.staging / "reward")
        write_json_atomic(run.staging / "calibration.json", calibration)
        outputs["calibration.json"] = run.staging / "calibration.json"
        summary = {"base": r.base if r.base != "policy" else "the reference LM", "pairs": len(pairs),
                   "members": r.members, "steps": r.steps, "loss": round(loop.last.get("loss", float("nan")), 4),
                   "val_accuracy": round(final["val_accuracy"], 4), "val_pairs": len(val_pairs),
                   "stop_threshold": calibration["threshold"], "seconds": round(loop.seconds, 1),
                   "resumed_from_step": loop.resumed_from, "device": str(device)}
        return StageResult(outputs=outputs, metrics={"val_accuracy": final["val_accuracy"]}, summary=summary)

    def render(self, outcome: Outcome):
        return summary_table("train-reward", outcome.summary)


STAGE = TrainRewardStage()
