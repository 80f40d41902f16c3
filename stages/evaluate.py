"""`vgf evaluate --budget 0,1,2,3`: the policy in the real environment, one score per test-time budget.

Each budget L runs ``evaluate.episodes`` episodes with N reference particles moved L steps along the
critic's value gradient and the best particle executed. A reference row (L = 0, N = 1: the cloned
behaviour policy alone) always comes first, so the table shows what the value gradient adds. Scores
are OGBench success rates, or D4RL-normalised returns where reference returns are known.
"""

from __future__ import annotations

from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult


class EvaluateStage(Stage):
    name = "evaluate"
    config_name = "train"
    code_version = 1
    main_metrics = ("best_score", "reference_score")

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        if not cfg.evaluate.budgets:
            raise VgfError("evaluate.budgets is empty: give at least one budget (--budget 0,1,2,3)")
        if min(cfg.evaluate.budgets) < 0:
            raise VgfError(f"budgets must be >= 0, got {list(cfg.evaluate.budgets)}")
        # The critic's digest already covers the dataset and the policy it was trained from.
        return Inputs(upstream={"policy": upstream.record("policy"), "critic": upstream.record("critic")})

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        return {"evaluate": to_dict(cfg.evaluate), "seed": cfg.seed}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from stages.pretrain_policy import load_policy
        from stages.train_critic import check_compatible
        from vgfcli import methods
        from vgfcli.rollout import evaluate_policy
        from vgfcli.training import resolve_device

        e = cfg.evaluate
        device = resolve_device(cfg.device)
        run.set_tags({"vgf.device": str(device), "vgf.method": cfg.method.name})
        flow, saved_policy = load_policy(inputs.upstream["policy"].output_paths()["policy"], device)
        critic_path = inputs.upstream["critic"].output_paths()["critic"]
        saved = torch.load(critic_path, map_location="cpu", weights_only=False)
        check_compatible(saved, saved_policy["obs_dim"], saved_policy["act_dim"], saved_policy["dataset_digest"],
                         str(critic_path))
        module = methods.load(saved["method"])
        agent = module.Agent.create(saved["config"], saved["obs_dim"], saved["act_dim"], device, reference=flow)
        agent.load_state_dict(saved["agent"])
        env_id = evaluation_env(cfg, saved["dataset_attrs"])
        particles = agent.cfg.num_particles
        rows = [("reference", 0, 1)] + [(f"L={b}", int(b), particles) for b in e.budgets]
        results = []
        with ui.progress("evaluate", e.episodes * len(rows), unit="episodes") as bar:
            for label, budget, n in rows:
                def policy(obs, budget=budget, n=n):
                    with torch.inference_mode():
                        return agent.act(torch.as_tensor(obs, device=device), steps=budget, num_particles=n).cpu().numpy()

                done = 0

                def progress(finished: int) -> None:
                    nonlocal done
                    bar.advance(finished - done)
                    done = finished

                result = evaluate_policy(env_id, policy, episodes=e.episodes, num_envs=e.num_envs, seed=cfg.seed,
                                         max_episode_steps=e.max_episode_steps, progress=progress)
                results.append(score_row(label, budget, n, result, saved["dataset_attrs"], env_id))
        metric_name = results[0]["metric"]
        metrics = {f"{r['metric']}/{r['key']}": r["score"] for r in results}
        metrics |= {f"return_mean/{r['key']}": r["return_mean"] for r in results}
        best = max(results[1:], key=lambda r: r["score"])
        metrics |= {"best_score": best["score"], "reference_score": results[0]["score"]}
        plot = run.staging / "score_vs_budget.png"
        plot_scores(results, plot, f"{cfg.method.name} on {env_id}", metric_name)
        summary = {"env_id": env_id, "method": cfg.method.name, "metric": metric_name, "results": results,
                   "best_budget": best["budget"]}
        return StageResult(outputs={"plot": plot}, metrics=metrics, summary=summary)

    def render(self, outcome: Outcome):
        from rich.table import Table

        s = outcome.summary
        table = Table(title=f"evaluate: {s['method']} on {s['env_id']} ({s['metric']})", title_justify="left")
        for column in ("policy", "budget", "particles", "episodes", s["metric"], "return mean"):
            table.add_column(column, justify="right")
        best = max(r["score"] for r in s["results"][1:])
        for r in s["results"]:
            score = f"{r['score']:.3f}" if r["metric"] == "success" else f"{r['score']:.1f}"
            if r["label"] != "reference" and r["score"] == best:
                score = f"[bold green]{score}[/]"
            table.add_row(r["label"], str(r["budget"]), str(r["particles"]), str(r["episodes"]), score,
                          f"{r['return_mean']:.2f}")
        return table

    def to_json(self, outcome: Outcome) -> dict:
        out = outcome.to_json()
        out["results"] = [
            {"budget": r["budget"], "particles": r["particles"], "episodes": r["episodes"], r["metric"]: r["score"],
             "return_mean": r["return_mean"], "reference": r["label"] == "reference"}
            for r in outcome.summary["results"]
        ]
        out["plot"] = str(outcome.outputs["plot"])
        return out


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


def score_row(label: str, budget: int, particles: int, result, dataset_attrs: dict, env_id: str) -> dict:
    from vgfcli.scores import normalized_score

    key = "reference" if label == "reference" else f"budget_{budget}"  # MLflow metric names take no '='
    row = {"label": label, "key": key, "budget": budget, "particles": particles, "episodes": result.episodes,
           "return_mean": float(result.return_mean)}
    if result.success_rate is not None:
        return row | {"metric": "success", "score": float(result.success_rate)}
    normalized = normalized_score(str(dataset_attrs.get("env_id", env_id)), result.returns)
    if normalized is not None:
        return row | {"metric": "normalized_score", "score": float(normalized.mean())}
    return row | {"metric": "return", "score": float(result.return_mean)}


def plot_scores(results: list[dict], path, title: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [r["budget"] for r in results[1:]]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(budgets, [r["score"] for r in results[1:]], marker="o", label=f"N = {results[1]['particles']} particles")
    ax.axhline(results[0]["score"], color="grey", linestyle="--", label="reference policy (N = 1, L = 0)")
    ax.set_xlabel("test-time budget L (transport steps)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_xticks(budgets)
    if metric == "success":
        ax.set_ylim(-0.02, 1.02)  # rates: keep the scale honest when all scores are close
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


STAGE = EvaluateStage()
