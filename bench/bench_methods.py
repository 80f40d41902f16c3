"""train-critic updates/s of every method, at the quick and paper sizes, through the method contract.

One update = ``agent.update(batch)`` exactly as train-critic runs it (VGF with its particle bank, as
its default; QGF's IQL critic; QAM's critic + adjoint matching; FQL's critic + one-step policy). Sizes
follow the presets: paper = 4 x 512 networks, batch 256; quick = 3 x 256, batch 128 (VGF N = 8).
Dims default to cube-single's (obs 28, action 5). Appends one JSON line per method to results.jsonl.

    python bench/bench_methods.py --preset quick
    python bench/bench_methods.py --preset paper --methods vgf,qam --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_common_args, append, apply_threads, machine  # noqa: E402
from vgfcli import methods  # noqa: E402
from vgfcli.nn.flow import FlowPolicy  # noqa: E402

PRESETS = {
    "paper": dict(hidden=(512,) * 4, batch=256, overrides={"vgf": {"num_particles": 10}, "fql": {}}),
    "quick": dict(hidden=(256,) * 3, batch=128, overrides={"vgf": {"num_particles": 8},
                                                           "fql": {"onestep_hidden": (256,) * 3}}),
}
ROWS = 4096  # dataset rows behind the batch indices (VGF's bank covers them)


def make_batch(n: int, obs_dim: int, act_dim: int, gen: torch.Generator, device) -> dict:
    return {
        "observations": torch.randn(n, obs_dim, generator=gen).to(device),
        "actions": (torch.rand(n, act_dim, generator=gen) * 2 - 1).to(device),
        "rewards": -torch.rand(n, generator=gen).to(device), "masks": torch.ones(n, device=device),
        "next_observations": torch.randn(n, obs_dim, generator=gen).to(device),
        "indices": torch.randint(0, ROWS, (n,), generator=gen).to(device),
    }


def bench_method(name: str, preset: dict, obs_dim: int, act_dim: int, steps: int, device) -> dict:
    module = methods.load(name)
    torch.manual_seed(0)
    reference = FlowPolicy(obs_dim, act_dim, preset["hidden"])
    values = {"critic_hidden": preset["hidden"], "actor_hidden": preset["hidden"], **preset["overrides"].get(name, {})}
    fields = {f for f in module.Config.__dataclass_fields__}
    agent = module.Agent.create({k: v for k, v in values.items() if k in fields}, obs_dim, act_dim, device,
                                reference=reference)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    agent.prepare(torch.randn(ROWS, obs_dim, generator=gen).to(device))
    prepare_s = time.perf_counter() - t0
    batch = make_batch(preset["batch"], obs_dim, act_dim, gen, device)
    for _ in range(2):
        agent.update(batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        agent.update(batch)
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    return {"method": name, "update_ms": round(median * 1e3, 2), "updates_per_s": round(1 / median, 2),
            "prepare_s_per_4096_states": round(prepare_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--methods", default="vgf,qgf,qam,fql")
    parser.add_argument("--steps", type=int, default=10, help="timed updates per method (median reported)")
    parser.add_argument("--device", default="cpu")
    add_common_args(parser)
    args = parser.parse_args()
    apply_threads(args)
    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    for name in args.methods.split(","):
        if not methods.load(name).Agent.trains:
            print(f"{name}: nothing to train, skipped")
            continue
        row = bench_method(name, preset, args.obs_dim, args.act_dim, args.steps, device)
        record = {**machine(), "bench": "method_update", "preset": args.preset, "device": str(device),
                  "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "obs_dim": args.obs_dim,
                  "act_dim": args.act_dim, "hidden": list(preset["hidden"]), "batch": preset["batch"], **row}
        print(json.dumps(record), flush=True)
        append(args.out, record)


if __name__ == "__main__":
    main()
