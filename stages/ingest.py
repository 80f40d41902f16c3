"""`vgf ingest`: an OGBench npz, a D4RL HDF5 file or a Minari directory -> one canonical HDF5 file.

The canonical file (``vgfcli.data.canonical``) holds observations, actions, rewards,
next_observations, terminals (trajectory ends) and masks (0 = true terminal), so every later stage
reads one format whatever the source. Readers validate everything before a byte is written: a bad
file stops the stage with a one-line error and leaves no run behind.
"""

from __future__ import annotations

from pathlib import Path

from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult
from vgfcli.ui import summary_table

ACTION_BOUND_MODES = ("warn", "clip", "rescale")


class IngestStage(Stage):
    name = "ingest"
    config_name = "ingest"
    code_version = 1
    main_metrics = ("transitions", "episodes", "return_mean")
    needs = ("collect",)  # in a training pipeline with data.source=collect; else a file or ogbench's
    produces = ("dataset", "val_dataset")

    def config_for(self, cfg, name: str, upstream):
        """The ingest of a training pipeline's train split (``dataset``) or val split (``val_dataset``):
        from the collect run, ogbench's file for ``task``, or ``data.path``; None for the val split of
        a D4RL or Minari file, which has none."""
        from vgfcli.config import compose
        from vgfcli.data.ogbench_npz import parse_ogbench_name

        data = cfg.data
        common = [f"tracking.experiment={cfg.tracking.experiment}"]
        split = "val" if name == "val_dataset" else "train"
        if data.source == "file":
            if data.path is None:
                raise VgfError("data.source=file needs data.path=FILE (an OGBench .npz, a D4RL .hdf5 or a Minari dir)")
            if data.kind != "ogbench":
                if split == "val":
                    return None
                env = [f"dataset.env_id={data.env_id}"] if data.env_id else []
                return compose("ingest", [f"dataset={data.kind}", f"dataset.path={data.path}", *env, *common])
            source = [f"dataset.path={data.path}"]
        elif data.source == "ogbench":
            source = [f"dataset.name={cfg.task}"]
        else:
            source = [f"dataset.collect_run={upstream.record('collect').run_id}"]
        task_id = parse_ogbench_name(cfg.task, None)[3]
        return compose("ingest", [*source, f"dataset.task={task_id}", f"dataset.split={split}", *common])

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        if cfg.action_bounds not in ACTION_BOUND_MODES:
            raise VgfError(f"action_bounds must be one of {', '.join(ACTION_BOUND_MODES)}, got '{cfg.action_bounds}'")
        source = cfg.dataset
        if source.kind == "ogbench":
            return _ogbench_inputs(source, cfg.tracking.experiment)
        path = Path(source.path).expanduser()
        if source.kind == "d4rl":
            if not path.is_file():
                raise VgfError(f"{path}: no such file (dataset.path of a D4RL HDF5 file)")
            _check_hdf5(path)
        elif source.kind == "minari":
            if not path.is_dir():
                raise VgfError(f"{path}: no such directory (dataset.path of a Minari dataset)")
        else:
            raise VgfError(f"unknown dataset.kind '{source.kind}' (ogbench, d4rl or minari)")
        return Inputs(files={"source": path}, info={"kind": source.kind, "path": path, "env_id": source.env_id})

    def key_config(self, cfg, inputs: Inputs) -> dict:
        # The file's content is hashed separately; where it was found does not change the output.
        facts = {k: v for k, v in inputs.info.items() if k != "path"}
        return {"source": facts, "action_bounds": cfg.action_bounds}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        from vgfcli.data import canonical

        info = inputs.info
        run.set_tags(lineage_tags(info, inputs.upstream.get("collect")))
        with ui.status(f"reading {info['path']}"):
            dataset = _read(info)
            canonical.validate(dataset, str(info["path"]))
        dataset, message = canonical.action_bounds(dataset, cfg.action_bounds, str(info["path"]))
        warnings = []
        if message:
            warnings.append(message)
            ui.warn(message)
        dataset.attrs["source_digest"] = info.get("source_digest") or inputs.digests["source"]
        out = run.staging / "dataset.h5"
        canonical.save(dataset, out)
        summary = canonical.summarize(dataset)
        summary.update({k: dataset.attrs[k] for k in ("source_kind", "env_id", "task_id") if k in dataset.attrs})
        metrics = {k: float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "task_id"}
        return StageResult(outputs={"dataset": out}, metrics=metrics, summary=summary, warnings=warnings)

    def render(self, outcome: Outcome):
        summary = outcome.summary
        return summary_table(f"ingest: {summary.get('env_id', '?')} ({summary.get('source_kind', '?')})", summary)


def _check_hdf5(path: Path) -> None:
    """Refuse a file HDF5 cannot open before any run starts (a text file named .hdf5, a cut download)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            list(handle.keys())
    except (OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise VgfError(f"{path}: not a readable HDF5 file ({detail})") from None


def lineage_tags(info: dict, collect_record) -> dict[str, str]:
    """``vgf.task`` as the training runs spell it (the OGBench single-task name the dataset is relabelled
    for, or a D4RL/Minari dataset's env id or file name) and ``vgf.seed`` of a collected dataset, so a
    filter on either in the MLflow UI finds the whole lineage."""
    from vgfcli.protocols import file_label

    if info.get("dataset_name"):
        name = info["dataset_name"]
        task = f"{name.rsplit('-', 1)[0]}-singletask-task{info['task_id']}-{name.rsplit('-', 1)[1]}"
    else:
        task = info.get("env_id") or file_label(info["path"])  # as training runs label such data
    tags = {"vgf.task": str(task)}
    seed = collect_record.tags.get("vgf.seed") if collect_record is not None else None
    if seed is not None:
        tags["vgf.seed"] = str(seed)
    return tags


def _ogbench_inputs(source, experiment: str) -> Inputs:
    from vgfcli.data.ogbench_npz import ensure_ogbench_file, parse_ogbench_name

    if source.split not in ("train", "val"):
        raise VgfError(f"dataset.split must be train or val, got '{source.split}'")
    if source.collect_run is not None:
        return _collected_inputs(source, experiment)
    if source.path is not None:
        path = Path(source.path).expanduser()
        name = source.name or path.name.removesuffix(".npz")
        if source.split == "val" and not path.name.endswith("-val.npz"):
            path = path.with_name(path.name.removesuffix(".npz") + "-val.npz")
        if not path.is_file():
            raise VgfError(f"{path}: no such file (dataset.path of an OGBench .npz)")
    elif source.name is not None:
        name = source.name
        dataset_name, _, _, _ = parse_ogbench_name(name, source.task)
        path = ensure_ogbench_file(dataset_name, Path(source.dataset_dir).expanduser())
        if source.split == "val":
            path = path.with_name(f"{dataset_name}-val.npz")
            if not path.is_file():
                raise VgfError(f"{path}: no such file (the val split of {dataset_name})")
    else:
        raise VgfError("an OGBench dataset needs dataset.path=FILE.npz or dataset.name=NAME")
    if path.name.endswith("-val.npz") and not name.endswith("-val"):
        name = f"{name}-val"  # the file is the val split: let the name say so
    dataset_name, split, env_id, task_id = parse_ogbench_name(name, source.task)
    info = {"kind": "ogbench", "path": path, "dataset_name": dataset_name, "split": split,
            "env_id": env_id, "task_id": task_id}
    return Inputs(files={"source": path}, info=info)


def _collected_inputs(source, experiment: str) -> Inputs:
    """The train or val file of a finished `vgf collect` run."""
    from vgfcli.data.ogbench_npz import parse_ogbench_name
    from vgfcli.tracking import Store

    store = Store(experiment)
    if source.collect_run == "latest":
        wanted = parse_ogbench_name(source.name, source.task)[0] if source.name else None
        runs = [r for r in store.find(stage="collect") if wanted in (None, r.summary.get("name"))]
        if not runs:
            raise VgfError(f"no finished collect run{f' of {wanted}' if wanted else ''} in experiment "
                           f"'{experiment}'; run `vgf collect name=...` first")
        record = runs[0]
    else:
        record = store.get_finished(source.collect_run, "collect", "dataset.collect_run")
    paths = record.output_paths()
    if paths is None:
        raise VgfError(f"collect run {record.run_id}: its output files are missing or damaged; rerun vgf collect "
                       "with --force")
    path = paths[source.split]
    name = record.summary["name"] + ("-val" if source.split == "val" else "")
    task = source.task if source.task is not None or not source.name else parse_ogbench_name(source.name, None)[3]
    dataset_name, split, env_id, task_id = parse_ogbench_name(name, task)
    info = {"kind": "ogbench", "path": path, "dataset_name": dataset_name, "split": split, "env_id": env_id,
            "task_id": task_id, "source_digest": record.outputs_meta[source.split]["sha256"]}
    return Inputs(upstream={"collect": record}, info=info)


def _read(info: dict):
    if info["kind"] == "ogbench":
        from vgfcli.data.ogbench_npz import read_ogbench_npz

        name = info["dataset_name"] + ("-val" if info["split"] == "val" else "")
        return read_ogbench_npz(info["path"], dataset_name=name, task=info["task_id"])
    if info["kind"] == "d4rl":
        from vgfcli.data.d4rl import read_d4rl_hdf5

        return read_d4rl_hdf5(info["path"], env_id=info["env_id"])
    from vgfcli.data.minari import read_minari

    dataset = read_minari(info["path"])
    if info["env_id"]:
        dataset.attrs["env_id"] = info["env_id"]
    return dataset


STAGE = IngestStage()
