"""`vgf collect`: OGBench-format datasets generated here, with the oracles that ship in ogbench.

The work happens in shards under a folder named by the cache key, so a killed collect resumes
where it stopped; only when every shard is done are the train and val files merged, and then moved
into the run's artifacts. The output depends on the resolved spec and the seed, not on the worker
count, so ``workers`` stays out of the cache key.
"""

from __future__ import annotations

import os
import shutil
import time

from vgfcli.stage import Inputs, Outcome, Stage, StageResult
from vgfcli.tracking import work_dir
from vgfcli.ui import summary_table


class CollectStage(Stage):
    name = "collect"
    config_name = "collect"
    code_version = 1
    main_metrics = ("episodes", "steps", "steps_per_s")
    produces = ("collect",)

    def config_for(self, cfg, name: str, upstream):
        """The collect a training pipeline with ``data.source=collect`` reads: the task's dataset, with
        the ``data`` section's sizes (unset: the official generator's)."""
        from vgfcli.config import compose
        from vgfcli.data.ogbench_npz import parse_ogbench_name

        data = cfg.data
        if data.source != "collect":
            return None
        extra = [f"{k}={data[k]}" for k in ("episodes", "val_episodes", "episode_length", "workers")
                 if data[k] is not None]
        return compose("collect", [f"name={parse_ogbench_name(cfg.task, None)[0]}", *extra,
                                   f"tracking.experiment={cfg.tracking.experiment}"])

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        from vgfcli.collect import CollectSpec, resolve_spec

        spec = CollectSpec(
            name=cfg.name, episodes=cfg.episodes, val_episodes=cfg.val_episodes, episode_length=cfg.episode_length,
            noise=cfg.noise, noise_smoothing=cfg.noise_smoothing, min_norm=cfg.min_norm,
            p_random_action=cfg.p_random_action, seed=cfg.seed, shard_episodes=cfg.shard_episodes,
        )
        return Inputs(info={"spec": resolve_spec(spec)})

    def key_config(self, cfg, inputs: Inputs) -> dict:
        # The files are the same whatever the shard size (it only sets the unit of work and resume).
        return {k: v for k, v in inputs.info["spec"].to_json().items() if k != "shard_episodes"}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        from vgfcli.collect import collect, episode_stats

        spec = inputs.info["spec"]
        workers = cfg.workers or os.cpu_count() or 1
        work = work_dir(self.name, run.cache_key)
        total = (spec.episodes + spec.val_episodes) * spec.episode_length
        new = 0

        def advance(n: int) -> None:
            nonlocal new
            new += n
            bar.advance(n)

        run.set_tags({"vgf.workers": str(workers), "vgf.work_dir": str(work)})
        start = time.perf_counter()
        with ui.progress(f"collect {spec.name}", total, unit="steps") as bar:
            files = collect(spec, work, workers=workers, progress=advance)
            bar.update(completed=total)
        seconds = time.perf_counter() - start
        stats = episode_stats(work, "train")
        outputs = {}
        for split, path in files.items():
            outputs[split] = run.staging / path.name
            shutil.move(path, outputs[split])
        summary = {
            "name": spec.name, "env": spec.env_name, "type": spec.dataset_type, "episodes": spec.episodes,
            "val_episodes": spec.val_episodes, "episode_length": spec.episode_length, "steps": total,
            "resumed_steps": total - new, "workers": workers, "seconds": round(seconds, 2),
            "steps_per_s": round(new / seconds, 1) if seconds > 0 else 0.0, "seed": spec.seed,
            # Oracle tasks finished (goals reached, for mazes) per training episode: the data's richness.
            "subtasks_per_episode": round(float(stats["subtasks"].mean()), 3),
            "successes_per_episode": round(float(stats["successes"].mean()), 3),
        }
        metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        return StageResult(outputs=outputs, metrics=metrics, summary=summary)

    def render(self, outcome: Outcome):
        return summary_table(f"collect: {outcome.summary.get('name')}", outcome.summary)


STAGE = CollectStage()
