"""How runs read in the MLflow UI: descriptive names, the tags to filter by, upstream runs as links,
the dataset as an MLflow dataset input, and a `vgf pipeline` parent run with its stage runs nested.

``describe`` names a stage run after what it made (``train-critic vgf cube-single-task2 s0``) and tags it
with task / method / preset / seed / chunk, so runs are told apart in the UI's list and `vgf runs`.
``pipeline_run`` opens a parent run for one `vgf pipeline`; stage runs made inside it carry
``mlflow.parentRunId`` (the UI nests them), and the parent's description links every stage run it used,
cache hits included (linked, not duplicated).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import socket

_PARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("vgf_pipeline_parent", default=None)


def short_task(label: str) -> str:
    """``cube-single-play-singletask-task2-v0`` -> ``cube-single-task2`` (the dataset type and version go)."""
    label = re.sub(r"-(play|navigate|stitch|noisy|explore)-singletask-", "-", label)
    return re.sub(r"-v\d+$", "", label)


def describe(stage: str, cfg) -> tuple[str, dict[str, str]]:
    """A run name and the tags that say what the run made, from its stage's config."""
    if cfg.get("domain") == "llm":
        policy = cfg.llm.policy or "sft"
        return f"{stage} {policy} s{cfg.seed}", {"vgf.domain": "llm", "vgf.seed": str(cfg.seed),
                                                   "vgf.task": f"llm:{cfg.prompts.path or 'demo'}"}
    if "method" in cfg and "task" in cfg:  # the training config
        from vgfcli.protocols import task_label

        task = task_label(cfg)
        tags = {"vgf.task": task, "vgf.method": str(cfg.method.name), "vgf.seed": str(cfg.seed),
                "vgf.chunk": str(cfg.chunk), "vgf.preset": str((cfg.get("choices") or {}).get("preset"))}
        who = "" if stage == "pretrain-policy" else f" {cfg.method.name}"  # a policy serves every method
        return f"{stage}{who} {short_task(task)} s{cfg.seed}", tags
    if stage == "collect":
        return f"collect {cfg.name} s{cfg.seed}", {"vgf.dataset": str(cfg.name), "vgf.seed": str(cfg.seed)}
    if stage == "ingest":
        d = cfg.dataset
        source = d.get("name") or d.get("collect_run") or d.get("path") or d.get("kind")
        what = f"{d.get('split', 'train')} task{d.get('task')}" if d.get("kind") == "ogbench" else str(source)
        return f"ingest {what}", {"vgf.dataset_source": str(source)}
    return stage, {}


def run_link(experiment_id: str, run_id: str, label: str) -> str:
    return f"[{label} {run_id[:8]}](#/experiments/{experiment_id}/runs/{run_id})"


def upstream_note(experiment_id: str, upstream: dict[str, str]) -> str:
    """The run description (``mlflow.note.content``, Markdown): its upstream runs as links."""
    if not upstream:
        return ""
    return "Made from: " + ", ".join(run_link(experiment_id, rid, name) for name, rid in upstream.items())


def log_dataset_input(client, run_id: str, record) -> None:
    """The upstream ``dataset`` run's output as this run's MLflow dataset input (name, digest, source)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    meta = record.outputs_meta.get("dataset")
    if not meta:
        return
    summary = record.summary
    name = str(summary.get("env_id") or record.tags.get("mlflow.runName") or "dataset")
    dataset = Dataset(name=name, digest=meta["sha256"][:36], source_type="vgf-run",
                      source=json.dumps({"run_id": record.run_id, "file": meta["file"]}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])


def parent_run_id() -> str | None:
    """The pipeline's parent run for a stage run being made now (opened by the first one); None outside
    `vgf pipeline`."""
    parent = _PARENT.get()
    return parent.ensure() if parent is not None else None


class _Parent:
    """A pipeline's parent run, opened only when a stage run is made (a pipeline of cache hits adds none)."""

    def __init__(self, store, cfg):
        self.store, self.cfg, self.run_id = store, cfg, None

    def ensure(self) -> str:
        if self.run_id is None:
            from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

            from vgfcli.protocols import task_label

            name, tags = describe("pipeline", self.cfg)
            if "method" in self.cfg:
                name = f"pipeline {self.cfg.method.name} {short_task(task_label(self.cfg))} s{self.cfg.seed}"
            run = self.store.client().create_run(self.store.experiment_id(),
                                                 tags={MLFLOW_RUN_NAME: name, "vgf.pipeline": "1", **tags,
                                                       "vgf.host": socket.gethostname(), "vgf.pid": str(os.getpid())})
            self.run_id = run.info.run_id
        return self.run_id


@contextlib.contextmanager
def pipeline_run(store, cfg, outcomes_fn):
    """The parent run of one `vgf pipeline` (see ``_Parent``); at the end its description links every
    stage run the pipeline used (``outcomes_fn()``: step -> Outcome), cache hits included."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    parent = _Parent(store, cfg)
    token = _PARENT.set(parent)
    status = "FAILED"
    try:
        yield parent
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _PARENT.reset(token)
        if parent.run_id is not None:
            client, outcomes = store.client(), outcomes_fn()
            lines = [f"- {step}: {run_link(store.experiment_id(), o.run_id, o.stage)}"
                     f"{' (cache hit)' if o.cache_hit else ''}" for step, o in outcomes.items()]
            client.set_tag(parent.run_id, MLFLOW_RUN_NOTE, "Stage runs:\n" + "\n".join(lines))
            client.set_tag(parent.run_id, "vgf.stage_runs", json.dumps({s: o.run_id for s, o in outcomes.items()}))
            client.set_terminated(parent.run_id, status)
