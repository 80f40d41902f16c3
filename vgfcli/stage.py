"""The stage contract and the one runner that gives every stage caching, tracking and atomic outputs.

A stage says where it sits in the stage graph (``needs``: the upstream names it reads; ``produces``:
the names its runs serve; ``config_for``: its config within a training pipeline; ``vgfcli.graph``
reads these), what it reads (``resolve_inputs``: files and upstream runs, checked before any run
exists), what its outputs depend on (``key_config``) and how to make them (``run``). The runner
computes the cache key, returns a finished run with that key if one exists (unless ``force``), and
otherwise opens an MLflow run, logs the resolved config, calls ``run`` and moves its outputs into
the run's artifacts before marking it FINISHED. A run that raises is FAILED (KILLED on Ctrl-C) and is
never a cache hit; a run that failed on the user's input (``VgfError``) is deleted outright.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgfcli import config as config_mod
from vgfcli.cache import cache_key, file_sha256, path_digest
from vgfcli.errors import VgfError
from vgfcli.locks import key_lock
from vgfcli.tracking import (
    SMALL_OUTPUT_BYTES,
    TAG_CONTINUES,
    TAG_LENGTH,
    TAG_SUMMARY,
    TAG_UPSTREAM,
    RunRecord,
    StageRun,
    Store,
    check_home_writable,
    tracking_uri,
    vgf_home,
)
from vgfcli.ui import UI


@dataclass
class Inputs:
    """What a stage reads. ``files`` and ``upstream`` enter the cache key by content digest."""

    files: dict[str, Path] = field(default_factory=dict)
    upstream: dict[str, RunRecord] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # resolved facts for ``run`` (not hashed)
    digests: dict[str, str] = field(default_factory=dict)  # filled in by the runner: name -> content digest
    # A stage with a ``continues`` length: the longest finished shorter run of the same config, whose
    # final state this run starts from (None: from scratch). Set by the runner, never hashed.
    shorter: RunRecord | None = None


@dataclass
class StageResult:
    outputs: dict[str, Path]  # name -> file written under ``run.staging``
    metrics: dict[str, float]
    summary: dict[str, Any]  # JSON-able; kept in the run and shown again on a cache hit
    warnings: list[str] = field(default_factory=list)


class Stage:
    """Base for stages; subclasses set the class attributes and implement the three methods."""

    name: str = ""
    config_name: str = ""
    code_version: int = 1  # bump when the same inputs would now give different outputs
    # The config path of a training length (``critic.steps``) that a longer run may continue from the
    # final state of a shorter one of otherwise the same config and inputs, with the same result as an
    # uninterrupted run (the stage's output holds its whole training state); None: never.
    continues: str | None = None
    main_metrics: tuple[str, ...] = ()  # shown by `vgf runs`
    domain: str = "rl"  # which domain's pipeline it belongs to (vgfcli.graph.DOMAINS)
    # The stage graph (vgfcli.graph): the upstream names this stage may read, each made by the stage
    # that lists it in ``produces``, and the names its own runs serve to later stages.
    needs: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()

    def needed(self, cfg) -> tuple[str, ...]:
        """The upstream names this stage reads for ``cfg`` (default: all of ``needs``)."""
        return self.needs

    def config_for(self, cfg, name: str, upstream):
        """The config this stage runs with to make ``name`` for the training pipeline ``cfg`` (default:
        ``cfg`` itself); None when that pipeline has no such input (no val split, nothing to train)."""
        return cfg

    def preflight(self, cfg) -> None:
        """Raise ``VgfError`` for a setting that cannot work, from the config alone, before any stage of a
        pipeline runs (a missing model folder, frames without an encoder): minutes of upstream work are
        not spent first. Default: nothing to check."""

    def in_pipeline(self, cfg) -> bool:
        """Whether ``vgf pipeline`` (and each combination of ``vgf sweep``) ends with this stage; the
        stages it needs are made on the way."""
        return False

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        """Files and upstream runs (``upstream.record(name)``, a ``vgfcli.upstream.Upstream``); by
        default the finished runs behind ``needed(cfg)``, leaving out an input ``cfg`` does not have."""
        records = {name: upstream.record(name) for name in self.needed(cfg)}
        return Inputs(upstream={name: record for name, record in records.items() if record is not None})

    def key_config(self, cfg, inputs: Inputs) -> dict:
        """The part of the config the outputs depend on (default: all of it but tracking)."""
        tree = config_mod.to_dict(cfg)
        tree.pop("tracking", None)
        return tree

    def run(self, cfg, inputs: Inputs, run: StageRun, ui: UI) -> StageResult:
        raise NotImplementedError

    def ignored(self, cfg) -> list[str]:
        """Warnings for settings in ``cfg`` this stage leaves out because the chosen method ignores them."""
        return []

    def accepts(self, cfg, hit: "Outcome") -> bool:
        """Whether a cached run with the right key also has what this config asks for beyond its key
        (evaluate: the videos asked for). False: the stage runs again under the same key."""
        return True

    def render(self, outcome: "Outcome"):
        """A rich renderable for the human output (fresh runs and cache hits alike)."""
        raise NotImplementedError

    def to_json(self, outcome: "Outcome") -> dict:
        """The ``--json`` object; stages add their own top-level fields."""
        return outcome.to_json()


@dataclass
class Outcome:
    stage: str
    run_id: str
    cache_hit: bool
    cache_key: str
    outputs: dict[str, Path]
    metrics: dict[str, float]
    summary: dict[str, Any]
    upstream: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "stage": self.stage, "run_id": self.run_id, "cache_hit": self.cache_hit, "cache_key": self.cache_key,
            "outputs": {k: str(v) for k, v in self.outputs.items()}, "metrics": self.metrics,
            "summary": self.summary, "upstream": self.upstream, "warnings": self.warnings,
        }


def execute(stage: Stage, cfg, ui: UI, upstream, *, force: bool = False, lookup_only: bool = False) -> Outcome:
    """Run ``stage`` on ``cfg``, or return the cached run with the same key.

    ``upstream``: how the stage finds its upstream runs (a ``vgfcli.upstream.Upstream``).
    ``lookup_only``: never run; a missing run is an error that names the command that makes it.
    """
    if not lookup_only:
        check_home_writable()
    inputs, key = plan(stage, cfg, upstream)
    store = Store(cfg.tracking.experiment)
    upstream_ids = {name: record.run_id for name, record in inputs.upstream.items()}

    hit = None if force else _cache_hit(store, stage.name, key, ui.warn)
    if hit is not None and stage.accepts(cfg, hit):
        return hit
    if hit is not None and not lookup_only:
        ui.note(f"the cached {stage.name} run {hit.run_id[:8]} lacks what this config asks for beyond its key "
                "(e.g. videos): running it again")
    if lookup_only:
        raise VgfError(f"no finished {stage.name} run for this config (key {key[:12]}); `vgf pipeline` with the same "
                       "overrides makes it (or pin one with upstream.<name>=RUN_ID)")

    def waiting(holder: dict) -> None:
        ui.note(f"waiting for {holder.get('host', '?')}:{holder.get('pid', '?')}, which is computing this "
                f"{stage.name} (key {key[:12]})")

    # One computation per key: whoever waited here finds the holder's run in the cache.
    with key_lock(stage.name, key, waiting):
        hit = None if force else _cache_hit(store, stage.name, key)
        if hit is not None and stage.accepts(cfg, hit):
            return hit
        inputs.shorter = None if force else longest_shorter(store, stage, cfg, inputs)
        return _compute(stage, cfg, inputs, ui, store, key, upstream_ids)


def plan(stage: Stage, cfg, upstream) -> tuple[Inputs, str]:
    """What ``stage`` would read on ``cfg`` and its cache key, computing nothing (``vgf sweep`` groups
    identical stage runs by it)."""
    inputs = stage.resolve_inputs(cfg, upstream)
    memo = vgf_home() / "digests.json"
    digests = {name: path_digest(path, memo) for name, path in inputs.files.items()}
    for name, record in inputs.upstream.items():
        digests[name] = json.dumps({k: v["sha256"] for k, v in record.outputs_meta.items()}, sort_keys=True)
    inputs.digests = digests
    return inputs, cache_key(stage.name, stage.code_version, stage.key_config(cfg, inputs), digests)


def continuation_key(stage: Stage, cfg, inputs: Inputs) -> str | None:
    """The key that runs of ``stage`` of every length ``stage.continues`` share (None: it has none)."""
    if stage.continues is None:
        return None
    from omegaconf import OmegaConf, open_dict

    any_length = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(any_length):
        OmegaConf.update(any_length, stage.continues, None)
    return cache_key(stage.name, stage.code_version, stage.key_config(any_length, inputs), inputs.digests)


def longest_shorter(store: Store, stage: Stage, cfg, inputs: Inputs) -> RunRecord | None:
    """The finished run of the same continuation key with the most steps below this config's, whose
    outputs are intact; None when there is none."""
    from omegaconf import OmegaConf

    family = continuation_key(stage, cfg, inputs)
    if family is None:
        return None
    length = int(OmegaConf.select(cfg, stage.continues))
    found = [r for r in store.find(stage=stage.name) if r.tags.get(TAG_CONTINUES) == family
             and int(r.tags.get(TAG_LENGTH, 0)) < length]
    for record in sorted(found, key=lambda r: -int(r.tags[TAG_LENGTH])):
        if record.check_outputs(rehash_below=SMALL_OUTPUT_BYTES)[1] is None:
            return record
    return None


def cached_run(stage: Stage, cfg, key: str) -> Outcome | None:
    """The finished run of ``stage`` with ``key`` in ``cfg``'s experiment, or None."""
    return _cache_hit(Store(cfg.tracking.experiment), stage.name, key)


def _cache_hit(store: Store, stage: str, key: str, warn=None) -> Outcome | None:
    hit = store.cached(stage, key, warn)
    if hit is None:
        return None
    record, paths = hit
    return Outcome(stage, record.run_id, True, key, paths, record.metrics, record.summary, record.upstream,
                   json.loads(record.tags.get("vgf.warnings", "[]")))


def _compute(stage: Stage, cfg, inputs: Inputs, ui: UI, store: Store, key: str, upstream_ids: dict) -> Outcome:
    """A new run of ``stage``: logged config, the stage's work, outputs moved in, FINISHED (or not)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

    from vgfcli import lineage

    threads = apply_threads(cfg)
    name, tags = lineage.describe(stage.name, cfg)
    tags |= {TAG_UPSTREAM: json.dumps(upstream_ids), "vgf.threads": threads}
    if stage.continues is not None:  # a longer run of the same config may start from this one's end
        from omegaconf import OmegaConf

        tags |= {TAG_CONTINUES: continuation_key(stage, cfg, inputs),
                 TAG_LENGTH: str(int(OmegaConf.select(cfg, stage.continues)))}
    note = lineage.upstream_note(store.experiment_id(), upstream_ids)
    if note:
        tags[MLFLOW_RUN_NOTE] = note
    parent = lineage.parent_run_id()
    if parent:
        tags[MLFLOW_PARENT_RUN_ID] = parent
    run = store.start_run(stage.name, key, tags, name)
    if "dataset" in inputs.upstream:
        lineage.log_dataset_input(store.client(), run.run_id, inputs.upstream["dataset"])
    try:
        run.log_params(config_mod.flatten(config_mod.to_dict(cfg)))
        run.log_text(config_mod.to_yaml(cfg), "config.yaml")
        result = stage.run(cfg, inputs, run, ui)
        digests_out = {name: file_sha256(path) for name, path in result.outputs.items()}
        final = run.commit_outputs(result.outputs, digests_out)
        run.set_tags({TAG_SUMMARY: json.dumps(result.summary, default=str),
                      "vgf.warnings": json.dumps(result.warnings)})
        run.log_metrics(result.metrics, flush=True)
        run.finish("FINISHED")
    except VgfError as exc:
        if exc.keep_run:
            run.finish("FAILED")
        else:
            run.discard()
        raise
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    return Outcome(stage.name, run.run_id, False, key, final, run.latest_metrics, result.summary, upstream_ids,
                   result.warnings)


def apply_threads(cfg) -> str:
    """Set torch's thread count from ``cfg.threads`` (where the config has one; None leaves torch's
    default) and return what the run records."""
    threads = cfg.get("threads") if hasattr(cfg, "get") else None  # >= 1: checked when the config is composed
    if threads is None:
        return "default"
    import os

    import torch

    torch.set_num_threads(int(threads))
    os.environ["OMP_NUM_THREADS"] = str(int(threads))  # worker processes a stage starts inherit it
    return str(int(threads))


def report(stage: Stage, outcome: Outcome, ui: UI) -> None:
    """Print an outcome: JSON object under ``--json``, else the stage's table plus cache/run lines."""
    if ui.json_mode:
        ui.emit_json(stage.to_json(outcome))
        return
    if outcome.cache_hit:
        ui.note(f"[green]cache hit[/]: {stage.name} run {outcome.run_id} (key {outcome.cache_key[:12]}); "
                "use --force to recompute")
    for warning in outcome.warnings if outcome.cache_hit else ():
        ui.warn(warning)
    ui.show(stage.render(outcome))
    for name, path in outcome.outputs.items():
        ui.note(f"{name}: {path}")
    if not outcome.cache_hit:
        ui.note(f"run {outcome.run_id} (key {outcome.cache_key[:12]}) in {tracking_uri()}")
