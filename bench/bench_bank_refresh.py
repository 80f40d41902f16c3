"""Cost of VGF's rolling particle-bank refresh against the update it rides on.

    python bench/bench_bank_refresh.py --preset quick --threads 2

The bank redraws ``bank_refresh_rows`` rows every ``bank_refresh_every`` updates (defaults of
vgfcli/methods/vgf.py). Times one refresh (one slice of the bank: rows x bank_size samples, K Euler
steps of the reference) and one update, in the same process, and reports the refresh's share of an
update: time(refresh) / (bank_refresh_every x time(update)). The goal is < 10 %.
``--clock cpu`` times with the process's CPU time instead of wall time: with ``--threads 1`` the
ratio then holds on a machine where other jobs run too (the record keeps the clock and the load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_common_args, append, apply_threads, machine  # noqa: E402
from vgfcli.methods.vgf import VGFAgent, VGFConfig  # noqa: E402

# The quick and paper presets' VGF sizes (conf/preset/*.yaml, conf/tuning/vgf_quick.yaml).
PRESETS = {"quick": dict(hidden=(256, 256, 256), batch=128, particles=8),
           "paper": dict(hidden=(512, 512, 512, 512), batch=256, particles=10)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--states", type=int, default=50_000, help="dataset next states in the bank")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    add_common_args(p)
    args = p.parse_args(argv)
    apply_threads(args)
    size = PRESETS[args.preset]
    defaults = VGFConfig()
    agent = VGFAgent.create(None, args.obs_dim, args.act_dim, "cpu", critic_hidden=size["hidden"],
                            actor_hidden=size["hidden"], num_particles=size["particles"])
    g = torch.Generator().manual_seed(0)
    next_obs = torch.randn(args.states, args.obs_dim, generator=g)
    agent.prepare(next_obs)
    n = size["batch"]

    def batch():
        idx = torch.randint(0, args.states, (n,), generator=g)
        return {"observations": torch.randn(n, args.obs_dim, generator=g), "actions": torch.rand(n, args.act_dim) * 2 - 1,
                "rewards": torch.randn(n, generator=g), "masks": torch.ones(n), "next_observations": next_obs[idx],
                "indices": idx}

    clock = time.perf_counter if args.clock == "wall" else time.process_time

    def timed(fn) -> float:
        start = clock()
        fn()
        return clock() - start

    agent.cfg.bank_refresh_every = 0  # time the update alone
    agent.update(batch())
    updates = [timed(lambda: agent.update(batch())) for _ in range(args.repeats * 2)]
    refreshes = [timed(lambda c=c: agent._fill_slice(c % agent._rolling.slices, 1)) for c in range(args.repeats)]
    update_s, refresh_s = statistics.median(updates), statistics.median(refreshes)
    share = refresh_s / (defaults.bank_refresh_every * update_s)
    record = {"bench": "bank_refresh", "preset": args.preset, "update_ms": round(update_s * 1e3, 2),
              "refresh_ms": round(refresh_s * 1e3, 2), "bank_refresh_every": defaults.bank_refresh_every,
              "bank_refresh_rows": defaults.bank_refresh_rows, "bank_size": defaults.bank_size,
              "refresh_share_of_update": round(share, 4), "clock": args.clock, **machine()}
    print(f"{args.preset}: update {update_s * 1e3:.1f} ms, refresh of {defaults.bank_refresh_rows} rows "
          f"{refresh_s * 1e3:.1f} ms every {defaults.bank_refresh_every} updates -> {share:.1%} of the update time")
    append(args.out, record)


if __name__ == "__main__":
    main()
