"""Speed of the other two hot loops: pretrain-policy updates/s and evaluate actions/s.

pretrain-policy: one flow-matching step (forward, backward, Adam) of the reference flow on a batch.
evaluate: ``VGFAgent.act`` on a batch of states (the lockstep envs' observations) per budget L, with N
particles; the reference row (N = 1, L = 0) too. Sizes follow the presets (network widths, batch,
N, K). The critic update has its own script, bench_vgf_update.py.

    python bench/bench_stages.py --preset quick --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_common_args, append, apply_threads, machine  # noqa: E402
from vgfcli.methods.vgf import VGFAgent  # noqa: E402
from vgfcli.nn.flow import FlowPolicy  # noqa: E402

PRESETS = {  # widths of the flow and the critic, batch, particles N, Euler steps K
    "paper": dict(hidden=(512,) * 4, batch=256, particles=10, flow_steps=10),
    "quick": dict(hidden=(256,) * 3, batch=256, particles=10, flow_steps=10),
}


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_pretrain(p: dict, obs_dim: int, act_dim: int, steps: int) -> float:
    flow = FlowPolicy(obs_dim, act_dim, p["hidden"])
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-4)
    obs, actions = torch.randn(p["batch"], obs_dim), torch.rand(p["batch"], act_dim) * 2 - 1

    def step():
        loss = flow.loss(obs, actions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return 1.0 / timed(step, steps)


def bench_act(p: dict, obs_dim: int, act_dim: int, states: int, budgets: list[int], repeats: int) -> dict:
    agent = VGFAgent.create({"critic_hidden": p["hidden"], "actor_hidden": p["hidden"],
                             "num_particles": p["particles"], "flow_steps": p["flow_steps"]}, obs_dim, act_dim)
    obs = torch.randn(states, obs_dim)
    rows = {"reference": (0, 1)} | {f"L={b}": (b, p["particles"]) for b in budgets}
    out = {}
    with torch.inference_mode():
        for label, (steps, n) in rows.items():
            seconds = timed(lambda: agent.act(obs, steps=steps, num_particles=n), repeats)
            out[label] = {"ms_per_call": round(seconds * 1e3, 2), "actions_per_s": round(states / seconds, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--steps", type=int, default=50, help="timed pretrain updates")
    parser.add_argument("--states", type=int, default=10, help="states per act call (the lockstep envs)")
    parser.add_argument("--repeats", type=int, default=10, help="timed act calls per budget")
    add_common_args(parser)
    args = parser.parse_args()
    apply_threads(args)
    torch.manual_seed(0)
    p = PRESETS[args.preset]
    pretrain = bench_pretrain(p, args.obs_dim, args.act_dim, args.steps)
    act = bench_act(p, args.obs_dim, args.act_dim, args.states, [0, 1, 2, 3], args.repeats)
    print(f"{args.preset}: pretrain-policy {pretrain:,.1f} updates/s (batch {p['batch']}, widths {p['hidden']})")
    for label, row in act.items():
        print(f"  act {label:>9}: {row['ms_per_call']:8.2f} ms per call of {args.states} states, "
              f"{row['actions_per_s']:,.1f} actions/s")
    append(args.out, {**machine(), "bench": "stages", "preset": args.preset,
                      "pretrain_updates_per_s": round(pretrain, 1), "act": act, "states": args.states})


if __name__ == "__main__":
    main()
