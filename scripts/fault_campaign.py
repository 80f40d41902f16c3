"""kill -9 fault campaign: is the store usable and the result unchanged after a hard kill at any moment?

For each command (collect, ingest, pipeline) it runs the command once uninterrupted on a fresh store
(the reference: its wall time and the sha256 of every output), then, trial by trial, on a fresh store:
start the command, SIGKILL its whole process group after a delay spread evenly over the reference's
wall time (the first trials land in start-up, where MLflow creates and migrates the SQLite schema),
run the same command again to the end and check that
  - it exits 0 and prints one JSON object,
  - every output has the reference's sha256 (same seed, same bytes; a resumed stage included),
  - no staging folder and no half-made store file is left, no run is left RUNNING,
  - `vgf runs` still works.

    python scripts/fault_campaign.py --trials 18 --out fault-campaign.json

Run it on a quiet machine: each command gets `threads=1` so two processes never fight for cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VGF = [sys.executable, "-m", "vgfcli"]
COLLECT = ["collect", "name=cube-single-play-v0", "episodes=4", "val_episodes=1", "episode_length=200",
           "shard_episodes=1", "workers=1"]
PIPELINE = ["pipeline", "preset=smoke", "threads=1", "evaluate.budgets=[0,1]"]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(args: list[str], home: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "VGF_HOME": str(home), "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([*VGF, *args], env=env, capture_output=True, text=True, timeout=timeout)


def outputs(result: dict) -> dict[str, str]:
    """name -> sha256 of every output of the command (a pipeline: of every stage's run)."""
    if "stages" not in result:
        return {k: sha256(v) for k, v in result["outputs"].items()}
    found = {}
    for stage, info in result["stages"].items():
        for name, path in info.get("outputs", {}).items():
            found[f"{stage}/{name}"] = sha256(path)
    return found


def kill_after(args: list[str], home: Path, delay: float) -> None:
    env = {**os.environ, "VGF_HOME": str(home), "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([*VGF, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def leftovers(home: Path) -> list[str]:
    found = [str(p.relative_to(home)) for p in (home / "staging").glob("*")] if (home / "staging").is_dir() else []
    found += [p.name for p in home.glob(".mlflow.db.creating-*")]
    return found


def check(args: list[str], home: Path, reference: dict[str, str]) -> dict:
    again = run([*args, "--json"], home)
    problems = []
    if again.returncode != 0:
        problems.append(f"rerun exit {again.returncode}: {again.stderr.strip()[-300:]}")
    else:
        try:
            result = json.loads(again.stdout)
        except ValueError:
            problems.append("rerun stdout is not one JSON object")
        else:
            got = outputs(result)
            if got != reference:
                problems.append(f"outputs differ from the reference: {sorted(k for k in reference if got.get(k) != reference[k])}")
    left = leftovers(home)
    if left:
        problems.append(f"left behind: {left}")
    runs = run(["runs", "--json"], home, timeout=300)
    if runs.returncode != 0:
        problems.append(f"vgf runs exit {runs.returncode}: {runs.stderr.strip()[-200:]}")
    else:
        running = [r["run_id"] for r in json.loads(runs.stdout)["runs"] if r["status"] == "RUNNING"]
        if running:
            problems.append(f"runs left RUNNING: {running}")
    return {"ok": not problems, "problems": problems}


def campaign(name: str, args: list[str], trials: int, root: Path) -> dict:
    ref_home = root / f"{name}-reference"
    start = time.perf_counter()
    ref = run([*args, "--json"], ref_home)
    wall = time.perf_counter() - start
    if ref.returncode != 0:
        raise SystemExit(f"{name}: the reference run failed: {ref.stderr.strip()[-400:]}")
    reference = outputs(json.loads(ref.stdout))
    rows = []
    for i in range(trials):
        delay = 0.2 + (0.95 * wall - 0.2) * i / max(trials - 1, 1)
        home = root / f"{name}-{i}"
        kill_after(args, home, delay)
        row = {"trial": i, "kill_after_s": round(delay, 2), **check(args, home, reference)}
        rows.append(row)
        print(f"{name} trial {i:2d} kill at {delay:6.2f}s: {'ok' if row['ok'] else row['problems']}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(ref_home, ignore_errors=True)
    return {"command": " ".join(["vgf", *args]), "reference_wall_s": round(wall, 2), "trials": rows,
            "broken": sum(not r["ok"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=18, help="kills per command")
    parser.add_argument("--commands", default="collect,ingest,pipeline")
    parser.add_argument("--out", default="fault-campaign.json")
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vgf-faults-"))
    try:
        source = root / "source"
        made = run([*COLLECT, "--json"], source)
        if made.returncode != 0:
            raise SystemExit(f"collecting the ingest source failed: {made.stderr.strip()[-400:]}")
        npz = root / "cube-single-play-v0.npz"
        shutil.copy(json.loads(made.stdout)["outputs"]["train"], npz)
        commands = {"collect": COLLECT, "ingest": ["ingest", f"dataset.path={npz}", "dataset.task=2"],
                    "pipeline": PIPELINE}
        report = {name: campaign(name, commands[name], opts.trials, root) for name in opts.commands.split(",")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(opts.out).write_text(json.dumps(report, indent=1))
    for name, part in report.items():
        print(f"{name}: {part['broken']} of {len(part['trials'])} kills left a problem "
              f"(reference run {part['reference_wall_s']} s)")
    sys.exit(1 if any(part["broken"] for part in report.values()) else 0)


if __name__ == "__main__":
    main()
