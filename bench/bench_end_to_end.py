"""The whole run side by side: the official VGF code's `main.py` against `vgf`'s pipeline, on one collected
dataset, with the same sizes, update count and evaluation episodes per budget L, on the same cores.

    python bench/bench_vs_official.py --setup          # once: scratch clone + scratch venv (JAX)
    python bench/bench_vs_official.py --end-to-end --updates 2000 --episodes 10 --threads 2

- The data: `vgf collect` makes the OGBench-format train/val files once (not timed). The official side
  finds them in ogbench's data folder (its HOME points at a scratch home whose ``.ogbench/data`` holds
  them), ours reads the same files (``data.source=file``).
- Official: `main.py --agent=agents/vgf.py --offline_steps=U --eval_interval=U --eval_episodes=E`, with
  wandb replaced by a no-op (its CSV loggers stay) and an empty module standing in for d4rl (imported at the top of its envs/, used
  only by D4RL tasks, and not installable beside current MuJoCo). A driver wraps its ``evaluate_vgf_multiple`` to time each
  evaluation (L = 0..3, E episodes each, one environment at a time). `main.py` also evaluates at step 1; that evaluation is
  timed apart and left out of the comparison (the same work as the final one).
- Ours: one `vgf pipeline` with ``data.source=file`` in a fresh store, timed by wall clock: ingest, U
  policy updates, U critic updates (the official update trains both its BC flow and its critic), then
  the reference row and L = 0..3, E episodes each. Each stage's own time comes from its MLflow run's
  start and end; training is the whole run less the evaluate stage (start-up and ingest count).
- Sizes (``--config``): quick = 3x256 MLPs, batch 128; paper = 4x512, batch 256; N = 10 particles,
  K = 10 Euler steps, L_train = 3 on both sides (the official flags are set to match ours).

It reports wall seconds per phase (training, evaluation) and their ratios (official / ours: above 1,
vgf is faster), and appends them with the CPU flags to ``bench/results.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
E2E_PIP = ["ogbench", "wandb", "tqdm", "absl-py", "mujoco", "gymnasium", "gym==0.23.1", "imageio", "matplotlib", "pillow"]
SIZES = {"quick": dict(hidden=[256, 256, 256], batch=128), "paper": dict(hidden=[512, 512, 512, 512], batch=256)}
PARTICLES, FLOW_STEPS, TRAIN_STEPS = 10, 10, 3

OFFICIAL_E2E_DRIVER = r'''
import json, sys, time, types
sys.path.insert(0, sys.argv[1])
sys.modules["d4rl"] = types.ModuleType("d4rl")  # imported at the top of envs/; only D4RL tasks use it
sys.argv = [sys.argv[1] + "/main.py"] + json.loads(sys.argv[2])
import main as official
from absl import app
# no wandb: logging goes to main.py's CSV files only (its own loggers)
official.setup_wandb = lambda **kw: None
official.wandb = types.SimpleNamespace(run=types.SimpleNamespace(project="e2e"), log=lambda *a, **k: None)
evals = []
inner = official.evaluate_vgf_multiple
def timed(*a, **k):
    t = time.perf_counter(); out = inner(*a, **k); evals.append(time.perf_counter() - t); return out
official.evaluate_vgf_multiple = timed
t0 = time.perf_counter()
try:
    app.run(official.main)
except SystemExit:
    pass
total = time.perf_counter() - t0
print("RESULT " + json.dumps({"total_s": total, "evals_s": evals}))
'''


def official_flags(repo: Path, task: str, size: dict, updates: int, episodes: int, save_dir: Path) -> list[str]:
    hidden = "(" + ",".join(str(h) for h in size["hidden"]) + ")"
    return [f"--env_name=ogbench:{task}", f"--agent={repo / 'agents' / 'vgf.py'}", f"--offline_steps={updates}",
            f"--eval_interval={updates}", f"--log_interval={updates}", f"--save_interval={10 * updates}",
            f"--eval_episodes={episodes}", f"--save_dir={save_dir}", f"--agent.actor_hidden_dims={hidden}",
            f"--agent.value_hidden_dims={hidden}", f"--agent.batch_size={size['batch']}",
            f"--agent.vgf_particles={PARTICLES}", f"--agent.bc_flow_steps={FLOW_STEPS}",
            f"--agent.train_vgf_steps={TRAIN_STEPS}"]


def collect_data(args, home: Path) -> dict:
    """The collected train/val files (made once per dataset name and size, reused after)."""
    dataset = args.task.split("-singletask")[0] + "-" + args.task.rsplit("-", 1)[1]  # cube-single-play-v0
    out = run_vgf(["collect", f"name={dataset}", f"episodes={args.data_episodes}", "val_episodes=5", "workers=1",
                   "--json"], home, args.threads)
    return {"name": dataset, **{k: Path(v) for k, v in json.loads(out)["outputs"].items()}}


def run_vgf(argv: list[str], home: Path, threads: int) -> str:
    from bench_vs_official import pin_cores, pinned_env

    env = pinned_env(threads) | {"VGF_HOME": str(home), "MUJOCO_GL": "egl"}
    proc = subprocess.run([sys.executable, "-m", "vgfcli", *argv], env=env, capture_output=True, text=True,
                          cwd=ROOT, preexec_fn=pin_cores(threads))
    if proc.returncode:
        raise SystemExit(f"error: vgf {' '.join(argv[:2])} failed: {proc.stderr.strip()[-600:]}")
    return proc.stdout


def ours(args, data: dict, scratch: Path) -> dict:
    home = scratch / "e2e-vgf-home"
    shutil.rmtree(home, ignore_errors=True)
    size = SIZES[args.config]
    hidden = "[" + ",".join(str(h) for h in size["hidden"]) + "]"
    common = [f"task={args.task}", "data.source=file", f"data.path={data['train']}", f"preset={args.config}",
              f"policy.hidden={hidden}", f"critic.hidden={hidden}", f"critic.batch_size={size['batch']}",
              f"policy.batch_size={size['batch']}", f"policy.steps={args.updates}", f"critic.steps={args.updates}",
              f"policy.flow_steps={FLOW_STEPS}", f"method.num_particles={PARTICLES}",
              f"method.train_steps={TRAIN_STEPS}", f"evaluate.episodes={args.episodes}", "evaluate.budgets=[0,1,2,3]",
              f"threads={args.threads}", *(["method.amp=off"] if args.isa == "avx2" else [])]
    t = time.perf_counter()
    out = json.loads(run_vgf(["pipeline", *common, "--json"], home, args.threads))
    phases = {"total_s": time.perf_counter() - t}
    # each stage run's own wall time, from the store's start and end times
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    for step, run in out["stages"].items():
        info = client.get_run(run["run_id"]).info
        phases[f"{step}_s"] = (info.end_time - info.start_time) / 1e3
    phases["evaluation_s"] = phases["evaluate_s"]
    phases["training_s"] = phases["total_s"] - phases["evaluation_s"]  # ingest, pretrain, critic, start-up
    phases["rows"] = {r["label"]: r["score"] for r in out["summary"].get("results", [])}
    return phases


def official(args, data: dict, scratch: Path) -> dict:
    from bench_vs_official import run_child

    home = scratch / "e2e-official-home"
    folder = home / ".ogbench" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(data["train"], folder / f"{data['name']}.npz")
    shutil.copy(data["val"], folder / f"{data['name']}-val.npz")
    driver = scratch / "driver_official_e2e.py"
    driver.write_text(OFFICIAL_E2E_DRIVER)
    flags = official_flags(scratch / "vgf", args.task, SIZES[args.config], args.updates, args.episodes, scratch / "e2e-official-exp")
    saved = {k: os.environ.get(k) for k in ("HOME", "MUJOCO_GL")}
    os.environ.update(HOME=str(home), MUJOCO_GL="egl")  # run_child hands the child this environment
    try:
        out = run_child([str(scratch / "venv" / "bin" / "python"), str(driver), str(scratch / "vgf"), json.dumps(flags)],
                        args.threads)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    first, last = (out["evals_s"] + [0.0, 0.0])[:2]
    # main.py evaluates at step 1 and at the end: the comparison keeps the training and the final evaluation
    return {"total_s": out["total_s"], "step1_evaluation_s": first, "evaluation_s": last,
            "training_s": out["total_s"] - first - last}


def end_to_end(args) -> dict:
    scratch = Path(args.scratch)
    if not (scratch / "venv" / "bin" / "python").exists():
        raise SystemExit(f"error: no official code in {scratch}: run with --setup first")
    subprocess.run([str(scratch / "venv" / "bin" / "pip"), "install", "--quiet", *E2E_PIP], check=True)
    data = collect_data(args, scratch / "e2e-data-home")
    load_before = os.getloadavg()[0]
    theirs = official(args, data, scratch)
    mine = ours(args, data, scratch)
    ratios = {k: theirs[k] / mine[k] for k in ("training_s", "evaluation_s")}
    ratios["whole_run"] = (theirs["training_s"] + theirs["evaluation_s"]) / (mine["training_s"] + mine["evaluation_s"])
    return {"official": theirs, "vgf": mine, "ratios": ratios, "loadavg_1m_before": load_before,
            "loadavg_1m_after": os.getloadavg()[0]}
