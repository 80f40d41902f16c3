"""`vgf evaluate domain=llm`: VGF on a causal LM's responses, one row per test-time budget.

For each held-out prompt (the first ``evaluate.prompts`` of the prompt set's val split), N responses of
the reference LM are moved L steps in the reward model's input-embedding space by the offline transport,
decoded (``llm.decode``), re-scored by the reward model R, and the best is returned
(``vgfcli.llm.rows``). Rows: the reference sample, best-of-N (L = 0), each L, and adaptive budgets
(``auto``...: the offline stopping rules on R's members, which need >= 2 of them).

Each row: mean reward under R, the win rate against the reference sample under R and under the judge
(``llm.judge``: a held-out reward model, or the demo's rule; optimising R and judging with R flatters),
the judge's mean score, the reference LM's log-likelihood per token (how far from the reference), the
fraction of tokens changed, passes and seconds per prompt, each mean with its 95 % interval over
prompts. Outputs: ``results.json`` (every prompt's outcome per row), ``samples.jsonl`` (the texts) and
``reward_vs_budget.png``.
"""

from __future__ import annotations

import json

from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult

WIN_RATES = ("win", "judge_win", "judge_win_data")
MEASURES = ("reward", "win", "judge", "judge_win", "judge_win_data", "loglik", "changed", "reward_forward", "reward_backward",
            "policy_passes", "seconds", "steps")


class EvaluateLmStage(Stage):
    name = "evaluate-lm"
    config_name = "llm"
    domain = "llm"
    code_version = 2  # 2: win-rate intervals Wilson (inside [0, 1]); the judge named or the demo's gold rule; padded vocab rows never sampled
    main_metrics = ("best_reward", "reference_reward")
    needs = ("prompts", "lm", "reward")

    def in_pipeline(self, cfg) -> bool:
        return True

    def preflight(self, cfg) -> None:
        from vgfcli.llm.models import check_model_folder

        for key in ("policy", "reward"):
            check_model_folder(cfg.llm[key], f"llm.{key}")
        judge = judge_spec(cfg)
        if not judge.startswith("rule:"):
            check_model_folder(judge, "llm.judge")

    def needed(self, cfg) -> tuple[str, ...]:
        return ("prompts",) + (() if cfg.llm.policy else ("lm",)) + (() if cfg.llm.reward else ("reward",))

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.budgets import parse_budgets
        from vgfcli.config import to_dict

        try:
            budgets = parse_budgets(list(cfg.evaluate.budgets))
        except ValueError as exc:
            raise VgfError(f"evaluate.{exc}") from None
        from vgfcli.llm.keys import model_key
        from vgfcli.llm.models import resolve_dtype
        from vgfcli.training import resolve_device

        llm = to_dict(cfg.llm)
        llm = {k: v for k, v in llm.items() if v is not None and (k != "decode_k" or llm["decode"] == "topk")}
        # the numbers depend on the models' files and on the dtype they run in (auto: by device)
        llm["judge"] = judge_spec(cfg)
        llm |= {k: model_key(llm[k]) for k in ("policy", "reward", "judge") if k in llm}
        llm["dtype"] = str(resolve_dtype(cfg.llm.dtype, resolve_device(cfg.device))).removeprefix("torch.")
        e = to_dict(cfg.evaluate) | {"budgets": budgets}
        if not any(isinstance(b, str) for b in budgets):  # knobs of adaptive rows only
            e = {k: v for k, v in e.items() if k not in ("budget_max", "stop_gain")}
        return {"evaluate": e, "llm": llm, "seed": cfg.seed}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import time

        import torch

        from vgfcli import plots, seeds
        from vgfcli.budgets import parse_budgets
        from vgfcli.cache import write_bytes_atomic, write_json_atomic
        from vgfcli.llm import models
        from vgfcli.llm.decoding import allowed_tokens
        from vgfcli.llm.prompts import load_jsonl
        from vgfcli.llm.rows import LmRowsContext, evaluate_prompt, room_for_prompts
        from vgfcli.llm.training import model_folder
        from vgfcli.llm.transport import TransportSettings
        from vgfcli.nn.adaptive import StopRule, reads_disagreement
        from vgfcli.training import resolve_device

        e, spec = cfg.evaluate, cfg.llm
        device = resolve_device(cfg.device)
        dtype = models.resolve_dtype(spec.dtype, device)
        run.set_tags({"vgf.device": str(device), "vgf.dtype": str(dtype).removeprefix("torch.")})
        budgets = parse_budgets(list(e.budgets))
        policy_spec = spec.policy or str(model_folder(inputs.upstream["lm"]))
        reward_spec = spec.reward or str(model_folder(inputs.upstream["reward"]))
        with ui.status("loading the reference LM, the reward model and the judge"):
            policy, tokenizer = models.load_policy(policy_spec, device, dtype)
            reward = models.load_reward(reward_spec, device, dtype)
            models.check_same_tokenizer(tokenizer, reward.tokenizer, policy_spec, reward_spec)
            if reward.table.shape[0] < len(tokenizer):
                raise VgfError(f"llm.reward '{reward_spec}' embeds {reward.table.shape[0]} tokens, fewer than the "
                               f"policy's tokenizer has ({len(tokenizer)})")
            judge_name = judge_spec(cfg, reward_spec)
            judge = judge_fn(judge_name, device, dtype)
        stop, adaptive = {}, [b for b in budgets if isinstance(b, str)]
        if adaptive:
            threshold = calibration_threshold(inputs, reward, adaptive)
            stop = {name: StopRule.named(name, threshold if reads_disagreement(name) else float("inf"), e.stop_gain)
                    for name in adaptive}
        steps = [b for b in budgets if isinstance(b, int)]
        ctx = LmRowsContext(policy, tokenizer, reward, judge, TransportSettings(e.alpha, e.lr, e.step_rule,
                            e.bandwidth_grad), e.particles, e.max_new_tokens, e.temperature, e.top_k, spec.decode,
                            spec.decode_k, stop, e.budget_max if e.budget_max is not None else max(steps, default=3),
                            device, room_for_prompts(policy, reward, e.max_new_tokens),
                            allowed_tokens(tokenizer, reward.table.shape[0], device), e.matched_best_of_n)
        split = "val_prompts" if e.split == "val" else "prompts"
        records = load_jsonl(inputs.upstream["prompts"].output_paths()[split])
        records = records[:e.prompts] if e.prompts else records
        prompts = [r["prompt"] for r in records]
        # the dataset's own response to judge against: the preferred one of a pair, else the reference
        preferred = [r.get("chosen", r.get("reference")) for r in records]
        outcomes: list[dict] = []
        start = time.perf_counter()
        with ui.progress("evaluate (lm)", len(prompts), unit="prompts") as bar:
            for index, prompt in enumerate(prompts):
                generator = torch.Generator(device=device).manual_seed(seeds.prompt_seed(cfg.seed, index))
                extra = torch.Generator(device=device).manual_seed(seeds.matched_seed(cfg.seed, index))
                outcomes.append(evaluate_prompt(ctx, prompt, budgets, generator, extra, preferred[index]))
                bar.advance(1)
        rows = summarize_rows(outcomes, e.particles)
        results = {"rows": rows, "prompts": len(prompts), "split": e.split, "particles": e.particles, "decode": spec.decode,
                   "judge": judge_name, "judge_is_gold_rule": spec.judge is None, "policy": spec.policy or "sft (pretrain-policy run)",
                   "reward_model": spec.reward or "train-reward run", "device": str(device),
                   "dtype": str(dtype).removeprefix("torch."), "seconds": round(time.perf_counter() - start, 1),
                   "per_prompt": {name: {m: [o[name].get(m) for o in outcomes] for m in MEASURES}
                                  for name in outcomes[0]}}
        write_json_atomic(run.staging / "results.json", results)
        samples = run.staging / "samples.jsonl"
        write_bytes_atomic(samples, "".join(json.dumps({"prompt": p, **{n: o[n]["text"] for n in o}}, ensure_ascii=False)
                                            + "\n" for p, o in zip(prompts, outcomes)).encode("utf-8"))
        plot = run.staging / "reward_vs_budget.png"
        plots.plot_lm_rows(rows, plot, f"VGF on {len(prompts)} prompts, N={e.particles} ({spec.decode} decoding)")
        best = max((r for r in rows if r["row"] != "reference"), key=lambda r: r["reward"])
        metrics = {f"{m}/{r['row'].replace('=', '')}": r[m] for r in rows for m in ("reward", "win", "judge_win", "loglik", "changed")
                   if r.get(m) is not None}
        metrics |= {"best_reward": best["reward"], "reference_reward": rows[0]["reward"]}
        summary = {k: v for k, v in results.items() if k not in ("per_prompt", "rows")} | {"rows": rows}
        return StageResult(outputs={"results": run.staging / "results.json", "samples": samples, "plot": plot},
                           metrics=metrics, summary=summary)

    def render(self, outcome: Outcome):
        from vgfcli.llm.report import rows_table

        return rows_table(outcome.summary)


def judge_spec(cfg, reward_spec: str | None = None) -> str:
    """``llm.judge`` as the evaluation reads it: named, or (null) the demo corpus's gold rule, which only
    the demo may use; never the reward model the transport climbs (``reward_spec``: its folder, where
    known). Exit 2 with the reason otherwise."""
    spec, own = cfg.llm.judge, [k for k in ("policy", "reward") if cfg.llm[k]]
    if cfg.prompts.source != "demo":
        own.append("prompts")
    if spec is None:
        if own:
            raise VgfError(f"llm.judge must be named with {' and '.join('llm.' + k if k != 'prompts' else 'prompts of your own' for k in own)}"
                           ": a held-out reward model (folder or hub id, not llm.reward) or rule:NAME; the demo's "
                           "gold rule judges the demo corpus only")
        return f"rule:{cfg.prompts.demo_rule}"
    for reward in (cfg.llm.reward, reward_spec):
        if reward and not spec.startswith("rule:") and _same_model(spec, reward):
            raise VgfError(f"llm.judge '{spec}' is the reward model (llm.reward): judging with the reward the "
                           "transport climbs flatters every row; name a held-out judge")
    return spec


def _same_model(a: str, b: str) -> bool:
    from pathlib import Path

    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.strip().rstrip("/") == b.strip().rstrip("/")


def judge_fn(spec: str | None, device, dtype):
    """The held-out judge as ``(prompts, responses) -> [B] scores``: a reward model, or ``rule:NAME``."""
    if spec is None:
        return None
    if spec.startswith("rule:"):
        import torch

        from vgfcli.llm.corpus import RULES

        rule = RULES.get(spec.removeprefix("rule:"))
        if rule is None:
            raise VgfError(f"llm.judge '{spec}': no such rule (choose from: {', '.join('rule:' + r for r in RULES)})")
        return lambda prompts, responses: torch.tensor([rule(r) for r in responses], dtype=torch.float64)
    from vgfcli.llm.models import load_judge

    return load_judge(spec, device, dtype)


def calibration_threshold(inputs: Inputs, reward, adaptive: list[str]) -> float:
    """Rule a's threshold from the train-reward run's calibration; adaptive rows need >= 2 members."""
    from vgfcli.nn.adaptive import reads_disagreement

    if reward.members < 2:
        raise VgfError(f"adaptive budgets ({', '.join(adaptive)}) read the spread of the reward model's members: "
                       f"this one has {reward.members} output (train-reward with reward.members=2 or more)")
    if not any(reads_disagreement(a) for a in adaptive):
        return float("inf")
    record = inputs.upstream.get("reward")
    paths = record.output_paths() if record is not None else None
    if not paths or "calibration.json" not in paths:
        raise VgfError("auto and auto_std need the reward model's calibration (a train-reward run's "
                       "calibration.json); with llm.reward=FOLDER use auto_gain")
    return float(json.loads(paths["calibration.json"].read_text())["threshold"])


def best_of(name: str, particles: int) -> int | None:
    """n for a best-of-n row (``L=0``: N, ``best-of-n``), 1 for the reference sample, else None."""
    if name == "reference":
        return 1
    if name == "L=0":
        return particles
    return int(name.removeprefix("best-of-")) if name.startswith("best-of-") else None


def summarize_rows(outcomes: list[dict], particles: int = 1) -> list[dict]:
    """Each row's mean and 95 % interval over prompts of every measure (``stats.episode_interval``); win
    rates (1, 0, or 0.5 for a tie) take the Wilson interval of their sum, which stays in [0, 1]."""
    import math

    import numpy as np

    from vgfcli.stats import episode_interval, wilson

    rows = []
    for name in outcomes[0]:
        row = {"row": name, "budget": None if name == "reference" else name.removeprefix("L=")}
        if "as_budget" in outcomes[0][name]:  # a compute-matched best-of-n: the L whose reward passes it spends
            row["as_budget"] = outcomes[0][name]["as_budget"]
        n = best_of(name, particles)
        if n is not None:  # best-of-n's KL to the reference, analytically (Beirami et al., 2024's bound)
            row["kl_best_of_n"] = math.log(n) - (n - 1) / n
        for m in MEASURES:
            values = [o[name].get(m) for o in outcomes]
            if any(v is None for v in values):
                continue
            x = np.asarray(values, dtype=np.float64)
            row[m] = float(x.mean())
            row[f"{m}_ci"] = list(wilson(float(x.sum()), x.size) if m in WIN_RATES else episode_interval(x, binary=False))
        rows.append(row)
    return rows


STAGE = EvaluateLmStage()
