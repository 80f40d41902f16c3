"""From one training config to the runs each training stage reads.

The training stages (pretrain-policy, train-critic, evaluate) and ``vgf pipeline`` compose the same
config (``conf/train.yaml``). From it this module derives the upstream stages' configs (collect,
ingest of the train and val splits, pretrain-policy, train-critic) and finds their finished runs by
cache key. A single stage command only looks runs up (and says which command makes a missing one);
the pipeline makes what is missing, in order. ``upstream.<name>=RUN_ID`` pins a run by id instead.
"""

from __future__ import annotations

from vgfcli.config import compose
from vgfcli.errors import VgfError
from vgfcli.tracking import RunRecord, Store

# Upstream name -> the stage that makes it.
PRODUCERS = {"collect": "collect", "dataset": "ingest", "val_dataset": "ingest", "policy": "pretrain-policy",
             "critic": "train-critic"}


class Upstream:
    def __init__(self, cfg, ui, *, make: bool = False, force: frozenset[str] = frozenset()):
        self.cfg, self.ui, self.make, self.force = cfg, ui, make, force
        self.outcomes: dict = {}  # name -> Outcome, in the order they were resolved
        self._records: dict[str, RunRecord | None] = {}

    def record(self, name: str) -> RunRecord | None:
        """The finished run behind ``name``; None for a val split the data source does not have."""
        if name not in self._records:
            self._records[name] = self._resolve(name)
        return self._records[name]

    def _resolve(self, name: str) -> RunRecord | None:
        pinned = self.cfg.upstream.get(name) if name in self.cfg.upstream else None
        store = Store(self.cfg.tracking.experiment)
        if pinned:
            return store.get_finished(pinned, PRODUCERS[name], f"upstream.{name}")
        stage_cfg = self.stage_config(name)
        if stage_cfg is None:
            return None
        from vgfcli.stage import execute, load_stage

        stage = load_stage(PRODUCERS[name])
        outcome = execute(stage, stage_cfg, self.ui, force=PRODUCERS[name] in self.force, lookup_only=not self.make,
                          upstream=self)
        self.outcomes[name] = outcome
        return store.find(stage=stage.name, cache_key=outcome.cache_key)[0]

    def stage_config(self, name: str):
        """The config the producing stage of ``name`` runs with; None when there is no such input."""
        cfg, data = self.cfg, self.cfg.data
        if name in ("policy", "critic"):
            return cfg
        if data.source not in ("collect", "ogbench", "file"):
            raise VgfError(f"data.source must be collect, ogbench or file, got '{data.source}'")
        common = [f"tracking.experiment={cfg.tracking.experiment}"]
        if name == "collect":
            if data.source != "collect":
                return None
            dataset_name = self._ogbench_parts()[0]
            extra = [f"{k}={data[k]}" for k in ("episodes", "val_episodes", "episode_length", "workers")
                     if data[k] is not None]
            return compose("collect", [f"name={dataset_name}", *extra, *common])
        split = "val" if name == "val_dataset" else "train"
        if data.source == "file":
            if data.path is None:
                raise VgfError("data.source=file needs data.path=FILE (an OGBench .npz, a D4RL .hdf5 or a Minari dir)")
            if data.kind != "ogbench":
                if split == "val":
                    return None  # D4RL and Minari files have no validation split
                env = [f"dataset.env_id={data.env_id}"] if data.env_id else []
                return compose("ingest", [f"dataset={data.kind}", f"dataset.path={data.path}", *env, *common])
            source = [f"dataset.path={data.path}"]
        elif data.source == "ogbench":
            source = [f"dataset.name={cfg.task}"]
        else:
            collect = self.record("collect")
            source = [f"dataset.collect_run={collect.run_id}"]
        task_id = self._ogbench_parts()[3]
        return compose("ingest", [*source, f"dataset.task={task_id}", f"dataset.split={split}", *common])

    def _ogbench_parts(self):
        from vgfcli.data.ogbench_npz import parse_ogbench_name

        return parse_ogbench_name(self.cfg.task, None)
