"""`vgf evaluate`: the policy in the real environment, one score per test-time setting.

The method decides the rows (``Agent.eval_settings``): VGF one per test-time budget L (N reference
particles moved L steps along the value gradient, the best executed), QGF one per guidance weight w,
FQL and QAM their policy (best-of-N by Q with ``--particles N``). A reference row (the cloned
behaviour policy alone: one flow sample, no critic) always comes first, so the table shows what the
value gradient adds. Scores are OGBench success rates, or D4RL-normalised returns where reference
returns are known. Action chunks (H > 1) run open loop.

VGF's budgets may also be adaptive (``auto``, ``auto_std``, ``auto_gain``: ``vgfcli.nn.adaptive``), one
row each, drawn on the budget plot at their mean steps per state.

Every row also says what it cost: actions per second of policy time and network passes per action
(critic forward + backward, A-VGF's field forwards; ``ComputeCounter``), with the mean and histogram
of transport steps per state where the method transports.

Outputs: ``results.json`` (every row with its per-episode outcomes, the inputs of ``vgf report``'s
intervals), ``score_vs_budget.png`` and ``score_vs_compute.png`` (the test-time scaling chart); each
row carries its 95 % interval over episodes.
"""

from __future__ import annotations

import functools
import json

from vgfcli import agents
from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult


class EvaluateStage(Stage):
    name = "evaluate"
    config_name = "train"
    # 4: compute per action on every row; 5: adaptive rows skip the backward of rejected steps;
    # 6: adaptive rows run the critic in fp32 (rules and choice); 7: value checks (calibration, val TD);
    # 8: each row acts with a random stream of its own (rows in parallel processes give the same numbers);
    # 9: compile=auto counted, not timed (the choice in results.json); compiled acting's batch dimension dynamic
    code_version = 9
    main_metrics = ("best_score", "reference_score")
    needs = ("policy", "critic", "val_dataset")

    def in_pipeline(self, cfg) -> bool:
        return True

    def needed(self, cfg) -> tuple[str, ...]:
        # The critic's digest already covers the dataset and the policy it was trained from; the val
        # split is for the critic's TD loss on data it never trained on, so a method without one reads
        # the policy alone.
        return self.needs if agents.trains(cfg) else ("policy",)

    def accepts(self, cfg, hit: Outcome) -> bool:
        """A cached evaluation has the same scores whatever ``--video`` says, but not the videos asked for."""
        return int(cfg.evaluate.video) <= int(hit.summary.get("videos_per_row", 0))

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        # A trained method's config is in its critic's digest; one with nothing to train is keyed here.
        method = {"name": cfg.method.name} if "critic" in inputs.upstream else to_dict(cfg.method)
        return {"evaluate": agents.evaluate_key(cfg.evaluate, agents.method_module(cfg).Agent), "method": method,
                "seed": cfg.seed}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from vgfcli import eval_rows, plots, seeds
        from vgfcli.cache import write_bytes_atomic
        from vgfcli.eval_rows import RowJob, auto_workers, compile_setting, compute_columns, run_rows, score_row
        from vgfcli.methods.base import EvalSetting
        from vgfcli.protocols import task_label
        from vgfcli.rollout import release_envs
        from vgfcli.training import resolve_device
        from vgfcli.value_checks import calibration, reward_map, validation_loss, value_q_fn
        from vgfcli.video import write_mp4

        e = cfg.evaluate
        device = resolve_device(cfg.device)
        preset = cfg.choices.get("preset")
        task = task_label(cfg)  # a D4RL/Minari run is filed under its own dataset, not the default task
        run.set_tags({"vgf.device": str(device), "vgf.method": cfg.method.name, "vgf.task": task,
                      "vgf.preset": str(preset), "vgf.seed": str(cfg.seed)})
        compile_choice = compile_setting(e.compile)
        agent, saved = agents.load_agent(cfg, inputs.upstream, device, compile=compile_choice is True)
        env_id = agents.evaluation_env(cfg, saved["dataset_attrs"])
        try:
            settings = agent.eval_settings(e)
        except ValueError as exc:  # a sweep value the method refuses (a negative budget, say)
            raise VgfError(f"evaluate: {exc}") from None
        sweep_keys = sorted({k for st in settings for k in st.sweep})
        reference = EvalSetting("reference", "reference", 1, {}, {k: 0 for k in sweep_keys})
        results, outcomes, value_pairs, videos = [], [], [], {}
        q_fn = value_q_fn(agent, device)
        rewards_fn = reward_map(inputs.upstream["critic"].summary) if "critic" in inputs.upstream else None
        discount = float(agent.cfg.discount)
        render_seconds = 0.0
        rows = [reference, *settings]
        workers = auto_workers(e.workers, len(rows), e.episodes, device, rendered=agent.pixels)
        limit = eval_rows.episode_limit(env_id, e.max_episode_steps)
        helpers = eval_rows.auto_env_workers(e.env_workers, workers, eval_rows.lockstep_batch(e),
                                             len(rows) * e.episodes * limit, bool(e.video))
        jobs = [RowJob(setting, setting is reference, env_id, e.episodes, e.num_envs, cfg.seed, e.max_episode_steps,
                       int(e.video), e.video_size, q_fn is not None, frame_stack=int(saved.get("frame_stack", 1)),
                       env_processes=helpers)
                for setting in rows]
        threads = max(1, torch.get_num_threads() // workers)
        run.set_tags({"vgf.eval_workers": str(workers), "vgf.env_workers": str(helpers)})
        with ui.status("evaluate.compile: counting what acting does"):  # auto: compile where the calls repay it
            choice = eval_rows.resolve_compile(agent, settings, e, env_id, compile_choice)
        run.set_tags({"vgf.acting": "compiled" if choice["compile"] else "eager"})
        own_threads = torch.get_num_threads()
        if workers == 1 and helpers:  # the env helpers' cores are theirs: acting keeps the rest
            torch.set_num_threads(max(1, own_threads - helpers))
        try:
            with ui.progress("evaluate", e.episodes * len(rows), unit="episodes") as bar:
                scored = run_rows(agent, jobs, workers=workers, threads=threads, advance=bar.advance,
                                  make_agent=functools.partial(agents.acting_agent, cfg, inputs.upstream, str(device),
                                                               compile=bool(choice["compile"])))
        finally:
            torch.set_num_threads(own_threads)
        for setting, (result, counter) in zip(rows, scored):
            row, episodes = score_row(setting, result, saved["dataset_attrs"], env_id)
            row |= compute_columns(result, counter)
            if q_fn is not None:
                row["value_check"], pairs = calibration(q_fn, result.trace, discount, rewards_fn)
                value_pairs.append(pairs)
            for i, frames in sorted((result.frames or {}).items()):
                path = run.staging / "videos" / f"{setting.key}_episode{i}.mp4"
                path.parent.mkdir(exist_ok=True)
                write_mp4(frames, path, e.video_fps)
                videos[f"video_{setting.key}_{i}"] = path
            render_seconds += result.render_seconds
            results.append(row)
            outcomes.append(episodes)
        release_envs()  # the pooled env copies served every row of this evaluation
        val_loss = None
        if "val_dataset" in inputs.upstream and e.value_batches > 0:
            with ui.status("critic loss on the validation split"):
                val_loss = validation_loss(agent, inputs.upstream["val_dataset"].output_paths()["dataset"],
                                           chunk=agent.chunk, discount=discount, rewards_fn=rewards_fn,
                                           batches=e.value_batches, batch_size=cfg.critic.batch_size,
                                           seed=cfg.seed + seeds.VALUE_CHECK, device=device,
                                           frame_stack=saved.get("frame_stack"))
        metric_name = results[0]["metric"]
        metrics = {f"{r['metric']}/{r['key']}": r["score"] for r in results}
        metrics |= {f"return_mean/{r['key']}": r["return_mean"] for r in results}
        metrics |= {f"actions_per_s/{r['key']}": r["actions_per_s"] for r in results}
        metrics |= {f"critic_evals_per_action/{r['key']}": r["compute"]["critic_evals"] for r in results}
        metrics |= {f"steps_mean/{r['key']}": r["compute"]["steps_mean"] for r in results if "steps_mean" in r["compute"]}
        for r in results:
            for name, value in r.get("value_check", {}).items():
                if name != "decisions":
                    metrics[f"value_{name}/{r['key']}"] = value
        if val_loss is not None:
            metrics["val_critic_loss"] = val_loss
        best = max(results[1:] or results, key=lambda r: r["score"])
        metrics |= {"best_score": best["score"], "reference_score": results[0]["score"]}
        plot = run.staging / "score_vs_budget.png"
        title = f"{cfg.method.name} on {env_id} (H = {agent.chunk})"
        plots.plot_scores(results, sweep_keys, plot, title, metric_name)
        compute_plot = run.staging / "score_vs_compute.png"
        plots.plot_score_vs_compute(results, compute_plot, title, metric_name)
        figures = {"plot": plot, "compute_plot": compute_plot}
        if q_fn is not None:
            figures["value_plot"] = run.staging / "value_calibration.png"
            plots.plot_calibration(results, value_pairs, figures["value_plot"],
                                   f"{title}: Q against the return that followed")
        summary = {"env_id": env_id, "method": cfg.method.name, "metric": metric_name, "results": results,
                   "best": best["label"], "chunk": agent.chunk, "sweep": sweep_keys, "task": task,
                   "seed": cfg.seed, "preset": preset, "videos_per_row": min(int(e.video), int(e.episodes)),
                   **({"val_critic_loss": val_loss} if val_loss is not None else {})}
        if e.video:  # what recording cost, apart from the scores' own time
            summary["render_s"] = round(render_seconds, 1)
        if agent.compile_seconds:  # one-off torch.compile cost (evaluate.compile)
            summary["compile_s"] = round(agent.compile_seconds, 1)
        summary["compile_choice"] = choice  # which acting path ran, and why (a pure function of the inputs)
        results_json = run.staging / "results.json"
        # The file is the same bytes for the same inputs: timings stay in the summary and MLflow.
        full = {**{k: v for k, v in summary.items() if k not in ("compile_s", "render_s", "videos_per_row")},
                "results": [{k: v for k, v in r.items() if k != "actions_per_s"} | {"outcomes": o}
                            for r, o in zip(results, outcomes)]}
        write_bytes_atomic(results_json, json.dumps(full, indent=1).encode())
        return StageResult(outputs={**figures, "results": results_json, **videos}, metrics=metrics, summary=summary)

    def render(self, outcome: Outcome):
        from rich.table import Table

        s = outcome.summary
        table = Table(title=f"evaluate: {s['method']} on {s['env_id']} ({s['metric']})", title_justify="left")
        sweep = s.get("sweep", [])
        steps = any("steps_mean" in r.get("compute", {}) for r in s["results"])
        values = any("value_check" in r for r in s["results"])
        captions = [f"critic loss on the validation split: {s['val_critic_loss']:.4g}"] if "val_critic_loss" in s else []
        choice = s.get("compile_choice") or {}
        if "estimated_compile_s" in choice:  # evaluate.compile=auto: what it chose and why
            captions.append(f"acting {'compiled' if choice['compile'] else 'eager'} (evaluate.compile=auto: "
                            f"~{choice['estimated_saving_s']:.0f} s saved against ~{choice['estimated_compile_s']:.0f} s "
                            "of compiling)")
        table.caption = "\n".join(captions) or None
        for column in ("policy", *sweep, "particles", "episodes", s["metric"], "95% interval", "return mean",
                       "actions/s", "critic evals/action", *(["steps: mean (per k)"] if steps else []),
                       *(["Q - return (r)"] if values else [])):
            table.add_column(column, justify="right")
        best = max((r["score"] for r in s["results"][1:]), default=None)
        for r in s["results"]:
            fmt = ".3f" if r["metric"] == "success" else ".1f"
            score = f"{r['score']:{fmt}}"
            if r["label"] != "reference" and r["score"] == best:
                score = f"[bold green]{score}[/]"
            lo, hi = r.get("interval", (float("nan"), float("nan")))
            cost = r.get("compute", {})
            mean_steps = [_steps_text(cost) if "steps_mean" in cost else "-"] if steps else []
            check = r.get("value_check") or {}
            value = [f"{check['bias']:+.2f} ({check['corr']:.2f})" if check else "-"] if values else []
            table.add_row(r["label"], *(f"{r['sweep'].get(k, '-')}" for k in sweep), str(r["particles"]),
                          str(r["episodes"]), score, f"[{lo:{fmt}}, {hi:{fmt}}]", f"{r['return_mean']:.2f}",
                          f"{r.get('actions_per_s', float('nan')):.0f}", f"{cost.get('critic_evals', 0.0):.1f}",
                          *mean_steps, *value)
        return table

    def to_json(self, outcome: Outcome) -> dict:
        out = outcome.to_json()
        out["results"] = [
            {**r["sweep"], "particles": r["particles"], "episodes": r["episodes"], r["metric"]: r["score"],
             "interval": r.get("interval"), "return_mean": r["return_mean"], "reference": r["label"] == "reference",
             "label": r["label"], "actions_per_s": r.get("actions_per_s"), "compute": r.get("compute"),
             "value_check": r.get("value_check")}
            for r in outcome.summary["results"]
        ]
        out["plot"] = str(outcome.outputs["plot"])
        out["compute_plot"] = str(outcome.outputs["compute_plot"]) if "compute_plot" in outcome.outputs else None
        out["results_file"] = str(outcome.outputs["results"]) if "results" in outcome.outputs else None
        out["videos"] = sorted(str(p) for name, p in outcome.outputs.items() if name.startswith("video_"))
        return out


def _steps_text(cost: dict) -> str:
    """Mean steps per state and, for a row whose states took different numbers of steps, the share of
    states that took 0, 1, 2, ... steps: ``0.69 (55/6/2/36 %)``."""
    hist = cost.get("steps_hist") or []
    if sum(c > 0 for c in hist) <= 1:
        return f"{cost['steps_mean']:.2f}"
    total = sum(hist)
    return f"{cost['steps_mean']:.2f} ({'/'.join(f'{100 * c / total:.0f}' for c in hist)} %)"


STAGE = EvaluateStage()
