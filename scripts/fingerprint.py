"""Fingerprint of the smoke pipelines: every stage run's cache key and its outputs' sha256.

A refactoring that changes no behaviour leaves this fingerprint as it was. Run it on two checkouts
and diff the outputs (each run uses a fresh store under a temporary VGF_HOME):

    python scripts/fingerprint.py > after.json
    (cd OLD_CHECKOUT && python scripts/fingerprint.py) > before.json   # or --python/--cwd below

Each method goes through ``vgf pipeline`` at ``preset=smoke`` with one torch thread (same seed +
threads = same bytes), then ``vgf export`` and ``vgf finetune`` for VGF.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SMOKE = ["preset=smoke", "threads=1"]
JOBS = [
    ("pipeline", ["method=vgf", "--budget", "0,1,auto"]),
    ("pipeline", ["method=avgf"]),
    ("pipeline", ["method=qgf", "--guidance", "0.01,0.1"]),
    ("pipeline", ["method=qam"]),
    ("pipeline", ["method=fql"]),
    ("pipeline", ["method=bc"]),
    ("export", ["method=vgf", "export.budget=1"]),
    ("finetune", ["method=vgf", "evaluate.budgets=[0]", "online.eval_every=20", "online.eval_episodes=2",
                  "online.max_episode_steps=15", "online.log_every=10", "online.steps=60"]),
]
# Exported programs and videos are keyed but not hashed (their bytes are not reproducible).
UNHASHED = (".pt2", ".onnx", ".mp4")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs `-m vgfcli`")
    parser.add_argument("--cwd", default=".", help="checkout to run in")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every command (e.g. task=...)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vgf-fingerprint-"))
    env = {**os.environ, "VGF_HOME": str(home), "OMP_NUM_THREADS": "1"}

    def vgf(*argv: str) -> dict:
        out = subprocess.run([args.python, "-m", "vgfcli", *argv, "--json"], cwd=args.cwd, env=env,
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"vgf {' '.join(argv)} failed: {out.stderr.strip()[-2000:]}")
        return json.loads(out.stdout)

    for command, extra in JOBS:
        vgf(command, *SMOKE, *args.overrides, *extra)
    runs = vgf("runs", "--limit", "1000")["runs"]
    fingerprint = []
    for r in runs:
        artifacts = next(home.rglob(f"{r['run_id']}/artifacts"), None)
        files = {}
        if artifacts is not None:
            for path in sorted(artifacts.rglob("*")):
                if path.is_file() and not path.name.endswith(UNHASHED) and "checkpoint" not in path.name:
                    files[str(path.relative_to(artifacts))] = sha256(path)
        fingerprint.append({"stage": r["stage"], "name": r.get("name"), "cache_key": r["cache_key"], "files": files})
    fingerprint.sort(key=lambda f: (f["stage"], f["name"] or "", f["cache_key"]))
    json.dump(fingerprint, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
