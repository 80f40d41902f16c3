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

import numpy as np

from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult


class EvaluateStage(Stage):
    name = "evaluate"
    config_name = "train"
    # 4: compute per action on every row; 5: adaptive rows skip the backward of rejected steps;
    # 6: adaptive rows run the critic in fp32 (rules and choice); 7: value checks (calibration, val TD);
    # 8: each row acts with a random stream of its own (rows in parallel processes give the same numbers)
    code_version = 8
    main_metrics = ("best_score", "reference_score")

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        from vgfcli.stages.train_critic import checked_method

        if cfg.evaluate.particles is not None and cfg.evaluate.particles < 1:
            raise VgfError(f"evaluate.particles must be at least 1, got {cfg.evaluate.particles}")
        records = {"policy": upstream.record("policy")}
        if checked_method(cfg).Agent.trains:
            # The critic's digest already covers the dataset and the policy it was trained from.
            records["critic"] = upstream.record("critic")
            val = upstream.record("val_dataset")  # the critic's TD loss on data it never trained on
            if val is not None:
                records["val_dataset"] = val
        return Inputs(upstream=records)

    def accepts(self, cfg, hit: Outcome) -> bool:
        """A cached evaluation has the same scores whatever ``--video`` says, but not the videos asked for."""
        return int(cfg.evaluate.video) <= int(hit.summary.get("videos_per_row", 0))

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.stages.train_critic import checked_method

        from vgfcli.config import to_dict

        # A trained method's config is in its critic's digest; one with nothing to train is keyed here.
        method = {"name": cfg.method.name} if "critic" in inputs.upstream else to_dict(cfg.method)
        return {"evaluate": evaluate_key(cfg.evaluate, checked_method(cfg).Agent), "method": method,
                "seed": cfg.seed}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from vgfcli.cache import write_bytes_atomic
        from vgfcli.eval_rows import RowJob, auto_workers, run_rows
        from vgfcli.methods.base import EvalSetting
        from vgfcli.protocols import task_label
        from vgfcli.rollout import release_envs
        from vgfcli.training import resolve_device
        from vgfcli.value_checks import calibration, plot_calibration, reward_map, validation_loss
        from vgfcli.video import write_mp4

        e = cfg.evaluate
        device = resolve_device(cfg.device)
        preset = cfg.choices.get("preset")
        task = task_label(cfg)  # a D4RL/Minari run is filed under its own dataset, not the default task
        run.set_tags({"vgf.device": str(device), "vgf.method": cfg.method.name, "vgf.task": task,
                      "vgf.preset": str(preset), "vgf.seed": str(cfg.seed)})
        agent, saved = load_agent(cfg, inputs, device)
        env_id = evaluation_env(cfg, saved["dataset_attrs"])
        try:
            settings = agent.eval_settings(e)
        except ValueError as exc:  # a sweep value the method refuses (a negative budget, say)
            raise VgfError(f"evaluate: {exc}") from None
        sweep_keys = sorted({k for st in settings for k in st.sweep})
        reference = EvalSetting("reference", "reference", 1, {}, {k: 0 for k in sweep_keys})
        results, outcomes, value_pairs, videos = [], [], [], {}
        q_fn = value_q_fn(agent, device)
        rewards_fn = reward_map(inputs.upstream["critic"].summary) if "critic" in inputs.upstream else None
        discount = float(getattr(agent.cfg, "discount", 0.99))
        render_seconds = 0.0
        rows = [reference, *settings]
        jobs = [RowJob(setting, setting is reference, env_id, e.episodes, e.num_envs, cfg.seed, e.max_episode_steps,
                       int(e.video), e.video_size, q_fn is not None) for setting in rows]
        workers = auto_workers(e.workers, len(jobs), e.episodes, device)
        threads = max(1, torch.get_num_threads() // workers)
        run.set_tags({"vgf.eval_workers": str(workers)})
        with ui.progress("evaluate", e.episodes * len(rows), unit="episodes") as bar:
            scored = run_rows(agent, jobs, workers=workers, threads=threads, advance=bar.advance,
                              make_agent=functools.partial(acting_agent, cfg, inputs, str(device)))
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
                                           seed=cfg.seed + 9_000_011, device=device)
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
        plot_scores(results, sweep_keys, plot, title, metric_name)
        compute_plot = run.staging / "score_vs_compute.png"
        plot_score_vs_compute(results, compute_plot, title, metric_name)
        plots = {"plot": plot, "compute_plot": compute_plot}
        if q_fn is not None:
            plots["value_plot"] = run.staging / "value_calibration.png"
            plot_calibration(results, value_pairs, plots["value_plot"], f"{title}: Q against the return that followed")
        summary = {"env_id": env_id, "method": cfg.method.name, "metric": metric_name, "results": results,
                   "best": best["label"], "chunk": agent.chunk, "sweep": sweep_keys, "task": task,
                   "seed": cfg.seed, "preset": preset, "videos_per_row": min(int(e.video), int(e.episodes)),
                   **({"val_critic_loss": val_loss} if val_loss is not None else {})}
        if e.video:  # what recording cost, apart from the scores' own time
            summary["render_s"] = round(render_seconds, 1)
        if getattr(agent, "compile_seconds", 0):  # one-off torch.compile cost (evaluate.compile)
            summary["compile_s"] = round(agent.compile_seconds, 1)
        results_json = run.staging / "results.json"
        # The file is the same bytes for the same inputs: timings stay in the summary and MLflow.
        full = {**{k: v for k, v in summary.items() if k not in ("compile_s", "render_s", "videos_per_row")},
                "results": [{k: v for k, v in r.items() if k != "actions_per_s"} | {"outcomes": o}
                            for r, o in zip(results, outcomes)]}
        write_bytes_atomic(results_json, json.dumps(full, indent=1).encode())
        return StageResult(outputs={**plots, "results": results_json, **videos}, metrics=metrics, summary=summary)

    def render(self, outcome: Outcome):
        from rich.table import Table

        s = outcome.summary
        table = Table(title=f"evaluate: {s['method']} on {s['env_id']} ({s['metric']})", title_justify="left")
        sweep = s.get("sweep", [])
        steps = any("steps_mean" in r.get("compute", {}) for r in s["results"])
        values = any("value_check" in r for r in s["results"])
        if "val_critic_loss" in s:
            table.caption = f"critic loss on the validation split: {s['val_critic_loss']:.4g}"
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


# evaluate.* keys that only some methods read (Agent.eval_knobs says which).
METHOD_KNOBS = ("particles", "budgets", "budget_max", "stop_quantile", "stop_gain", "guidance")


# evaluate.* keys that change no score: videos are extra artifacts of the same evaluation.
VIDEO_KEYS = ("video", "video_size", "video_fps")
SPEED_KEYS = ("workers",)  # how the rows are spread over processes: the same numbers either way


def evaluate_key(evaluate_cfg, agent_class) -> dict:
    """The evaluate section as the cache key sees it: without the knobs this method ignores, the
    video settings and the worker count."""
    from vgfcli.config import to_dict

    return {k: v for k, v in to_dict(evaluate_cfg).items()
            if (k not in METHOD_KNOBS or k in agent_class.eval_knobs) and k not in VIDEO_KEYS + SPEED_KEYS}


def value_q_fn(agent, device):
    """``(obs, actions) -> Q`` in numpy for the value checks, batched; None for a method without a critic."""
    import torch

    if getattr(agent, "critic", None) is None:
        return None

    def q_fn(obs, actions):
        out = []
        for start in range(0, len(obs), 4096):
            o = torch.as_tensor(obs[start:start + 4096], dtype=torch.float32, device=device)
            a = torch.as_tensor(actions[start:start + 4096], dtype=torch.float32, device=device)
            out.append(agent.q_values(o, a).cpu().numpy())
        return np.concatenate(out)

    return q_fn


def ignored_knobs(cfg, given: dict[str, bool]) -> list[str]:
    """Warnings for the sweep flags (``--budget``, ``--guidance``, ``--particles``) given to a method
    that does not read them."""
    from vgfcli.stages.train_critic import checked_method

    knobs = checked_method(cfg).Agent.eval_knobs
    return [f"{flag} is ignored by method {cfg.method.name} (it reads {', '.join(knobs) or 'no evaluate knobs'})"
            for flag, key in (("--budget", "budgets"), ("--guidance", "guidance"), ("--particles", "particles"))
            if given.get(flag) and key not in knobs]


def load_agent(cfg, inputs: Inputs, device, fp32_eager: bool = False, compile: bool | None = None):
    """The agent to evaluate and the facts saved with what it was built from: the trained critic run's
    agent, or (for a method with nothing to train) the method built around the reference policy.
    ``fp32_eager``: no torch.compile and no reduced precision, whatever the method's config says
    (``vgf export`` traces this agent). ``compile``: torch.compile where the method can (None =
    ``evaluate.compile``; ``vgf finetune`` trains, so it passes ``critic.compile``)."""
    import torch
    from vgfcli.stages.pretrain_policy import load_policy
    from vgfcli.stages.train_critic import build_method_config, check_compatible

    from vgfcli import methods

    flow, saved_policy = load_policy(inputs.upstream["policy"].output_paths()["policy"], device)
    if "critic" not in inputs.upstream:
        module, method_cfg = build_method_config(cfg, saved_policy)
        agent = module.Agent.create(method_cfg, saved_policy["obs_dim"], saved_policy["act_dim"], device,
                                    reference=flow, chunk=saved_policy["chunk"])
        return agent, saved_policy
    critic_path = inputs.upstream["critic"].output_paths()["critic"]
    saved = torch.load(critic_path, map_location="cpu", weights_only=False)
    check_compatible(saved, saved_policy["obs_dim"], saved_policy["act_dim"], saved_policy["dataset_digest"],
                     str(critic_path))
    module = methods.load(saved["method"])
    # acting is compiled by evaluate's own switch, whatever the training run chose
    if compile is None:
        compile = bool(cfg.evaluate.get("compile", False))
    speed = {"compile": bool(compile)} if "compile" in saved["config"] else {}
    if fp32_eager:
        speed = {k: v for k, v in (("compile", False), ("amp", "off")) if k in saved["config"]}
    agent = module.Agent.create(saved["config"], saved["obs_dim"], saved["act_dim"], device, reference=flow,
                                chunk=saved.get("chunk", 1), **speed)
    agent.load_state_dict(saved["agent"])
    return agent, saved


def acting_agent(cfg, inputs: Inputs, device):
    """``load_agent``'s agent alone: what an evaluation worker process builds for itself."""
    return load_agent(cfg, inputs, device)[0]


def evaluation_env(cfg, dataset_attrs: dict) -> str:
    """OGBench single-task env of the dataset, else data.env_id, else the gymnasium env of a D4RL name."""
    from vgfcli.scores import gym_env_for

    if dataset_attrs.get("source_kind") == "ogbench":
        return dataset_attrs["env_id"]
    env_id = cfg.data.env_id or gym_env_for(str(dataset_attrs.get("env_id", "")))
    if not env_id:
        raise VgfError(f"no evaluation env known for dataset '{dataset_attrs.get('env_id')}'; set data.env_id="
                       "<gymnasium id>")
    return env_id


def score_row(setting, result, dataset_attrs: dict, env_id: str) -> tuple[dict, dict]:
    """The row's score and 95 % interval over its episodes, and its per-episode outcomes."""
    from vgfcli.scores import normalized_score
    from vgfcli.stats import episode_interval

    row = {"label": setting.label, "key": setting.key, "sweep": dict(setting.sweep), "particles": setting.particles,
           "episodes": result.episodes, "return_mean": float(result.return_mean)}
    outcomes = {"return": result.returns.tolist(), "length": result.lengths.tolist()}
    if result.success_rate is not None:
        metric, per_episode = "success", np.asarray(result.successes, dtype=np.float64)
        outcomes["success"] = per_episode.tolist()
    else:
        normalized = normalized_score(str(dataset_attrs.get("env_id", env_id)), result.returns)
        metric, per_episode = ("normalized_score", normalized) if normalized is not None else \
            ("return", np.asarray(result.returns, dtype=np.float64))
    outcomes["score"] = per_episode.tolist()
    lo, hi = episode_interval(per_episode, binary=metric == "success")
    return row | {"metric": metric, "score": float(per_episode.mean()), "interval": [lo, hi]}, outcomes


def compute_columns(result, counter) -> dict:
    """A row's cost: actions per second of policy time (the policy calls alone, env steps excluded)
    and the network passes per action (``ComputeCounter.per_action``)."""
    per_s = result.policy_states / result.policy_seconds if result.policy_seconds > 0 else float("nan")
    return {"actions_per_s": float(per_s), "compute": counter.per_action()}


def _steps_text(cost: dict) -> str:
    """Mean steps per state and, for a row whose states took different numbers of steps, the share of
    states that took 0, 1, 2, ... steps: ``0.69 (55/6/2/36 %)``."""
    hist = cost.get("steps_hist") or []
    if sum(c > 0 for c in hist) <= 1:
        return f"{cost['steps_mean']:.2f}"
    total = sum(hist)
    return f"{cost['steps_mean']:.2f} ({'/'.join(f'{100 * c / total:.0f}' for c in hist)} %)"


def network_passes(row: dict) -> float:
    """Critic forward + backward and gradient-field passes per action: the x of the scaling chart."""
    cost = row.get("compute", {})
    return float(cost.get("critic_evals", 0.0) + cost.get("field_forward", 0.0))


SWEEP_AXES = {"budget": "test-time budget L (transport steps)", "guidance": "guidance weight w"}


def plot_scores(results: list[dict], sweep_keys: list[str], path, title: str, metric: str) -> None:
    """Score against the swept knob (one line), the reference as a dashed line; bars when nothing is swept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgfcli.plot_text import fit_title

    rows = [r for r in results[1:] if len(sweep_keys) != 1 or _is_number(r["sweep"].get(sweep_keys[0]))]
    adaptive = [r for r in results[1:] if r not in rows]  # named budgets: drawn at their mean steps
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    if len(sweep_keys) == 1 and rows:
        key = sweep_keys[0]
        xs = [r["sweep"][key] for r in rows]
        ax.errorbar(xs, [r["score"] for r in rows], yerr=_yerr(rows), marker="o", capsize=3,
                    label=f"N = {rows[0]['particles']} particles (95 % interval over episodes)")
        for r, marker in zip(adaptive, "s^vDP*"):
            ax.errorbar([r["compute"].get("steps_mean", 0.0)], [r["score"]], yerr=_yerr([r]), marker=marker,
                        linestyle="none", capsize=3, label=f"{r['label']} at its mean steps")
        ax.set_xlabel(SWEEP_AXES.get(key, key))
        ax.set_xticks(xs)
        ax.axhline(results[0]["score"], color="grey", linestyle="--", label="reference policy (N = 1)")
        ax.legend(fontsize=8)
    else:
        ax.bar([r["label"] for r in results], [r["score"] for r in results], yerr=_yerr(results), capsize=3,
               color=["grey"] + ["tab:blue"] * len(rows))
    ax.set_ylabel(metric.replace("_", " "))
    if metric == "success":
        ax.set_ylim(-0.02, 1.02)  # rates: keep the scale honest when all scores are close
    fit_title(ax, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_score_vs_compute(results: list[dict], path, title: str, metric: str) -> None:
    """The test-time scaling chart: every row's score (95 % interval) against its network passes per
    action (critic forward + backward, field forwards), each point labelled, the reference at 0. Counts,
    not timings: the chart is the same bytes for the same inputs (actions/s are in the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgfcli.plot_text import fit_title

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    xs = [network_passes(r) for r in results]
    ax.errorbar(xs, [r["score"] for r in results], yerr=_yerr(results), marker="o", linestyle="none", capsize=3)
    for i, (x, r) in enumerate(zip(xs, results)):  # staggered: rows of equal cost share a point
        ax.annotate(r["label"], (x, r["score"]), fontsize=6, textcoords="offset points", xytext=(4, 4 + 7 * (i % 3)))
    ax.set_xlabel("critic (+ field) passes per action")
    ax.set_ylabel(metric.replace("_", " "))
    if metric == "success":
        ax.set_ylim(-0.02, 1.02)
    fit_title(ax, f"{title}: score vs compute")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _yerr(rows: list[dict]) -> list[list[float]]:
    """Asymmetric error bars from each row's interval (never negative: matplotlib refuses them, and
    an interval from another estimator may sit a rounding error off its row's mean)."""
    return [[max(0.0, r["score"] - r["interval"][0]) for r in rows],
            [max(0.0, r["interval"][1] - r["score"]) for r in rows]]


STAGE = EvaluateStage()
