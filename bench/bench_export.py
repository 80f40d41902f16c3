"""Actions per second of an exported acting program (`vgf export`) against ``agent.act``, quick sizes.

The agent is VGF at the quick preset's sizes (3 x 256 networks, N = 8 particles, obs 28, action 5 as
cube-single, or --obs-dim / --act-dim) with untrained weights (speed does not depend on them); the program is what `vgf export`
makes of it (``vgfcli.stages.export.trace_acting``). Three ways to act on the same batch, timed in
alternating rounds: the program, ``agent.act`` as exported (fp32, eager) and ``agent.act`` as
`vgf evaluate` runs it (``amp=auto``: bf16 matmuls on CPUs with native bf16). Appends one JSON line per
(budget, batch) to results.jsonl.

    python bench/bench_export.py --budgets 0,3 --batches 10,64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgfcli.stages.export import trace_acting  # noqa: E402

from bench.common import add_common_args, append, apply_threads, machine  # noqa: E402
from vgfcli import methods  # noqa: E402
from vgfcli.methods.base import NullCounter  # noqa: E402
from vgfcli.nn.flow import FlowPolicy  # noqa: E402
from vgfcli.nn.noise import GivenNoise  # noqa: E402

HIDDEN, N = (256,) * 3, 8


def agent_with(amp: str, obs_dim: int, act_dim: int):
    torch.manual_seed(0)
    reference = FlowPolicy(obs_dim, act_dim, HIDDEN)
    agent = methods.load("vgf").Agent.create({"critic_hidden": HIDDEN, "actor_hidden": HIDDEN, "num_particles": N,
                                             "amp": amp, "compile": False}, obs_dim, act_dim, "cpu",
                                            reference=reference)
    agent.compute = NullCounter()
    return agent


def rate(fn, states: int, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls * states / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="0,3")
    parser.add_argument("--batches", default="10,64")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    add_common_args(parser)
    args = parser.parse_args()
    apply_threads(args)
    exported, evaluated = (agent_with(amp, args.obs_dim, args.act_dim) for amp in ("off", "auto"))
    evaluated.load_state_dict(exported.state_dict())
    for budget in (int(b) for b in args.budgets.split(",")):
        options = {"steps": budget, "num_particles": N}
        for batch in (int(b) for b in args.batches.split(",")):
            obs = torch.randn(batch, args.obs_dim, generator=torch.Generator().manual_seed(1))
            program, noise, expected, _ = trace_acting(exported, options, obs, seed=0)
            program = program.module()
            ways = {
                "program": lambda: program(obs, noise),
                "agent_fp32": lambda: exported.act(obs, generator=GivenNoise(noise), **options),
                "agent_evaluate": lambda: evaluated.act(obs, generator=GivenNoise(noise), **options),
            }
            best = {k: 0.0 for k in ways}
            with torch.inference_mode():
                for _ in range(args.rounds):
                    for name, fn in ways.items():
                        best[name] = max(best[name], rate(fn, batch, args.calls))
            diff = float((program(obs, noise) - expected).abs().max())
            row = {**machine(), "bench": "export", "method": "vgf", "budget": budget, "particles": N, "batch": batch,
                   **{f"{k}_actions_per_s": round(v, 1) for k, v in best.items()}, "parity_max_abs_diff": diff,
                   "evaluate_amp": evaluated.amp}
            print(f"L={budget} batch {batch}: program {best['program']:.0f}/s, agent.act fp32 {best['agent_fp32']:.0f}/s"
                  f" ({best['program'] / best['agent_fp32']:.2f}x), agent.act as evaluate ({evaluated.amp}) "
                  f"{best['agent_evaluate']:.0f}/s ({best['program'] / best['agent_evaluate']:.2f}x); |diff| {diff:.1e}")
            append(args.out, row)


if __name__ == "__main__":
    main()
