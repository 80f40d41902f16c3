"""Peak memory of ingest, pretrain-policy and train-critic on pixel datasets of growing size, against the frames' raw
uint8 size (issue 24: at most 1.5x; the reference loaders need 2x plus Python's overhead).

Each size gets a visual-cube-single dataset of synthetic 64 x 64 x 3 frames (memory does not depend on
what the pixels show; rendering a million real frames takes days on a CPU: ``vgf collect`` renders
about 6 frames/s per core here), ingested with ``vgf ingest`` (train and val) and trained on with ``vgf
pretrain-policy`` (impala_small, frame_stack 3, p_aug 0.5, a few updates), then ``vgf train-critic``
(VGF, its critic and target encoders, the particle bank of 32 reference samples per next state filled
from the frames: the whole dataset encoded once). Every command is a fresh
process; its peak RSS comes from ``wait4``. The slope of peak RSS over raw frame bytes across sizes is
what a larger dataset adds; the intercept is the interpreter, torch and MLflow.

    python bench/bench_pixels_memory.py --frames 20000 60000 120000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, append, machine  # noqa: E402

TASK = "visual-cube-single-play-singletask-task1-v0"


def make_npz(path: Path, frames: int, length: int = 500, seed: int = 0) -> int:
    """A visual-cube-single file with ``frames`` rows in episodes of ``length``; returns its frame bytes."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(frames, bool)
    terminals[length - 1::length] = True
    terminals[-1] = True
    obs = np.empty((frames, 64, 64, 3), np.uint8)
    for start in range(0, frames, 10_000):  # filled in blocks: the generator's own copy stays small
        obs[start:start + 10_000] = rng.integers(0, 256, (min(10_000, frames - start), 64, 64, 3), dtype=np.uint8)
    np.savez(path, observations=obs, actions=rng.uniform(-1, 1, (frames, 5)).astype(np.float32),
             terminals=terminals, qpos=rng.normal(size=(frames, 21)).astype(np.float32),
             qvel=np.zeros((frames, 20), np.float32))
    return obs.nbytes


def peak_rss_mb(args: list[str], env: dict) -> float:
    """Run ``python -m vgfcli ARGS`` and return its peak resident memory in MiB (exit status checked)."""
    proc = subprocess.Popen([sys.executable, "-m", "vgfcli", *args, "--json"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"vgf {' '.join(args)} failed: {stderr[-1000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[20_000, 60_000, 120_000])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for frames in args.frames:
        with tempfile.TemporaryDirectory(prefix="vgf-pixmem-") as tmp:
            tmp = Path(tmp)
            raw = make_npz(tmp / "visual-cube-single-play-v0.npz", frames)
            make_npz(tmp / "visual-cube-single-play-v0-val.npz", 1000, seed=1)
            env = {**os.environ, "VGF_HOME": str(tmp / "home"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
            data = [f"dataset.path={tmp / 'visual-cube-single-play-v0.npz'}", "dataset.task=1"]
            ingest = peak_rss_mb(["ingest", *data], env)
            peak_rss_mb(["ingest", f"dataset.path={tmp / 'visual-cube-single-play-v0-val.npz'}", "dataset.task=1",
                         "dataset.split=val"], env)
            train = peak_rss_mb(["pretrain-policy", "data.source=file", f"data.path={tmp / 'visual-cube-single-play-v0.npz'}",
                                 f"task={TASK}", "policy.encoder=impala_small", "frame_stack=3", "p_aug=0.5",
                                 "preset=smoke", f"policy.steps={args.steps}", "policy.batch_size=64",
                                 "policy.hidden=[512,512,512,512]", "threads=2"], env)
            critic = peak_rss_mb(["train-critic", "data.source=file", f"data.path={tmp / 'visual-cube-single-play-v0.npz'}",
                                  f"task={TASK}", "policy.encoder=impala_small", "frame_stack=3", "p_aug=0.5",
                                  "preset=smoke", f"policy.steps={args.steps}", "policy.batch_size=64",
                                  "policy.hidden=[512,512,512,512]", "method=vgf", f"critic.steps={args.steps}",
                                  "critic.batch_size=64", "critic.hidden=[512,512,512,512]", "threads=2"], env)
        rows.append({"frames": frames, "raw_mb": raw / 2**20, "ingest_peak_mb": ingest, "train_peak_mb": train,
                     "critic_peak_mb": critic})
        print(f"{frames:>8} frames  raw {raw / 2**20:8.0f} MiB  ingest peak {ingest:8.0f} MiB  "
              f"pretrain-policy peak {train:8.0f} MiB  train-critic peak {critic:8.0f} MiB", flush=True)
    x = np.array([r["raw_mb"] for r in rows])
    fits = {}
    for key in ("ingest_peak_mb", "train_peak_mb", "critic_peak_mb"):
        slope, intercept = np.polyfit(x, np.array([r[key] for r in rows]), 1)
        fits[key] = {"slope": float(slope), "intercept_mb": float(intercept)}
        print(f"{key}: {slope:.2f} MiB per MiB of raw frames, + {intercept:.0f} MiB")
    append(RESULTS, {"bench": "pixels_memory", "machine": machine(), "rows": rows, "fits": fits})


if __name__ == "__main__":
    main()
