"""Speed of reading the tracking store: `vgf runs`, a cache lookup, and ``Store.get`` of an old run's
id prefix, on a store of many stage runs; two source trees side by side (before / after a change).

The store (``--runs`` finished stage runs, made straight through ``MlflowClient``, the way vgf tags them)
is built once under ``--home`` and reused. Each measurement is a fresh process, as a user's command is,
so it includes imports; the trees take turns in every repetition, so drifting load hits both alike.

    python bench/bench_runs.py --before /tmp/base --after . --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, append, machine  # noqa: E402

STAGES = ("collect", "ingest", "pretrain-policy", "train-critic", "evaluate")
EXPERIMENT = "vgf"

# Run in a child process with the tree under test first on sys.path: prints what the call found and
# how long the whole process and the call itself took.
PROBE = """
import json, sys, time
start = time.perf_counter()
from vgfcli.tracking import Store
store = Store({experiment!r})
call = time.perf_counter()
try:
    found = {expr}
except Exception as exc:
    found = "error: " + str(exc)
done = time.perf_counter()
print(json.dumps({{"found": found, "call_s": done - call, "process_s": done - start}}))
"""


def build_store(home: Path, runs: int) -> dict:
    """``runs`` finished stage runs, oldest first, one second apart; returns ids and keys to look up."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(home / "artifacts").as_uri())
    first_ms = int(time.time() * 1000) - runs * 1000
    ids, keys = [], []
    for i in range(runs):
        stage, start = STAGES[i % len(STAGES)], first_ms + i * 1000
        key = f"{i:064x}"
        run = client.create_run(experiment_id, start_time=start, tags={
            "vgf.stage": stage, "vgf.cache_key": key, MLFLOW_RUN_NAME: f"{stage} bench s{i}", "vgf.seed": str(i)})
        # a stage run logs its flattened config (~100 params): a search reads them back with each run
        client.log_batch(run.info.run_id, params=[Param(f"config.setting_{n}", str(n)) for n in range(100)],
                         metrics=[Metric(name, float(i), start, 0) for name in ("loss", "q_mean", "best_score")])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=start + 500)
        ids.append(run.info.run_id)
        keys.append(key)
    return {"runs": runs, "oldest_id": ids[0], "middle": {"stage": STAGES[(runs // 2) % len(STAGES)],
                                                        "key": keys[runs // 2]}}


def timed_process(cmd: list[str], tree: Path, home: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "VGF_HOME": str(home), "OMP_NUM_THREADS": "1",
           "MUJOCO_GL": "egl", "COLUMNS": "160"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} in {tree} failed:\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="source tree before the change")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1], help="tree after it")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "vgf-bench-runs",
                        help="VGF_HOME of the store (built there once, then reused)")
    parser.add_argument("--out", default=str(RESULTS), help="JSON-lines file the result is appended to")
    args = parser.parse_args()

    facts_file = args.home / "bench-facts.json"
    if not facts_file.exists() or json.loads(facts_file.read_text())["runs"] != args.runs:
        if args.home.exists():
            raise SystemExit(f"{args.home} holds another store: remove it or pick another --home")
        start = time.perf_counter()
        facts_file.parent.mkdir(parents=True)
        facts_file.write_text(json.dumps(build_store(args.home, args.runs)))
        print(f"built a store of {args.runs} runs in {time.perf_counter() - start:.0f} s: {args.home}")
    facts = json.loads(facts_file.read_text())

    py, oldest, middle = sys.executable, facts["oldest_id"][:8], facts["middle"]
    probe = {
        "get(oldest prefix)": f"store.get({oldest!r}).run_id",
        "cached(hit)": f"[r.run_id for r in store.find(stage={middle['stage']!r}, cache_key={middle['key']!r})]",
        "cached(miss)": f"[r.run_id for r in store.find(stage={middle['stage']!r}, cache_key='f' * 64)]",
    }
    commands = {"vgf runs --limit 50": [py, "-m", "vgfcli", "runs", "--limit", "50"],
                "vgf runs --limit 50 --json": [py, "-m", "vgfcli", "runs", "--limit", "50", "--json"]}
    commands |= {name: [py, "-c", PROBE.format(experiment=EXPERIMENT, expr=expr)] for name, expr in probe.items()}
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}

    times = {(name, side): [] for name in commands for side in trees}
    calls, found = {key: [] for key in times}, {}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            for side, tree in trees.items():  # taking turns: the same load for both
                elapsed, out = timed_process(cmd, tree, args.home)
                times[name, side].append(elapsed)
                if name in probe:
                    result = json.loads(out)
                    calls[name, side].append(result["call_s"])
                    found[name, side] = result["found"]

    load = os.getloadavg()
    print(f"{facts['runs']} runs, {args.repeats} repetitions, median seconds per process (in-call time for "
          f"lookups); load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'command':28} {'before':>8} {'after':>8}   before call / after call")
    rows = {}
    for name in commands:
        before, after = (statistics.median(times[name, s]) for s in trees)
        row = {"before_s": round(before, 3), "after_s": round(after, 3)}
        line = f"{name:28} {before:8.2f} {after:8.2f}"
        if name in probe:
            row |= {f"{s}_call_s": round(statistics.median(calls[name, s]), 4) for s in trees}
            row |= {f"{s}_found": str(found[name, s])[:60] for s in trees}
            line += f"   {row['before_call_s']:.3f} / {row['after_call_s']:.3f}"
        rows[name] = row
        print(line)
    for name in probe:
        print(f"  {name}: before -> {rows[name]['before_found']}; after -> {rows[name]['after_found']}")
    append(args.out, {**machine(), "bench": "runs", "runs": facts["runs"], "repeats": args.repeats,
                      "results": rows})


if __name__ == "__main__":
    main()
