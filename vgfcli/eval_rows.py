"""Evaluation rows: run one after another or side by side in worker processes, and scored.

A row is one way of acting (the reference policy, L = 2, w = 0.04, ...) scored over the same episodes.
Rows are independent: each acts with a random stream of its own, seeded from the run's seed and the
row's key alone, so a row's outcomes do not depend on which rows come before it, nor on how many
processes share the work. With ``workers`` > 1 each worker process builds the agent once (from
``make_agent``, a picklable callable that returns it),
runs one torch thread per core it is given, and takes the next row when it finishes one. MuJoCo steps
are most of an evaluation's time at the quick sizes (a cube step ~2 ms, several times the policy's
share), so on 2 cores two rows at a time take about half as long; one process cannot overlap them.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import queue
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vgfcli.seeds import row_seed


@dataclass(frozen=True)
class RowJob:
    """What a worker needs to score one row (the agent is the worker's own)."""

    setting: Any  # methods.base.EvalSetting
    reference: bool  # the cloned policy alone (Agent.act_reference), not Agent.act
    env_id: str
    episodes: int
    num_envs: int
    seed: int
    max_episode_steps: int | None
    render_episodes: int
    render_size: int
    record: bool
    acting_seed: int | None = None  # the row's acting stream (None = seeds.row_seed(seed, setting.key))
    frame_stack: int = 1  # camera observations: frames per observation, as the policy was trained
    env_processes: int = 0  # helper processes stepping a share of the env copies (rollout.evaluate_policy)


def run_row(agent, job: RowJob, progress: Callable[[int], None] | None = None):
    """Score one row in this process: (EvalResult, the row's ComputeCounter)."""
    import torch

    from vgfcli.methods.base import ComputeCounter
    from vgfcli.rollout import evaluate_policy

    acting_seed = row_seed(job.seed, job.setting.key) if job.acting_seed is None else job.acting_seed
    generator = torch.Generator(device=agent.device).manual_seed(acting_seed)

    def policy(obs):
        with torch.inference_mode():
            obs = torch.as_tensor(obs, device=agent.device)
            if job.reference:
                return agent.act_reference(obs, generator).cpu().numpy()
            return agent.act(obs, generator=generator, **job.setting.options).cpu().numpy()

    agent.compute = ComputeCounter()  # this row's cost alone
    result = evaluate_policy(job.env_id, policy, episodes=job.episodes, num_envs=job.num_envs, seed=job.seed,
                             max_episode_steps=job.max_episode_steps, action_repeat_chunk=agent.chunk,
                             progress=progress, render_episodes=job.render_episodes,
                             render_size=job.render_size, record=job.record, frame_stack=job.frame_stack,
                             env_processes=job.env_processes)
    return result, agent.compute


def auto_workers(requested: int | None, rows: int, episodes: int, device, rendered: bool = False) -> int:
    """``requested``, or (None) one per core up to one per row: on CPU only, and only where the rows
    are long enough to pay a worker's start (~5 s: imports, agent, env copies): 20+ episodes each, or
    any number where every step renders the camera the agent sees (``rendered``: a few frames per
    second per core, so one row of 10 episodes takes minutes)."""
    if requested is not None:
        return max(1, min(int(requested), rows))
    if str(device) != "cpu" or (episodes < 20 and not rendered):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, rows))


def lockstep_batch(evaluate_cfg) -> int:
    """Env copies an evaluation steps in lockstep: the policy's batch (``evaluate_policy``)."""
    return min(int(evaluate_cfg.num_envs), int(evaluate_cfg.episodes))


def episode_limit(env_id: str, override: int | None) -> int:
    """Steps an episode of ``env_id`` runs at most: ``override``, else its registered time limit (1000 if none)."""
    import gymnasium

    from vgfcli.rollout import resolve_env

    return int(override or gymnasium.registry[resolve_env(env_id)[0]].max_episode_steps or 1000)


def auto_env_workers(requested: int | None, workers: int, copies: int, env_steps: int, video: bool) -> int:
    """``requested``, or (None) one helper per spare core, at most one per env copy but one, where the rows
    run in this process (``workers`` = 1: row workers already fill the cores), nothing is rendered (frames
    are drawn from the env itself) and there are 5,000+ env steps in all (a helper's start, ~1-2 s of
    imports and env building beside this process's own, is then a small share)."""
    if requested is not None:
        return max(0, min(int(requested), copies - 1))
    if workers > 1 or video or env_steps < 5000:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(cores - 1, copies - 1))


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


# --- worker process ---------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(make_agent: Callable, threads: int, events) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _worker.update(agent=make_agent(), events=events)


def _run_in_worker(index: int, job: RowJob):
    events = _worker["events"]
    done = 0

    def progress(finished: int) -> None:
        nonlocal done
        events.put((index, finished - done))
        done = finished

    return run_row(_worker["agent"], job, progress)


def run_rows(agent, jobs: list[RowJob], *, workers: int = 1, make_agent: Callable | None = None,
             threads: int = 1, advance: Callable[[int], None] | None = None) -> list:
    """Every row's (EvalResult, ComputeCounter), in the order of ``jobs``. ``advance(n)``: n more
    episodes finished (for a progress bar). ``workers`` > 1 needs ``make_agent``."""
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            done = 0

            def progress(finished: int) -> None:
                nonlocal done
                if advance:
                    advance(finished - done)
                done = finished

            out.append(run_row(agent, job, progress))
        return out
    ctx = multiprocessing.get_context("spawn")  # torch's thread pools do not survive fork
    events = ctx.Queue()
    results: list = [None] * len(jobs)
    # the costliest rows first (more transport steps, more particles), so the last ones to start are short
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))
    with futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(make_agent, max(1, threads), events)) as pool:
        pending = {pool.submit(_run_in_worker, i, jobs[i]): i for i in order}
        try:
            while pending:
                finished, _ = futures.wait(pending, timeout=0.2, return_when=futures.FIRST_COMPLETED)
                _drain(events, advance)
                for f in finished:
                    results[pending.pop(f)] = f.result()  # a worker's error surfaces here, as itself
        except BaseException:
            for f in pending:  # rows not started yet are dropped; the error is reported without them
                f.cancel()
            raise
        _drain(events, advance)
    return results


def _cost(job: RowJob) -> float:
    steps = (job.setting.options or {}).get("steps") or 0
    return 0.0 if job.reference else float(job.setting.particles) * (1 + float(steps))


def _drain(events, advance) -> None:
    while True:
        try:
            _, n = events.get_nowait()
        except queue.Empty:
            return
        if advance:
            advance(n)


# --- evaluate.compile=auto ------------------------------------------------------------------------------

def compile_setting(value) -> bool | str:
    """``evaluate.compile`` as True, False or "auto" (the YAML's true/false arrive as text in a str field)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"evaluate.compile must be true, false or auto, not {value!r}")


def resolve_compile(agent, settings: list, evaluate_cfg, env_id: str, choice: bool | str) -> dict:
    """``evaluate.compile`` for this evaluation: as given (True, False), or (auto) ``choose_compile``
    over the rows' policy calls (every episode to its time limit: E / num_envs lockstep batches of
    T / H calls). Switches the agent, and returns the choice with its figures (the run's summary and
    results.json say which path ran and why)."""
    if choice != "auto":
        return {"compile": bool(choice), "reason": f"evaluate.compile={str(choice).lower()}"}
    batch = lockstep_batch(evaluate_cfg)
    limit = episode_limit(env_id, evaluate_cfg.max_episode_steps)
    calls = -(-int(evaluate_cfg.episodes) // batch) * -(-int(limit) // max(1, agent.chunk))
    out = choose_compile(agent, settings, batch, calls)
    agent.set_compile(out["compile"])
    return out


def choose_compile(agent, settings: list, batch: int, calls: int) -> dict:
    """Whether compiling acting pays for this evaluation, as a pure function of the agent's config, the
    rows, the batch, the number of calls and the machine's kind: never of a timing, so the same inputs
    take the same path (and give the same bytes) on a busy machine and a quiet one. Each row that would
    run compiled (``Agent.acts_compiled``; adaptive rows run eagerly and are not counted) is called once
    on ``batch`` zero states with a random stream of its own (the rows' streams are not touched), its
    aten ops and matmul FLOPs counted; the modelled eager time of its ``calls`` (``modelled_call_s``)
    must save more at ``COMPILED_SHARE`` than ``COLD_COMPILE_S`` of compiling a row."""
    import torch

    from vgfcli.methods.base import ComputeCounter
    from vgfcli.nn.compiled import (
        COLD_COMPILE_S,
        COMPILED_SHARE,
        compile_pays,
        count_call,
        machine_kind,
        modelled_call_s,
    )

    rows = [s for s in settings if agent.acts_compiled(dict(s.options))]
    if not agent.compiles or agent.pixels or not rows or calls < 1:
        return {"compile": False, "reason": "no row of this method or input runs compiled acting"}
    kind = machine_kind(agent.device, agent.amp)
    obs = torch.zeros((batch, *agent.obs_shape), device=agent.device)
    counter, agent.compute = agent.compute, ComputeCounter()
    eager_s, ops, flops = 0.0, 0, 0.0
    with torch.inference_mode():
        for setting in rows:
            generator = torch.Generator(device=agent.device).manual_seed(0)
            agent.act(obs, generator=generator, **setting.options)  # lazily built pieces (bf16 copies) first
            row_ops, row_flops = count_call(lambda: agent.act(obs, generator=generator, **setting.options))
            ops, flops = ops + row_ops, flops + row_flops
            eager_s += modelled_call_s(row_ops, row_flops, kind)
    agent.compute = counter  # the counting calls are not the rows' cost
    cost = len(rows) * COLD_COMPILE_S
    saving = calls * eager_s * (1.0 - COMPILED_SHARE)
    pays = compile_pays(eager_s, calls, cost)
    return {"compile": pays, "reason": f"evaluate.compile=auto: ~{saving:.1f} s saved against ~{cost:.0f} s of "
                                       f"compiling on {kind}", "machine": kind, "rows_compiled": len(rows),
            "ops_per_step": ops, "gflop_per_step": round(flops / 1e9, 4), "eager_s_per_step": round(eager_s, 5),
            "steps": calls, "estimated_saving_s": round(saving, 1), "estimated_compile_s": round(cost, 1)}
