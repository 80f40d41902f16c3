"""Types of every config section (values live in ``conf/*.yaml``).

Hydra merges the YAML files onto these dataclasses, so an override of the wrong type or of a key that
does not exist is refused at composition. A field left ``MISSING`` here must be given a value by the
YAML or by the user. Each field says what it means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

# vgfcli.nn.encoders.ENCODERS' names, written out so that composing a config imports no torch (a test
# keeps the two equal).
ENCODER_NAMES = ("impala", "impala_small", "impala_large", "impala_debug")


@dataclass
class TrackingConfig:
    # MLflow experiment that holds vgf's stage runs. The store itself is VGF_HOME/mlflow.db unless
    # MLFLOW_TRACKING_URI points elsewhere (a team server, say).
    experiment: str = MISSING


@dataclass
class OgbenchSource:
    kind: str = MISSING
    # An OGBench .npz file (its -val twin beside it is the validation split). The dataset name comes
    # from the file name unless `name` is given.
    path: Optional[str] = None
    # An OGBench dataset name: `cube-single-play-v0`, `cube-single-play-singletask-task2-v0`. Without
    # `path` it is looked up in `dataset_dir`, and downloaded there with ogbench's downloader if absent.
    name: Optional[str] = None
    # Single-task reward relabel: task number 1..5. None = the task in the name, else the dataset's
    # default task (task1 mazes, task2 cube and scene, task4 puzzle and antsoccer).
    task: Optional[int] = None
    # Which split to ingest: train (X.npz) or val (X-val.npz).
    split: str = MISSING
    # Where ogbench keeps (and downloads) its datasets.
    dataset_dir: str = MISSING
    # A `vgf collect` run to read instead of a file: its run id (a prefix will do) or `latest` (the
    # newest finished collect, of `name` when given).
    collect_run: Optional[str] = None


@dataclass
class FileSource:
    """D4RL HDF5 files and Minari dataset directories."""

    kind: str = MISSING
    # The D4RL .hdf5 file or the Minari dataset directory (the one holding metadata.json).
    path: str = MISSING
    # Gymnasium env id used for evaluation; None = read from the dataset's metadata.
    env_id: Optional[str] = None


@dataclass
class IngestConfig:
    dataset: Any = MISSING
    tracking: TrackingConfig = MISSING
    # What to do with actions outside [-1, 1]: `warn` keeps them (and records a warning in the run),
    # `clip` clips them, `rescale` maps each dimension's [min, max] onto [-1, 1] and records the bounds.
    action_bounds: str = MISSING


@dataclass
class CollectConfig:
    tracking: TrackingConfig = MISSING
    # Documented in conf/collect.yaml; None = the official value for the dataset.
    name: str = MISSING
    episodes: Optional[int] = None
    val_episodes: Optional[int] = None
    episode_length: Optional[int] = None
    noise: Optional[float] = None
    noise_smoothing: Optional[float] = None
    min_norm: Optional[float] = None
    p_random_action: Optional[float] = None
    seed: int = MISSING
    shard_episodes: int = MISSING
    workers: Optional[int] = None


@dataclass
class DataConfig:
    # Where the training data comes from: collect | ogbench | file (see conf/train.yaml).
    source: str = MISSING
    path: Optional[str] = None
    kind: str = MISSING
    env_id: Optional[str] = None
    episodes: Optional[int] = None
    val_episodes: Optional[int] = None
    episode_length: Optional[int] = None
    workers: Optional[int] = None


@dataclass
class PolicyConfig:
    """Flow-matching behaviour cloning of the reference policy (pretrain-policy)."""

    hidden: list[int] = MISSING  # MLP widths of the velocity field v(s, x, t)
    lr: float = MISSING  # Adam learning rate
    batch_size: int = MISSING
    steps: int = MISSING  # gradient steps
    flow_steps: int = MISSING  # K Euler steps when sampling
    time_sampling: str = "uniform"  # t in the flow-matching loss: uniform (U[0,1]) | grid ({0, 1/K, ..., 1}, QGF's code)
    time_embedding: str = "raw"  # how v(s, x, t) sees t: raw | sinusoidal (16 wide, QGF's code)
    activation: str = "relu"  # hidden activation of v: relu (VGF/FQL code) | gelu (QGF's actor) | swish
    # LayerNorm in v's hidden layers: null (none: the VGF/FQL/QAM actors) | pre (Dense -> LN -> act:
    # QGF's actor, use_layer_norm=1) | post (Dense -> act -> LN: FQL-style networks' order).
    layer_norm: Optional[str] = None
    # Pixel datasets: the flow's own visual encoder (vgfcli.nn.encoders: impala_small as the reference
    # commands use, impala, impala_large, impala_debug); None for state observations.
    encoder: Optional[str] = None
    log_every: int = MISSING  # steps between logged training losses
    val_every: int = MISSING  # steps between validation losses (on the -val split when there is one)
    checkpoint_every: int = MISSING  # steps between resumable checkpoints


@dataclass
class CriticLoopConfig:
    """The loop of train-critic around the method's ``update`` (the method's own knobs are in method/)."""

    hidden: list[int] = MISSING  # widths of each critic member (every method with a critic)
    # Reward transform before TD learning: none | return_range (r * 1000 / (max - min trajectory
    # return): the VGF/FQL/IQL D4RL locomotion scaling) | minus_one (r - 1: their antmaze shift) |
    # sparse (r -> -(r != 0): QAM on puzzle-3x3, scene, puzzle-4x4).
    reward_transform: str = "none"
    batch_size: int = MISSING
    steps: int = MISSING
    # torch.compile the method's update where it has a compiled path (vgf): compiled once per shape
    # (tens of seconds, reported as compile_s), eager where torch.compile cannot run.
    compile: bool = False
    # Pixel datasets: the visual encoder of the method's own networks (the critic, its target, FQL's
    # one-step policy, ...: each its own); None = the same as policy.encoder. Unused on state vectors.
    encoder: Optional[str] = None
    log_every: int = MISSING
    checkpoint_every: int = MISSING


@dataclass
class EvaluateConfig:
    episodes: int = MISSING  # episodes per budget
    num_envs: int = MISSING  # envs stepped in lockstep, one batched policy call per step
    workers: Optional[int] = None  # processes scoring rows side by side (None: one per core on CPU); not in the key
    # helper processes stepping a share of the lockstep env copies (None: one per spare core for rows run in
    # this process, without video, of 5,000+ env steps in all); the same numbers, not in the key
    env_workers: Optional[int] = None
    # VGF: test-time budgets to compare (vgf evaluate --budget): transport steps L >= 0, or an adaptive
    # budget by name (auto: both stopping rules, auto_std: disagreement, auto_gain: diminishing return).
    budgets: list[Any] = MISSING
    budget_max: Optional[int] = None  # most steps of an adaptive row; None = the largest L in budgets
    stop_quantile: Optional[float] = None  # adaptive rows' disagreement quantile; None = the method's
    stop_gain: Optional[float] = None  # adaptive rows' least gain in members' stds; None = the method's
    guidance: list[float] = MISSING  # QGF: guidance weights w to compare (vgf evaluate --guidance)
    particles: Optional[int] = None  # best-of-N by Q (--particles N); None = the method's default
    max_episode_steps: Optional[int] = None  # None = the env's own limit
    # torch.compile acting (vgf): true | false | auto (compile where the evaluation's policy calls repay
    # the compile, by a cost model of counted ops and FLOPs, never a timing; vgfcli.eval_rows.choose_compile)
    compile: str = "auto"
    value_batches: int = 8  # val-split batches for the critic's TD loss (0 = skip)
    video: int = 0  # episodes per row rendered to mp4; not in the scores' cache key
    video_size: int = 256  # pixels a side
    video_fps: int = 30


@dataclass
class OnlineConfig:
    steps: int = 50000  # online env steps, one update each
    eval_every: int = 10000  # learning-curve points (and step 0, and the end)
    eval_episodes: int = 10  # episodes per evaluate row per point
    # Online steps collected before the first update (conf/online/<method>.yaml: the reference loops'
    # start_training, 5000 for VGF, A-VGF and QAM, none for FQL).
    start_training: int = 0
    # How batches mix dataset and online rows: uniform (VGF's off2on_style iql) | balanced (rlpd: half
    # and half) | online (wsrl: online rows only). vgfcli.replay has the details.
    sampling: str = "uniform"
    # Rows of the buffer, wrapping around first-in first-out when full (the reference's --buffer_size;
    # uniform: max(buffer_size, |D| + 1) with the dataset; None = never overwrite, QAM's buffer).
    buffer_size: Optional[int] = 2000000
    # vgf/avgf: transport steps of the exploring actions: None = 0 (the reference: best-of-N over
    # reference samples), an integer L, or "train" (L_train).
    explore_budget: Optional[str] = None
    # The reference flow keeps learning online on the update's batches, as in every reference code
    # (vgfcli.online_flow); false: it stays frozen (vgf before it learned online, for comparison).
    train_reference: bool = True
    max_episode_steps: Optional[int] = None  # None = the env's own limit
    checkpoint_every: int = 5000
    log_every: int = 1000


@dataclass
class ExportConfig:
    budget: Optional[int] = None  # vgf/avgf: transport steps L (None = the method's test_steps)
    guidance: Optional[float] = None  # qgf: guidance weight w (None = the method's)
    particles: Optional[int] = None  # candidates per state (None = the method's)
    format: str = "pt2"  # pt2 | onnx (policy.onnx too, for acting without critic gradients)
    parity_states: int = 64  # dataset observations of the parity check
    tolerance: float = 1e-5  # largest |action difference| between the program and agent.act


@dataclass
class UpstreamRuns:
    """Run ids to read instead of the runs the config itself leads to (a prefix will do)."""

    collect: Optional[str] = None
    dataset: Optional[str] = None
    val_dataset: Optional[str] = None
    policy: Optional[str] = None
    critic: Optional[str] = None


@dataclass
class TrainConfig:
    task: str = MISSING
    seed: int = MISSING
    device: str = MISSING
    # torch's intra-op threads in each stage (None = torch's default, one per core). The thread count
    # changes how float sums are split, so results match to the bit for the same seed AND threads;
    # recorded with each run (tag vgf.threads), not part of the cache key (like device).
    threads: Optional[int] = None
    chunk: int = MISSING  # H: actions per policy output (flattened); executed open loop
    # Pixel datasets (visual-*): frames per observation, channels concatenated (the reference's
    # --frame_stack; None = 1), and the chance a training batch is randomly shifted (--p_aug; None = 0).
    frame_stack: Optional[int] = None
    p_aug: Optional[float] = None
    data: DataConfig = MISSING
    policy: PolicyConfig = MISSING
    critic: CriticLoopConfig = MISSING
    evaluate: EvaluateConfig = MISSING
    export: ExportConfig = MISSING
    finetune: bool = False  # vgf pipeline: add the finetune stage
    online: OnlineConfig = MISSING
    # The method's hyperparameters (conf/method/<name>.yaml), documented in its Config dataclass
    # (vgfcli/methods/<name>.py). Typed by the method's own schema, method/<name>_schema, which the YAML
    # extends (vgfcli.methods.register_schemas): a wrong type or an unknown key fails at composition;
    # ranges and choices are checked by the Config's validate when the stage builds the agent.
    method: Any = MISSING
    upstream: UpstreamRuns = MISSING
    tracking: TrackingConfig = MISSING
    # Filled by vgf, not by users: the option of each config group this config was composed from.
    choices: dict[str, Optional[str]] = field(default_factory=dict)


@dataclass
class LauncherConfig:
    """Where `vgf sweep` runs its jobs (conf/launcher/<kind>.yaml)."""

    kind: str = "local"  # local (processes here) | slurm (sbatch job arrays) | debug (in this process)
    parallel: Optional[int] = None  # jobs at once (local: None = cores / threads per job; slurm: array parallelism)
    timeout_min: int = 1440  # per job
    partition: Optional[str] = None  # slurm: --partition
    cpus_per_task: Optional[int] = None  # slurm: None = the job's threads
    gpus_per_node: int = 0  # slurm: GPUs per job
    mem_gb: Optional[float] = None  # slurm: --mem
    additional: dict[str, Any] = field(default_factory=dict)  # slurm: extra sbatch flags


@dataclass
class SweepConfig:
    launcher: LauncherConfig = MISSING


# Ranges and choices the types alone cannot say, checked when a config is composed (exit 2 naming the
# key, before any run exists). A method's own values are checked by its Config (``validate``).
def _at_least(low):
    return (lambda v: v is None or v >= low), f"at least {low}"


def _positive():
    return (lambda v: v is None or v > 0), "positive"


def _one_of(*options):
    return (lambda v: v in options), "one of " + ", ".join(str(o) for o in options)


def _finite_positive():
    return (lambda v: v is not None and math.isfinite(v) and v > 0), "a finite number > 0"


def _widths():
    return (lambda v: v is None or (len(v) > 0 and all(w >= 1 for w in v))), "a non-empty list of widths >= 1"


CHECKS = {
    "train": {
        "evaluate.compile": ((lambda v: str(v).lower() in ("true", "false", "auto")), "true, false or auto"),
        "seed": _at_least(0), "chunk": _at_least(1), "threads": _at_least(1), "frame_stack": _at_least(1),
        "p_aug": ((lambda v: v is None or 0 <= v <= 1), "in [0, 1]"),
        "policy.encoder": _one_of(None, *ENCODER_NAMES), "critic.encoder": _one_of(None, *ENCODER_NAMES),
        "data.source": _one_of("collect", "ogbench", "file"), "data.kind": _one_of("ogbench", "d4rl", "minari"),
        "data.episodes": _at_least(1), "data.val_episodes": _at_least(0), "data.episode_length": _at_least(1),
        "data.workers": _at_least(1),
        "policy.hidden": _widths(), "policy.lr": _positive(), "policy.batch_size": _at_least(1),
        "policy.steps": _at_least(1), "policy.flow_steps": _at_least(1), "policy.log_every": _at_least(1),
        "policy.val_every": _at_least(1), "policy.checkpoint_every": _at_least(1),
        "policy.time_sampling": _one_of("uniform", "grid"), "policy.time_embedding": _one_of("raw", "sinusoidal"),
        "policy.activation": _one_of("relu", "gelu", "swish"), "policy.layer_norm": _one_of(None, "pre", "post"),
        "critic.hidden": _widths(), "critic.batch_size": _at_least(1), "critic.steps": _at_least(1),
        "critic.log_every": _at_least(1), "critic.checkpoint_every": _at_least(1),
        "critic.reward_transform": _one_of("none", "return_range", "minus_one", "sparse"),
        "evaluate.episodes": _at_least(1), "evaluate.num_envs": _at_least(1), "evaluate.workers": _at_least(1),
        "evaluate.env_workers": _at_least(0),
        "evaluate.particles": _at_least(1),
        "evaluate.max_episode_steps": _at_least(1), "evaluate.budget_max": _at_least(0),
        "evaluate.stop_quantile": ((lambda v: v is None or 0 < v <= 1), "in (0, 1]"),
        "evaluate.stop_gain": _at_least(0), "evaluate.value_batches": _at_least(0), "evaluate.video": _at_least(0),
        "evaluate.video_size": _at_least(16), "evaluate.video_fps": _at_least(1),
        "export.budget": _at_least(0), "export.guidance": _at_least(0), "export.particles": _at_least(1),
        "export.format": _one_of("pt2", "onnx"), "export.parity_states": _at_least(1),
        "export.tolerance": _positive(),
        "online.steps": _at_least(1), "online.eval_every": _at_least(1), "online.eval_episodes": _at_least(1),
        "online.max_episode_steps": _at_least(1), "online.checkpoint_every": _at_least(1),
        "online.log_every": _at_least(1), "online.start_training": _at_least(0),
        "online.sampling": _one_of("uniform", "balanced", "online"), "online.buffer_size": _at_least(1),
    },
    "llm": {
        "domain": _one_of("llm"), "seed": _at_least(0), "threads": _at_least(1),
        "prompts.source": _one_of("demo", "file"), "prompts.val_fraction": ((lambda v: 0 < v < 1), "in (0, 1)"),
        "prompts.demo_rows": _at_least(10), "llm.decode": _one_of("nearest", "topk"), "llm.decode_k": _at_least(1),
        "llm.dtype": _one_of("auto", "float32", "bfloat16", "float16"),
        "sft.vocab_size": _at_least(300), "sft.layers": _at_least(1), "sft.heads": _at_least(1), "sft.width": _at_least(8),
        "sft.context": _at_least(8), "sft.steps": _at_least(1), "sft.batch_size": _at_least(1),
        "sft.lr": _finite_positive(), "sft.warmup": _at_least(0), "sft.log_every": _at_least(1),
        "sft.checkpoint_every": _at_least(1), "reward.members": _at_least(1), "reward.steps": _at_least(1),
        "reward.batch_size": _at_least(1), "reward.lr": _finite_positive(),
        "reward.calibration_quantile": ((lambda v: 0 < v <= 1), "in (0, 1]"),
        "reward.log_every": _at_least(1), "reward.checkpoint_every": _at_least(1),
        "evaluate.prompts": _at_least(1), "evaluate.particles": _at_least(1), "evaluate.budget_max": _at_least(0),
        "evaluate.stop_gain": _at_least(0), "evaluate.max_new_tokens": _at_least(1),
        "evaluate.temperature": _finite_positive(), "evaluate.top_k": _at_least(0),
        "evaluate.alpha": _finite_positive(), "evaluate.lr": _finite_positive(),
        "evaluate.step_rule": _one_of("adam", "plain"), "evaluate.split": _one_of("val", "train"),
    },
    "collect": {
        "episodes": _at_least(1), "val_episodes": _at_least(0), "episode_length": _at_least(1), "seed": _at_least(0),
        "shard_episodes": _at_least(1), "workers": _at_least(1),
    },
}


def check(config_name: str, cfg) -> str | None:
    """The first value of ``cfg`` outside its range or choices, as a message; None when all fit."""
    from omegaconf import OmegaConf

    for path, (ok, what) in CHECKS.get(config_name, {}).items():
        value = OmegaConf.select(cfg, path)
        try:
            fits = ok(value)
        except TypeError:
            fits = False
        if not fits:
            return f"{path} must be {what}, got {value!r}"
    return None


_registered = False


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent); YAML files extend them via `defaults`."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from vgfcli.llm import schema as llm_schema

    store = ConfigStore.instance()
    store.store(name="ingest_schema", node=IngestConfig)
    store.store(name="collect_schema", node=CollectConfig)
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="sweep_schema", node=SweepConfig)
    store.store(name="llm_schema", node=llm_schema.LlmConfig)
    store.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    store.store(group="dataset", name="ogbench_schema", node=OgbenchSource)
    store.store(group="dataset", name="file_schema", node=FileSource)
    _registered = True
