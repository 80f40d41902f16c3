"""From one training config to the runs each training stage reads.

The training stages (pretrain-policy, train-critic, evaluate, finetune, export) and ``vgf pipeline``
compose the same config (``conf/train.yaml``). Each upstream input (collect, dataset, val_dataset,
policy, critic) is made by the stage that declares it in ``produces`` (``vgfcli.graph``), with the
config that stage derives from the training config (``Stage.config_for``); its finished run is found by
cache key. A single stage command only looks runs up (and says which command makes a missing one);
the pipeline makes what is missing, in order. ``upstream.<name>=RUN_ID`` pins a run by id instead.
"""

from __future__ import annotations

from vgfcli import graph
from vgfcli.stage import execute
from vgfcli.tracking import RunRecord, Store


class Upstream:
    def __init__(self, cfg, ui, *, make: bool = False, force: frozenset[str] = frozenset()):
        self.cfg, self.ui, self.make, self.force = cfg, ui, make, force
        self.outcomes: dict = {}  # name -> Outcome, in the order they were resolved
        self._records: dict[str, RunRecord | None] = {}

    def record(self, name: str) -> RunRecord | None:
        """The finished run behind ``name``; None when this pipeline has no such input (a val split the
        data source lacks, a critic for a method with nothing to train)."""
        if name not in self._records:
            self._records[name] = self._resolve(name)
        return self._records[name]

    def _resolve(self, name: str) -> RunRecord | None:
        stage = graph.producer(name)
        pinned = self.cfg.upstream.get(name) if name in self.cfg.upstream else None
        store = Store(self.cfg.tracking.experiment)
        if pinned:
            return store.get_finished(pinned, stage.name, f"upstream.{name}")
        stage_cfg = stage.config_for(self.cfg, name, self)
        if stage_cfg is None:
            return None
        outcome = execute(stage, stage_cfg, self.ui, self, force=stage.name in self.force, lookup_only=not self.make)
        self.outcomes[name] = outcome
        return store.find(stage=stage.name, cache_key=outcome.cache_key)[0]
