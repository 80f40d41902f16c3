"""`vgf sweep`: a grid of pipelines as one graph of stage runs, each computed once, launched by submitit.

The grid is the training config's overrides in Hydra's sweep grammar (``task=A,B seed=range(0,3)
method=choice(vgf,qgf)``), parsed by Hydra's own override parser and expanded here (Hydra's compose
API has no multirun). Every combination is a `vgf pipeline`: collect -> ingest (train, val) ->
pretrain-policy -> train-critic -> evaluate (-> finetune), the steps of the stage graph
(``vgfcli.graph.steps``). The sweep walks those steps in order, one wave per step:
for every combination still alive it computes the step's cache key (``stage.plan``; the upstream runs
exist, made by earlier waves), merges combinations whose step has the same key (collect shared by
methods and seeds, pretrain-policy shared by methods), skips keys already in the cache, and runs one
job per remaining key through the launcher. A failed job is reported and stops only the combinations
that need its output; everything finished stays cached, so running the same sweep again resumes it
(a killed training stage resumes from its checkpoint).

Jobs run with ``threads=1`` unless the grid sets ``threads``, so ``parallel`` jobs use ``parallel x
threads`` cores; results are the same bytes for the same seed and threads wherever a job ran.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

from vgfcli.errors import VgfError


def expand(overrides: list[str]) -> list[list[str]]:
    """Every combination of the sweep overrides, as plain override lists (the first key varies slowest)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        axes = []
        for o in parsed:
            key = o.get_key_element()
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            axes.append([f"{key}={v}" for v in values])
    except HydraException as exc:
        raise VgfError(f"cannot parse sweep overrides: {str(exc).splitlines()[0]}") from None
    return [list(combo) for combo in itertools.product(*axes)]


@dataclass
class Job:
    """One stage run the sweep needs: the step, the overrides of one combination that makes it, and
    every combination it serves."""

    step: str
    stage: str
    key: str
    overrides: list[str]
    combos: list[int]
    rest: list[str] = field(default_factory=list)  # later steps of its one combination, run in the same job
    state: str = "pending"  # pending | running | done | cached | failed
    run_id: str | None = None
    error: str | None = None
    started: float | None = None
    seconds: float | None = None
    handle: object = None
    runs: dict = field(default_factory=dict)  # step -> the run it made or found (steps run by this job)

    def row(self) -> dict:
        return {"step": "+".join([self.step, *self.rest]), "stage": self.stage, "key": self.key[:12],
                "overrides": self.overrides,
                "combos": self.combos, "state": self.state, "run_id": self.run_id, "error": self.error,
                "seconds": None if self.seconds is None else round(self.seconds, 1)}


@dataclass
class SweepResult:
    combos: list[list[str]]
    jobs: list[Job] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # combination -> why it stopped
    evaluate_runs: dict[int, str] = field(default_factory=dict)  # combination -> its evaluate run
    seconds: float = 0.0


def run_steps(steps: list[str], overrides: list[str], env: dict[str, str]) -> dict:
    """A job for the rest of one combination's chain (``steps`` in order, in one process): what a wave
    becomes once no later run can be shared (see ``run_sweep``). Returns the last step's run, with
    every step's run id under ``runs``."""
    out, runs = {}, {}
    for step in steps:
        made = run_step(step, overrides, env)
        if made is not None:
            out, runs[step] = made, made["run_id"]
    return {**out, "runs": runs} if runs else {}


def run_step(step: str, overrides: list[str], env: dict[str, str]) -> dict | None:
    """A job: make ``step`` of the pipeline ``overrides`` describes (its upstream runs exist); None
    when the combination has no such step. Runs in a submitit worker (a local process, a SLURM task,
    or in-process for the debug launcher)."""
    os.environ.update(env)
    from vgfcli.stage import execute

    resolved = _resolve_step(step, overrides)
    if resolved is None:
        return None
    stage, stage_cfg, upstream, ui = resolved
    outcome = execute(stage, stage_cfg, ui, upstream)
    return {"run_id": outcome.run_id, "cache_hit": outcome.cache_hit, "key": outcome.cache_key}


def _plan_step(step: str, overrides: list[str]):
    """(stage name, key, finished run id or None) of ``step`` for one combination; None when the
    combination has no such step."""
    from vgfcli.stage import cached_run, plan

    resolved = _resolve_step(step, overrides)
    if resolved is None:
        return None
    stage, stage_cfg, upstream, _ = resolved
    _, key = plan(stage, stage_cfg, upstream)
    hit = cached_run(stage, stage_cfg, key)
    return stage.name, key, hit.run_id if hit is not None else None


def _resolve_step(step: str, overrides: list[str]):
    """The stage that makes ``step`` of one combination's pipeline, its config, the combination's
    upstream finder and a quiet UI; None when the combination has no such step (nothing to train,
    no val split, a dataset from a file, no finetune)."""
    from vgfcli import graph
    from vgfcli.config import compose
    from vgfcli.ui import UI
    from vgfcli.upstream import Upstream

    cfg = compose("train", overrides)
    if step not in graph.steps(cfg):
        return None
    ui = UI(json_mode=True)  # no progress bars in job logs
    upstream = Upstream(cfg, ui)
    stage = graph.step_stage(step)
    stage_cfg = cfg if stage.in_pipeline(cfg) else stage.config_for(cfg, step, upstream)
    if stage_cfg is None:
        return None
    return stage, stage_cfg, upstream, ui


def pipeline_steps(combos: list[list[str]]) -> list[str]:
    """Every step any combination's pipeline has, in dependency order (``vgfcli.graph.steps``)."""
    from vgfcli import graph
    from vgfcli.config import compose

    order: list[str] = []
    for combo in combos:
        try:
            steps = graph.steps(compose("train", combo))
        except VgfError:  # a combination with a bad value fails at its first step, like any other error
            continue
        order += [step for step in steps if step not in order]
    return order


def run_sweep(overrides: list[str], launcher, on_change=None) -> SweepResult:
    """Plan and run the grid (see the module docstring); ``on_change(result)`` after every state change."""
    combos = expand(overrides)
    if not any(o.split("=", 1)[0] == "threads" for o in combos[0]):
        combos = [[*c, "threads=1"] for c in combos]
    result = SweepResult(combos)
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k in ("VGF_HOME", "MLFLOW_TRACKING_URI", "MUJOCO_GL")}
    from vgfcli.tracking import vgf_home

    env["VGF_HOME"] = str(vgf_home())
    finished: set[int] = set()  # combinations whose whole chain a job already ran
    steps = pipeline_steps(combos)
    for k, step in enumerate(steps):
        wave: dict[tuple[str, str], Job] = {}
        for i, combo in enumerate(combos):
            if i in result.failed or i in finished:
                continue
            try:
                planned = _plan_step(step, combo)
            except VgfError as exc:
                result.failed[i] = f"{step}: {exc}"
                continue
            if planned is None:
                continue
            stage, key, run_id = planned
            job = wave.get((stage, key))
            if job is None:
                job = wave[(stage, key)] = Job(step, stage, key, combo, [], state="cached" if run_id else "pending",
                                               run_id=run_id)
                result.jobs.append(job)
            job.combos.append(i)
            if step == "evaluate" and run_id:
                result.evaluate_runs[i] = run_id
        pending = [j for j in wave.values() if j.state == "pending"]
        # A run that serves one combination makes every later run of that combination unique too (each
        # hashes its upstream's output): from here on, one job runs the combination's whole tail, which
        # saves a process start per step (seconds each, most of a small stage's time).
        for job in pending:
            if len(job.combos) == 1 and k + 1 < len(steps):
                job.rest = list(steps[k + 1:])
        if on_change:
            on_change(result)
        launcher.run(pending, env, lambda: on_change and on_change(result))
        for job in pending:
            if job.state == "failed":
                for i in job.combos:
                    result.failed.setdefault(i, f"{job.step}: {job.error}")
            else:
                evaluated = job.runs.get("evaluate", job.run_id if step == "evaluate" else None)
                if evaluated is not None:
                    result.evaluate_runs.update({i: evaluated for i in job.combos})
                finished.update(job.combos if job.rest else ())
    result.seconds = time.monotonic() - start
    if on_change:
        on_change(result)
    return result


class Launcher:
    """Runs a wave of jobs through a submitit executor (local processes, SLURM, or in-process)."""

    def __init__(self, cfg, folder, threads: int = 1, poll_s: float = 0.5):
        import logging

        import submitit

        # submitit logs to stdout, which is --json's; and on a cluster without accounting it warns on
        # every poll that sacct failed (it then reads a job's end from its result file, which works).
        logging.getLogger("submitit").setLevel(logging.ERROR)

        self.cfg, self.poll_s = cfg, poll_s
        kind = cfg.kind
        if kind not in ("local", "slurm", "debug"):
            raise VgfError(f"launcher must be local, slurm or debug, not '{kind}'")
        # debug runs jobs right here (submitit's own debug executor would open pdb on a failure)
        self.executor = InProcess() if kind == "debug" else submitit.AutoExecutor(folder=str(folder), cluster=kind)
        params: dict = {"timeout_min": int(cfg.timeout_min)}
        if kind == "slurm":
            params |= {"slurm_cpus_per_task": int(cfg.cpus_per_task or threads),
                       "slurm_gpus_per_node": int(cfg.gpus_per_node)}
            if cfg.partition:
                params["slurm_partition"] = cfg.partition
            if cfg.mem_gb:
                params["slurm_mem"] = f"{int(float(cfg.mem_gb) * 1024)}M"
            if cfg.parallel:
                params["slurm_array_parallelism"] = int(cfg.parallel)
            if cfg.additional:
                params["slurm_additional_parameters"] = dict(cfg.additional)
        self.executor.update_parameters(**params)
        # local: at most `parallel` processes; slurm: the whole wave as one array (its parallelism caps it)
        self.parallel = int(cfg.parallel or max(1, (os.cpu_count() or 1) // max(threads, 1))) \
            if kind != "slurm" else None

    def run(self, jobs: list[Job], env: dict[str, str], changed) -> None:
        if not jobs:
            return
        if self.parallel is None:
            with self.executor.batch():
                for job in jobs:
                    job.handle = self._submit(job, env)
            for job in jobs:
                job.state, job.started = "running", time.monotonic()
            changed()
        queue = list(jobs) if self.parallel is not None else []
        running = [] if self.parallel is not None else list(jobs)
        while queue or running:
            while queue and len(running) < self.parallel:
                job = queue.pop(0)
                job.state, job.started = "running", time.monotonic()
                job.handle = self._submit(job, env)
                running.append(job)
                changed()
            for job in [j for j in running if j.handle.done()]:
                running.remove(job)
                self._collect(job)
                changed()
            if running:
                time.sleep(self.poll_s)

    def _submit(self, job: Job, env: dict[str, str]):
        if job.rest:
            return self.executor.submit(run_steps, [job.step, *job.rest], job.overrides, env)
        return self.executor.submit(run_step, job.step, job.overrides, env)

    @staticmethod
    def _collect(job: Job) -> None:
        job.seconds = time.monotonic() - (job.started or time.monotonic())
        try:
            out = job.handle.result()
        except Exception as exc:  # the job's own error: keep its last meaningful line
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "Error" in ln or "error" in ln]
            job.state, job.error = "failed", (errors or lines or [type(exc).__name__])[-1].strip()[:300]
            return
        job.state, job.run_id, job.runs = "done", out["run_id"], out.get("runs", {})


class InProcess:
    """The debug launcher's executor: a job runs when submitted, in this process."""

    class Done:
        def __init__(self, fn, args):
            try:
                self._value, self._error = fn(*args), None
            except Exception as exc:  # reported like a failed job elsewhere
                self._value, self._error = None, exc

        def done(self) -> bool:
            return True

        def result(self):
            if self._error is not None:
                raise self._error
            return self._value

    def update_parameters(self, **_) -> None:
        pass

    def submit(self, fn, *args):
        return self.Done(fn, args)


# ---------------------------------------------------------------------------------------------------
# The command


def sweep_command(overrides: list[str], parallel: int | None, json_mode: bool) -> int:
    """`vgf sweep`: run the grid with a live job table, then the report of its runs; the exit code."""
    from rich.live import Live

    from vgfcli.config import compose
    from vgfcli.tracking import check_home_writable, vgf_home
    from vgfcli.ui import UI

    ui = UI(json_mode=json_mode)
    check_home_writable()  # job logs and the store live there: say so before planning anything
    launcher_args = [o for o in overrides if o.split("=", 1)[0].split(".")[0] == "launcher"]
    grid = [o for o in overrides if o not in launcher_args]
    sweep_cfg = compose("sweep", launcher_args)
    threads = _grid_threads(grid)
    launcher_cfg = sweep_cfg.launcher
    if parallel is not None:
        if parallel < 1:
            raise VgfError(f"--parallel must be at least 1, got {parallel}")
        from omegaconf import OmegaConf

        launcher_cfg = OmegaConf.merge(launcher_cfg, {"parallel": parallel})
    folder = vgf_home() / "sweeps" / time.strftime("%Y%m%d-%H%M%S")
    launcher = Launcher(launcher_cfg, folder, threads)
    varying = _varying_keys(grid)
    with Live(console=ui.err, refresh_per_second=2, transient=False) if not json_mode else _null() as live:
        def changed(result: SweepResult) -> None:
            if live is not None:
                live.update(jobs_table(result, varying))

        result = run_sweep(grid, launcher, changed)
    report_rows, report_table = _report(result)
    if json_mode:
        ui.emit_json({"combinations": [c for c in result.combos], "jobs": [j.row() for j in result.jobs],
                      "failed": {str(i): why for i, why in result.failed.items()},
                      "evaluate_runs": {str(i): r for i, r in result.evaluate_runs.items()},
                      "seconds": round(result.seconds, 1), "launcher": launcher_cfg.kind, "folder": str(folder),
                      "report": report_rows})
    else:
        if report_table is not None:
            ui.show(report_table)
        for i, why in sorted(result.failed.items()):
            ui.warn(f"combination {' '.join(result.combos[i])}: {why}")
        ran = sum(j.state == "done" for j in result.jobs)
        ui.note(f"sweep: {len(result.combos)} combinations, {ran} stage runs made, "
                f"{sum(j.state == 'cached' for j in result.jobs)} from cache, {len(result.failed)} failed, "
                f"{result.seconds:.0f} s; job logs in {folder}")
    if not result.failed:
        return 0
    return 1 if any(j.state == "failed" for j in result.jobs) else 2  # 2: only config errors


def jobs_table(result: SweepResult, varying: list[str]):
    from rich.table import Table

    table = Table(title=f"vgf sweep: {len(result.combos)} combinations", title_justify="left")
    for column in ("step", "stage", "combinations", *varying, "state", "time"):
        table.add_column(column)
    colours = {"done": "green", "cached": "green", "running": "cyan", "failed": "red", "pending": "white"}
    for job in result.jobs:
        values = dict(o.split("=", 1) for o in job.overrides)
        elapsed = job.seconds if job.seconds is not None else (
            time.monotonic() - job.started if job.started else None)
        table.add_row("+".join([job.step, *job.rest]), job.stage, str(len(job.combos)),
                      *(values.get(k, "-") for k in varying),
                      f"[{colours[job.state]}]{job.state}[/]", f"{elapsed:.0f}s" if elapsed is not None else "")
    return table


def _varying_keys(grid: list[str]) -> list[str]:
    combos = expand(grid)
    keys = [o.split("=", 1)[0] for o in combos[0]]
    return [k for i, k in enumerate(keys) if len({c[i] for c in combos}) > 1]


def _grid_threads(grid: list[str]) -> int:
    for o in grid:
        key, _, value = o.partition("=")
        if key == "threads":
            try:
                return max(int(v) for v in value.split(","))
            except ValueError:
                raise VgfError(f"threads must be whole numbers, got '{value}'") from None
    return 1


def _report(result: SweepResult):
    """The `vgf report` rows and table of the sweep's tasks, methods and presets (None without runs)."""
    from vgfcli import report as reporting
    from vgfcli.config import compose

    if not result.evaluate_runs:
        return [], None
    cfgs = [compose("train", result.combos[i]) for i in result.evaluate_runs]
    found = reporting.collect(cfgs[0].tracking.experiment, tuple(sorted({c.task for c in cfgs})),
                              tuple(sorted({c.method.name for c in cfgs})),
                              tuple(sorted({str(c.choices.get("preset")) for c in cfgs})))
    return found.rows(), reporting.rich_table(found)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
