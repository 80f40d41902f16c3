"""The MLflow tracking store: where it lives, finding cached runs, and one stage run's life.

Default store: ``$VGF_HOME/mlflow.db`` (SQLite) with artifacts in ``$VGF_HOME/artifacts``; ``VGF_HOME``
defaults to ``./.vgf``. ``MLFLOW_TRACKING_URI`` overrides the store (a team server, say).

Every read and write goes through ``MlflowClient``'s public API (never MLflow's tables), so any store
MLflow can open works alike. Where ``VGF_HOME`` is and what vgf keeps there besides the store is
``vgfcli.home``'s; its names are re-exported here for the modules that import them from this one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from vgfcli import __version__
from vgfcli.cache import path_digest, rehash, remember_digest
from vgfcli.errors import VgfError
from vgfcli.home import (
    OWNER_FILE,
    alive,
    check_home_writable,  # noqa: F401  (re-exported: stage.py and sweep.py import it from here)
    clear_dead_staging,
    tracking_uri,
    vgf_home,
    work_dir,
)
from vgfcli.mlflow_setup import check_server, git_commit, open_sqlite_store
from vgfcli.mlflow_setup import quiet_mlflow_logs as _quiet_mlflow_logs  # noqa: F401 (tests import it from here)

# Tags every stage run carries; the cache key tag is what lookups match.
TAG_STAGE = "vgf.stage"
TAG_KEY = "vgf.cache_key"
TAG_OUTPUTS = "vgf.outputs"
TAG_SUMMARY = "vgf.summary"
TAG_UPSTREAM = "vgf.upstream"
TAG_CONTINUES = "vgf.continues_key"  # runs of one config at any training length (Stage.continues)
TAG_LENGTH = "vgf.length"  # the training length of such a run
FINISHED = "FINISHED"
STAGE_RUNS = f"tags.`{TAG_STAGE}` != ''"  # a pipeline's parent run has no stage
NEWEST_FIRST = ["attributes.start_time DESC"]
SEARCH_PAGE = 1000  # runs per search_runs call (the most a tracking server returns by default)
# What a run-id prefix may hold: MLflow's ids are hex, and LIKE's wildcards (% and _) must not slip in.
RUN_ID_PREFIX = re.compile(r"[0-9A-Za-z-]*")


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _local_dir(uri: str) -> Path | None:
    """The local folder behind a file: artifact URI, or None for remote artifact stores."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


@dataclass
class RunRecord:
    """A stage run as the store holds it."""

    run_id: str
    stage: str
    status: str
    cache_key: str
    start_time: float  # seconds since the epoch
    artifact_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def outputs_meta(self) -> dict[str, dict]:
        return json.loads(self.tags.get(TAG_OUTPUTS, "{}"))

    @property
    def summary(self) -> dict:
        return json.loads(self.tags.get(TAG_SUMMARY, "{}"))

    @property
    def upstream(self) -> dict[str, str]:
        return json.loads(self.tags.get(TAG_UPSTREAM, "{}"))

    def output_paths(self) -> dict[str, Path] | None:
        """Local paths of the run's outputs; None when any is missing or damaged (``check_outputs``)."""
        paths, problem = self.check_outputs()
        return None if problem else paths

    def shown_status(self) -> str:
        """The status ``vgf runs`` shows: a finished run whose outputs are missing or changed on disk is
        DAMAGED (never a cache hit); checked where the artifacts are local files (a remote store
        would download every run's)."""
        if self.status == FINISHED and _local_dir(self.artifact_uri) and self.check_outputs()[1] is not None:
            return "DAMAGED"
        return self.status

    def check_outputs(self, rehash_below: int = 0) -> tuple[dict[str, Path], str | None]:
        """The run's outputs and what is wrong with them (None: nothing). A file whose size, mtime or
        inode changed since it was recorded is hashed again and must still have its recorded sha256
        (``cache.path_digest`` remembers digests by those stamps, so an untouched file costs a stat).
        Files under ``rehash_below`` bytes are read in full whatever their stamps say (bit rot keeps them:
        a cache hit re-hashes its small outputs, ``SMALL_OUTPUT_BYTES``; ``vgf verify`` every output)."""
        local = _local_dir(self.artifact_uri)
        paths = {}
        for name, meta in self.outputs_meta.items():
            path = local / meta["file"] if local is not None else _download(self.run_id, meta["file"])
            if path is None or not path.is_file():
                return paths, f"output {name} is missing ({meta['file']})"
            if path.stat().st_size != meta["bytes"]:
                return paths, f"output {path} has {path.stat().st_size} bytes, {meta['bytes']} were recorded"
            memo = vgf_home() / "digests.json"
            digest = rehash(path, memo) if meta["bytes"] < rehash_below else path_digest(path, memo)
            if digest != meta["sha256"]:
                return paths, f"output {path} no longer has its recorded sha256 (changed on disk)"
            paths[name] = path
        return paths, None


# A cache hit reads its outputs of fewer bytes in full (64 MiB: ~0.1 s at sha256's speed); larger ones
# are trusted by their size, mtime and inode, as DVC does, until `vgf verify` reads them.
SMALL_OUTPUT_BYTES = 64 << 20


def _record(run) -> RunRecord:
    """A stage run as ``search_runs`` returns it (its tags and latest metrics)."""
    tags = dict(run.data.tags)
    metrics = {name: _unclamped(value) for name, value in run.data.metrics.items()}
    return RunRecord(run.info.run_id, tags.get(TAG_STAGE, "?"), run.info.status, tags.get(TAG_KEY, ""),
                     (run.info.start_time or 0) / 1000, run.info.artifact_uri, tags, metrics)


def _unclamped(value: float) -> float:
    """A metric as logged: MLflow's SQL store keeps +-inf as +-float max, and hands that back."""
    if abs(value) >= sys.float_info.max:
        return math.copysign(math.inf, value)
    return value


def _download(run_id: str, rel: str) -> Path | None:
    target = vgf_home() / "downloads" / run_id
    path = target / rel
    if path.is_file():
        return path
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=rel, dst_path=str(target)))
    except Exception:  # a missing or unreachable artifact is a cache miss, not a crash
        return None


class Store:
    """One experiment in the tracking store."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.uri = tracking_uri()
        self._client = None
        self._experiment_id: str | None = None

    # ---- reading ----------------------------------------------------------------------------------
    def find(self, *, stage: str | None = None, cache_key: str | None = None,
             status: str | None = FINISHED, limit: int = 1000) -> list[RunRecord]:
        """Active stage runs matching the filters, newest first."""
        terms = [f"tags.`{TAG_STAGE}` = '{stage}'" if stage else STAGE_RUNS]
        if cache_key:
            terms.append(f"tags.`{TAG_KEY}` = '{cache_key}'")
        if status:
            terms.append(f"attributes.status = '{status}'")
        return self._search(terms, limit)

    def cached(self, stage: str, cache_key: str, warn=None) -> tuple[RunRecord, dict[str, Path]] | None:
        """The newest finished run with this key whose outputs are all present and intact; a damaged
        one is passed over, with ``warn(message)`` naming the file."""
        for record in self.find(stage=stage, cache_key=cache_key):
            paths, problem = record.check_outputs(rehash_below=SMALL_OUTPUT_BYTES)
            if problem is None:
                return record, paths
            if warn is not None:
                warn(f"{stage} run {record.run_id[:8]} is not reused: {problem}")
        return None

    def get(self, run_id: str) -> RunRecord:
        """The stage run whose id is ``run_id`` or starts with it, however old; a prefix that two runs
        share is an error naming both."""
        prefix_ok = RUN_ID_PREFIX.fullmatch(run_id)
        found = self._search([f"attributes.run_id LIKE '{run_id}%'", STAGE_RUNS], 2) if prefix_ok else []
        if not found:
            raise VgfError(f"no run '{run_id}' in experiment '{self.experiment}' of {self.uri}")
        if len(found) > 1:
            raise VgfError(f"run id '{run_id}' is ambiguous: runs {found[0].run_id} and {found[1].run_id} (at "
                           "least) start with it; give more of the id")
        return found[0]

    def get_finished(self, run_id: str, stage: str, what: str) -> RunRecord:
        """The run ``run_id`` (a prefix will do), which must be a finished ``stage`` run; ``what`` names the
        setting that gave the id, for the error."""
        record = self.get(run_id)
        if record.stage != stage or record.status != FINISHED:
            raise VgfError(f"{what}={run_id}: run {record.run_id} is a {record.status} {record.stage} run, not a "
                           f"finished {stage} run")
        return record

    def _search(self, terms: list[str], limit: int) -> list[RunRecord]:
        """Up to ``limit`` active runs matching every filter term, newest first, a page at a time. A store
        or experiment not made yet holds none."""
        db = _sqlite_path(self.uri)
        if db is not None and not db.exists():
            return []  # reading must not create a store
        experiment_id = self._existing_experiment_id()
        if experiment_id is None:
            return []
        query = " and ".join(terms)
        records, page_token = [], None
        while len(records) < limit:
            page_size = min(limit - len(records), SEARCH_PAGE)
            page = self.client().search_runs([experiment_id], query, max_results=page_size,
                                             order_by=NEWEST_FIRST, page_token=page_token)
            records += [_record(run) for run in page]
            page_token = page.token
            if not page_token:
                break
        return records

    # ---- writing ----------------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            _quiet_mlflow_logs()
            if self.uri.startswith(("http://", "https://")):
                check_server(self.uri)
            from mlflow.tracking import MlflowClient

            db = _sqlite_path(self.uri)
            if db is None:
                self._client = MlflowClient(tracking_uri=self.uri)
            else:
                self._client = open_sqlite_store(db, self.uri)
        return self._client

    def experiment_id(self) -> str:
        if self._existing_experiment_id() is None:
            self._experiment_id = self._create_experiment(self.client())
        return self._experiment_id

    def _existing_experiment_id(self) -> str | None:
        if self._experiment_id is None:
            experiment = self.client().get_experiment_by_name(self.experiment)
            self._experiment_id = experiment.experiment_id if experiment is not None else None
        return self._experiment_id

    def _create_experiment(self, client) -> str:
        """Create the experiment, or find the one another process created meanwhile."""
        from mlflow.exceptions import MlflowException

        # Keep a local store's artifacts beside its database, not in ./mlruns of the cwd.
        location = (vgf_home() / "artifacts").as_uri() if _sqlite_path(self.uri) else None
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def start_run(self, stage: str, cache_key: str, tags: dict[str, str], name: str | None = None) -> "StageRun":
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        base = {TAG_STAGE: stage, TAG_KEY: cache_key, "vgf.version": __version__, MLFLOW_RUN_NAME: name or stage}
        commit = git_commit()
        if commit:
            base["mlflow.source.git.commit"] = commit
        base.update({"vgf.host": socket.gethostname(), "vgf.pid": str(os.getpid())})
        self.close_abandoned()
        clear_dead_staging()
        run = self.client().create_run(self.experiment_id(), tags={**base, **tags})
        return StageRun(self, run.info.run_id, run.info.artifact_uri, stage, cache_key)

    def close_abandoned(self) -> None:
        """Mark KILLED the RUNNING runs whose process on this host is gone (kill -9, power loss), whatever
        their stage: the next run on the store tidies up after any dead one. A run whose end could not be
        recorded (``_leave_unfinished``: the store's disk was full) gets the status it ended with, and a
        line on stderr says which run and why."""
        host, client = socket.gethostname(), self.client()
        for note in sorted((vgf_home() / "unfinished").glob("*.json")):
            try:
                left = json.loads(note.read_text())
                client.set_terminated(left["run_id"], left["status"])
            except Exception:  # noqa: BLE001 (not readable, or the run is gone: nothing to mark)
                left = None
            if left is not None:
                sys.stderr.write(f"note: {left['stage']} run {left['run_id'][:8]} ended {left['status']} without the "
                                 f"store recording it ({left['reason']}); marked {left['status']} now\n")
            note.unlink(missing_ok=True)
        # stage runs and pipeline parent runs alike (both carry vgf.host and vgf.pid)
        for run in client.search_runs([self.experiment_id()], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            pid = tags.get("vgf.pid", "")
            if tags.get("vgf.host") == host and pid.isdigit() and not alive(int(pid)):
                client.set_terminated(run.info.run_id, "KILLED")


class StageRun:
    """An open stage run: batched metric logging, outputs staged locally and moved in at the end."""

    def __init__(self, store: Store, run_id: str, artifact_uri: str, stage: str, cache_key: str):
        self.store, self.run_id, self.artifact_uri = store, run_id, artifact_uri
        self.stage, self.cache_key = stage, cache_key
        self.staging = vgf_home() / "staging" / run_id
        # Made under a name that carries the pid, with its owner file, then renamed: a kill -9 at any moment
        # leaves either a folder that names its owner or a `.new-<pid>-...` one, and a later run removes both.
        making = self.staging.with_name(f".new-{os.getpid()}-{run_id}")
        making.mkdir(parents=True, exist_ok=True)
        (making / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        os.replace(making, self.staging)
        self._metrics: list = []
        self._last_flush = time.monotonic()
        self.latest_metrics: dict[str, float] = {}  # what a cache hit reads back from the store

    @property
    def client(self):
        return self.store.client()

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0, flush: bool = False) -> None:
        """Buffer metrics; they reach the store in batches (one SQLite transaction per batch)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.latest_metrics.update({k: float(v) for k, v in metrics.items()})
        if flush or len(self._metrics) >= 900 or time.monotonic() - self._last_flush > 10:
            self.flush()

    def flush(self) -> None:
        while self._metrics:
            batch, self._metrics = self._metrics[:1000], self._metrics[1000:]
            self.client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def commit_outputs(self, outputs: dict[str, Path], digests: dict[str, str]) -> dict[str, Path]:
        """Move finished output files into the run's artifacts; record names, sizes and digests."""
        local = _local_dir(self.artifact_uri)
        meta, final = {}, {}
        for name, path in outputs.items():
            rel = path.relative_to(self.staging).as_posix()
            meta[name] = {"file": rel, "bytes": path.stat().st_size, "sha256": digests[name]}
            if local is not None:
                target = local / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                shutil.move(path, partial)  # a rename on one filesystem, a copy across two
                os.replace(partial, target)
                remember_digest(target, digests[name])
                final[name] = target
            else:
                self.client.log_artifact(self.run_id, str(path), os.path.dirname(rel) or None)
                final[name] = path
        self.set_tags({TAG_OUTPUTS: json.dumps(meta, sort_keys=True)})
        return final

    def finish(self, status: str) -> None:
        if status == FINISHED:
            self.flush()
            self.client.set_terminated(self.run_id, status)
            shutil.rmtree(self.staging, ignore_errors=True)
            shutil.rmtree(work_dir(self.stage, self.cache_key), ignore_errors=True)  # no resume needed now
            return
        # A run that ends in an error never leaves itself RUNNING: its staged files go first (on a full
        # disk they are the room the store needs to record the end), metrics that cannot be written are
        # dropped, and if the store cannot take the status either, the reason is left for the next
        # command on this store, which marks the run and says so (``Store.close_abandoned``).
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            self.flush()
        except Exception:
            self._metrics = []
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            _leave_unfinished(self.run_id, self.stage, status, exc)

    def discard(self) -> None:
        """A run that failed on the user's input: it never happened as far as listings and caches go."""
        try:
            self.finish("FAILED")
            self.client.delete_run(self.run_id)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)


def _leave_unfinished(run_id: str, stage: str, status: str, exc: BaseException) -> None:
    """A few bytes for the next command: this run ended ``status`` but the store could not record it."""
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    try:
        folder = vgf_home() / "unfinished"
        folder.mkdir(exist_ok=True)
        (folder / f"{run_id}.json").write_text(json.dumps({"run_id": run_id, "stage": stage, "status": status,
                                                           "reason": reason}))
    except OSError:
        pass  # not even that fits: the next command marks the run KILLED (its process is gone)
