"""The ``vgf`` command line: one Typer command per pipeline stage, plus ``runs``.

Stage commands take trailing Hydra overrides (``vgf ingest dataset=d4rl dataset.path=FILE``) and the
same flags: ``--force`` (recompute even on a cache hit), ``--json`` (one JSON object on stdout) and
``--cfg`` (print the resolved config and exit). Heavy libraries (torch, mlflow, gymnasium) are
imported inside the commands that need them, so ``vgf --help`` and cache hits start fast.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from vgfcli import __version__
from vgfcli.cli_errors import user_errors as _user_errors
from vgfcli.completion import complete_overrides
from vgfcli.errors import VgfError

app = typer.Typer(
    name="vgf",
    help="Behaviour-regularized offline RL with flow policies (Value Gradient Flow and siblings), as cached, "
    "MLflow-tracked pipeline stages.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


OVERRIDES = typer.Argument(None, help="Hydra overrides, key=value (--cfg prints every key this command takes).",
                           show_default=False, autocompletion=complete_overrides)
FORCE = typer.Option(False, "--force", help="Recompute even when a finished run with the same inputs exists.")
JSON = typer.Option(False, "--json", help="Print one JSON object (run id, cache hit, outputs, metrics) on stdout.")
CFG = typer.Option(False, "--cfg", help="Print the resolved config and exit.")
BUDGET = typer.Option(None, "--budget", help="vgf: test-time budgets, comma-separated: steps L, or auto / auto_std / "
                     "auto_gain for an adaptive per-state budget (default: evaluate.budgets).")
GUIDANCE = typer.Option(None, "--guidance", help="qgf: guidance weights w, comma-separated (default: evaluate.guidance).")
PARTICLES = typer.Option(None, "--particles", help="Best-of-N by Q: candidates per state (default: the method's).")
VIDEO = typer.Option(None, "--video", help="Render the first K episodes of every row to mp4 (evaluate.video; not part "
                     "of the scores' cache key).", show_default=False)


def _run_stage(name: str, overrides: list[str] | None, force: bool, json_out: bool, show_cfg: bool,
               flags: dict[str, bool] | None = None) -> None:
    from vgfcli.config import compose, to_yaml
    from vgfcli.graph import command_stage, config_overrides
    from vgfcli.stage import execute, report
    from vgfcli.ui import UI
    from vgfcli.upstream import Upstream

    stage = command_stage(name, overrides)
    cfg = compose(stage.config_name, config_overrides(overrides))
    if show_cfg:
        typer.echo(to_yaml(cfg), nl=False)
        return
    ui = UI(json_mode=json_out)
    _warn_ignored(cfg, flags, ui)
    for message in stage.ignored(cfg):
        ui.warn(message)
    report(stage, execute(stage, cfg, ui, Upstream(cfg, ui), force=force), ui)


def _warn_ignored(cfg, flags: dict[str, bool] | None, ui) -> None:
    if flags and "method" in cfg:  # the RL domain's methods
        from vgfcli.agents import ignored_knobs

        for message in ignored_knobs(cfg, flags):
            ui.warn(message)


def _given(budget, guidance, particles) -> dict[str, bool]:
    return {"--budget": budget is not None, "--guidance": guidance is not None, "--particles": particles is not None}


@app.command()
@_user_errors
def collect(overrides: Optional[List[str]] = OVERRIDES, force: bool = FORCE, json_out: bool = JSON,
            show_cfg: bool = CFG) -> None:
    """Generate an OGBench-format dataset (train and val .npz) with ogbench's scripted oracles.

    Example: [bold]vgf collect name=cube-single-play-v0 episodes=100 workers=2 seed=0[/]. Unset values take the
    official generator's defaults; an interrupted collect resumes from its finished shards.
    """
    _run_stage("collect", overrides, force, json_out, show_cfg)


@app.command()
@_user_errors
def ingest(overrides: Optional[List[str]] = OVERRIDES, force: bool = FORCE, json_out: bool = JSON,
           show_cfg: bool = CFG) -> None:
    """Convert an OGBench npz, a D4RL HDF5 file or a Minari dataset into the canonical HDF5 dataset.

    Examples: [bold]vgf ingest dataset.path=cube-single-play-v0.npz dataset.task=2[/],
    [bold]vgf ingest dataset.name=cube-single-play-singletask-task2-v0[/],
    [bold]vgf ingest dataset.collect_run=latest[/] (the newest [bold]vgf collect[/] output),
    [bold]vgf ingest dataset=d4rl dataset.path=hopper-medium-v2.hdf5[/],
    [bold]vgf ingest dataset=minari dataset.path=~/.minari/datasets/mujoco/hopper/medium-v0[/];
    prompt sets: [bold]vgf ingest domain=llm prompts.source=file prompts.path=prompts.jsonl[/] (.jsonl, .parquet, or a
    datasets folder).
    """
    _run_stage("ingest", overrides, force, json_out, show_cfg)


@app.command("pretrain-policy")
@_user_errors
def pretrain_policy(overrides: Optional[List[str]] = OVERRIDES, force: bool = FORCE, json_out: bool = JSON,
                    show_cfg: bool = CFG) -> None:
    """Flow-matching behaviour cloning of the reference policy on the ingested dataset.

    Takes the training config ([bold]conf/train.yaml[/]: task, preset, policy.*, ...); finds its dataset run by
    that config. Example: [bold]vgf pretrain-policy task=cube-single-play-singletask-task2-v0 preset=quick[/].
    """
    _run_stage("pretrain-policy", overrides, force, json_out, show_cfg)


@app.command("train-critic")
@_user_errors
def train_critic(overrides: Optional[List[str]] = OVERRIDES, force: bool = FORCE, json_out: bool = JSON,
                 show_cfg: bool = CFG) -> None:
    """Train the method's TD critic against the frozen reference policy (method=vgf, method.alpha=..., ...)."""
    _run_stage("train-critic", overrides, force, json_out, show_cfg)


@app.command("train-reward")
@_user_errors
def train_reward(overrides: Optional[List[str]] = OVERRIDES, force: bool = FORCE, json_out: bool = JSON,
                 show_cfg: bool = CFG) -> None:
    """domain=llm: a Bradley-Terry reward model on the prompt set's chosen/rejected pairs, from the reference
    LM's body (reward.base=policy) or a model of your own; the critic's counterpart for language models."""
    _run_stage("train-reward", ["domain=llm", *(overrides or [])], force, json_out, show_cfg)


@app.command()
@_user_errors
def evaluate(overrides: Optional[List[str]] = OVERRIDES,
             budget: Optional[str] = BUDGET, guidance: Optional[str] = GUIDANCE, particles: Optional[int] = PARTICLES,
             video: Optional[int] = VIDEO, force: bool = FORCE, json_out: bool = JSON, show_cfg: bool = CFG) -> None:
    """Roll out the policy in the real environment, one row per budget (vgf) or guidance weight (qgf) after
    the reference policy's row; table, metrics, plots, value checks of the critic and, with --video K, videos."""
    _run_stage("evaluate", [*(overrides or []), *_sweep_overrides(budget, guidance, particles, video)], force,
               json_out, show_cfg, _given(budget, guidance, particles))


@app.command()
@_user_errors
def export(overrides: Optional[List[str]] = OVERRIDES, force: bool = FORCE, json_out: bool = JSON,
           show_cfg: bool = CFG) -> None:
    """The acting policy as one self-contained program: policy.pt2 (torch.export; plain torch loads it) or
    also policy.onnx (export.format=onnx, for acting without critic gradients).

    Maps observations [B, obs_dim] and noise [B, noise_dim] ~ N(0, 1) to actions, with the settings of
    [bold]export.budget[/] (vgf L), [bold]export.guidance[/] (qgf w) and [bold]export.particles[/] (N); checked against
    agent.act before the run finishes. Example: [bold]vgf export method=vgf export.budget=3[/].
    """
    _run_stage("export", overrides, force, json_out, show_cfg)


@app.command()
@_user_errors
def finetune(overrides: Optional[List[str]] = OVERRIDES, force: bool = FORCE, json_out: bool = JSON,
             show_cfg: bool = CFG) -> None:
    """Offline-to-online fine-tuning after train-critic: one env step and one method update per online step,
    the replay buffer seeded with the dataset, learning curves every online.eval_every steps.

    Example: [bold]vgf finetune method=vgf online.steps=50000[/]. Kill -9 safe: the run resumes from its last
    checkpoint, replay buffer included.
    """
    _run_stage("finetune", overrides, force, json_out, show_cfg)


@app.command()
@_user_errors
def pipeline(overrides: Optional[List[str]] = OVERRIDES,
             budget: Optional[str] = BUDGET, guidance: Optional[str] = GUIDANCE, particles: Optional[int] = PARTICLES,
             video: Optional[int] = VIDEO,
             force: bool = typer.Option(False, "--force", help="Recompute every stage."), json_out: bool = JSON,
             show_cfg: bool = CFG) -> None:
    """The whole chain: collect -> ingest -> pretrain-policy -> train-critic -> evaluate (-> finetune with
    [bold]finetune=true[/]), each from cache (the stage graph: vgfcli/graph.py); [bold]domain=llm[/]: ingest ->
    pretrain-policy (SFT) -> train-reward -> evaluate on language models.

    A stage whose config and inputs are unchanged is reused; [bold]data.source=file data.path=...[/] starts
    from a given dataset instead of collecting. Example:
    [bold]vgf pipeline task=cube-single-play-singletask-task2-v0 method=vgf preset=quick seed=0[/].
    """
    from vgfcli import graph
    from vgfcli.config import compose, to_yaml
    from vgfcli.stage import execute, report
    from vgfcli.ui import UI, stages_table
    from vgfcli.upstream import Upstream

    cfg = compose(graph.pipeline_config(overrides),
                  [*graph.config_overrides(overrides), *_sweep_overrides(budget, guidance, particles, video)])
    if show_cfg:
        typer.echo(to_yaml(cfg), nl=False)
        return
    from vgfcli.lineage import pipeline_run
    from vgfcli.tracking import Store

    for step in graph.steps(cfg):  # settings that cannot work end here, before any stage runs
        graph.step_stage(step).preflight(cfg)
    ui = UI(json_mode=json_out)
    _warn_ignored(cfg, _given(budget, guidance, particles), ui)
    everything = frozenset(graph.STAGE_MODULES) if force else frozenset()
    upstream = Upstream(cfg, ui, make=True, force=everything)
    goals = graph.goals(cfg)  # evaluate, then finetune with finetune=true
    done: dict = {}
    with pipeline_run(Store(cfg.tracking.experiment), cfg, lambda: {**upstream.outcomes, **done}):
        for stage in goals:
            done[stage.name] = execute(stage, cfg, ui, upstream, force=force)
    stages = [(name, o) for name, o in upstream.outcomes.items()] + list(done.items())
    first = goals[0]
    if json_out:
        ui.emit_json(first.to_json(done[first.name]) | {"stages": {
            name: {"run_id": o.run_id, "cache_hit": o.cache_hit, "outputs": {k: str(v) for k, v in o.outputs.items()}}
            for name, o in stages}})
        return
    ui.show(stages_table(stages))
    for stage in goals:
        report(stage, done[stage.name], ui)


@app.command()
@_user_errors
def sweep(overrides: Optional[List[str]] = OVERRIDES,
          parallel: Optional[int] = typer.Option(None, "--parallel", help="Jobs at once (local: default cores / "
                                                 "threads per job; slurm: the array's parallelism)."),
          json_out: bool = JSON) -> None:
    """A grid of pipelines, each stage run made once: comma lists, range(...) and choice(...) in the overrides.

    Example: [bold]vgf sweep task=cube-single-play-singletask-task1-v0,cube-single-play-singletask-task2-v0
    method=vgf,qgf seed=0,1,2 preset=quick --parallel 2[/]; [bold]launcher=slurm launcher.partition=gpu[/] submits
    SLURM job arrays instead (conf/launcher/). Shared stages (collect, ingest, pretrain-policy) run once; a failed
    job stops only what needs its output; running the same sweep again reuses everything finished.
    """
    from vgfcli.sweep import sweep_command

    if not overrides:
        raise VgfError("vgf sweep needs overrides, e.g. task=A,B method=vgf,qgf seed=0,1,2")
    code = sweep_command(list(overrides), parallel, json_out)
    if code:
        raise typer.Exit(code)


def _sweep_overrides(budget: str | None, guidance: str | None, particles: int | None,
                     video: int | None = None) -> list[str]:
    out = [] if video is None else [f"evaluate.video={video}"]
    if budget is not None:
        out.append(f"evaluate.budgets=[{','.join(_budgets(budget))}]")
    if guidance is not None:
        out.append(f"evaluate.guidance=[{','.join(map(str, _numbers(guidance, float, '--guidance', '0.01,0.04')))}]")
    if particles is not None:  # its range is the schema's (evaluate.particles)
        out.append(f"evaluate.particles={particles}")
    return out


def _budgets(text: str) -> list[str]:
    """--budget: steps L >= 0 and adaptive budgets by name (auto, auto_std, auto_gain)."""
    from vgfcli.budgets import RULES, parse_budgets

    try:
        return [str(b) for b in parse_budgets(text)]
    except ValueError:
        raise VgfError(f"--budget takes comma-separated steps >= 0 or {', '.join(RULES)}, e.g. 0,1,2,3,auto; "
                       f"got '{text}'") from None


def _numbers(text: str, kind, flag: str, example: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise VgfError(f"{flag} takes comma-separated {kind.__name__}s, e.g. {example}; got '{text}'")
    return values


@app.command()
@_user_errors
def runs(
    stage: Optional[str] = typer.Option(None, help="Only runs of this stage."),
    status: Optional[str] = typer.Option(None, help="Only runs with this status (FINISHED, FAILED, RUNNING, KILLED)."),
    experiment: str = typer.Option("vgf", help="MLflow experiment."),
    limit: int = typer.Option(50, help="At most this many runs, newest first."),
    json_out: bool = JSON,
) -> None:
    """List stage runs: stage, run id, cache key, status, age and main metrics."""
    from rich.table import Table

    from vgfcli.graph import STAGE_MODULES
    from vgfcli.tracking import Store
    from vgfcli.ui import UI, age

    if stage is not None and stage not in STAGE_MODULES:
        raise VgfError(f"unknown stage '{stage}' (choose from: {', '.join(STAGE_MODULES)})")
    statuses = ("FINISHED", "FAILED", "RUNNING", "KILLED", "SCHEDULED")
    if status is not None and status.upper() not in statuses:
        raise VgfError(f"unknown status '{status}' (choose from: {', '.join(statuses)})")
    if limit < 1:
        raise VgfError(f"--limit must be at least 1, got {limit}")
    ui = UI(json_mode=json_out)
    store = Store(experiment)
    store.close_abandoned()  # runs whose process is gone, or whose end a full disk kept from the store
    records = store.find(stage=stage, status=status.upper() if status else None, limit=limit)
    if json_out:
        ui.emit_json({"runs": [{"run_id": r.run_id, "stage": r.stage, "status": r.shown_status(),
                                "cache_key": r.cache_key, "start_time": r.start_time, "metrics": r.metrics,
                                "name": r.tags.get("mlflow.runName"),
                                **{k: r.tags[f"vgf.{k}"] for k in ("task", "method", "preset", "seed")
                                   if f"vgf.{k}" in r.tags}}
                               for r in records]})
        return
    table = Table(title=f"vgf runs ({len(records)})", title_justify="left")
    for column in ("stage", "run", "what", "key", "status", "age"):
        table.add_column(column, no_wrap=column != "what")
    table.add_column("metrics", overflow="fold")
    for r in records:
        shown = _main_metrics(r.stage)
        metrics = "\n".join(f"{k}={r.metrics[k]:.4g}" for k in shown if k in r.metrics)  # one per line: never split
        status = r.shown_status()
        colour = {"FINISHED": "green", "RUNNING": "cyan"}.get(status, "red")
        what = r.tags.get("mlflow.runName", r.stage).removeprefix(r.stage).strip()  # method, task, seed
        table.add_row(r.stage, r.run_id[:8], what, r.cache_key[:8], f"[{colour}]{status}[/]", age(r.start_time),
                      metrics)
    ui.show(table)


@app.command()
@_user_errors
def verify(
    stage: Optional[str] = typer.Option(None, help="Only runs of this stage."),
    experiment: str = typer.Option("vgf", help="MLflow experiment."),
    json_out: bool = JSON,
) -> None:
    """Read every output of every finished run in full and compare it with the sha256 recorded when it was
    made (bit rot keeps a file's size and timestamps, which cache hits trust for large files). A run whose
    output differs shows DAMAGED from then on and is never a cache hit. Exit 1 when any is damaged."""
    from vgfcli.graph import STAGE_MODULES
    from vgfcli.tracking import Store
    from vgfcli.ui import UI

    if stage is not None and stage not in STAGE_MODULES:
        raise VgfError(f"unknown stage '{stage}' (choose from: {', '.join(STAGE_MODULES)})")
    ui = UI(json_mode=json_out)
    records = Store(experiment).find(stage=stage, limit=100000)
    damaged = []
    with ui.progress("verify", len(records), unit="runs") as bar:
        for record in records:
            problem = record.check_outputs(rehash_below=1 << 62)[1]
            if problem is not None:
                damaged.append({"run_id": record.run_id, "stage": record.stage, "problem": problem})
            bar.advance(1)
    if json_out:
        ui.emit_json({"runs": len(records), "damaged": damaged})
    else:
        for d in damaged:
            typer.echo(f"DAMAGED {d['stage']} run {d['run_id'][:8]}: {d['problem']}")
        ui.note(f"verified {len(records)} finished runs: {len(damaged)} damaged")
    if damaged:
        raise typer.Exit(1)


@app.command()
@_user_errors
def report(
    task: Optional[List[str]] = typer.Option(None, "--task", help="Only this task (repeat for more)."),
    method: Optional[List[str]] = typer.Option(None, "--method", help="Only this method (repeat for more)."),
    preset: Optional[List[str]] = typer.Option(None, "--preset", help="Only this preset (repeat for more)."),
    out: Path = typer.Option(Path("vgf-report"), "--out", help="Folder for report.md, report.csv and report.png."),
    experiment: str = typer.Option("vgf", help="MLflow experiment."),
    curves: bool = typer.Option(False, "--curves", help="Finished finetune runs' learning curves instead: "
                                "per evaluate row, mean over seeds against online steps, with 95 % intervals."),
    json_out: bool = JSON,
) -> None:
    """Finished evaluate runs as a paper table: rows = task (then each env family's mean over its tasks),
    columns = method (per budget or guidance where swept), cells = mean over seeds in the papers' units
    (success in %) with a 95 % interval from the per-episode outcomes; also Markdown, CSV and a bar chart.
    With --curves: the finetune runs' learning curves (curves.md, curves.csv, curves.png)."""
    from vgfcli import report as reporting
    from vgfcli.ui import UI

    ui = UI(json_mode=json_out)
    if curves:
        from vgfcli import report_curves as reporting
    result = reporting.collect(experiment, tuple(task or ()), tuple(method or ()), tuple(preset or ()))
    paths = reporting.write_outputs(result, out)
    if json_out:
        ui.emit_json({"metric": result.metric, "runs": result.runs, "rows": result.rows(),
                      "files": {k: str(v) for k, v in paths.items()}})
        return
    ui.show(reporting.shown(result))
    ui.note("wrote " + ", ".join(str(p) for p in paths.values()))


def _main_metrics(stage: str) -> tuple[str, ...]:
    from vgfcli.graph import STAGE_MODULES, load_stage

    return load_stage(stage).main_metrics if stage in STAGE_MODULES else ()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vgf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Behaviour-regularized offline RL with flow policies."""


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # `kill` (SIGTERM) should end a run the way Ctrl-C does: marked KILLED, never a cache hit.
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ.setdefault("MUJOCO_GL", "egl")
    # gymnasium warns on every OGBench env it builds that float64 box bounds were cast to float32.
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
    app(prog_name="vgf")
    sys.exit(0)


if __name__ == "__main__":
    main()
