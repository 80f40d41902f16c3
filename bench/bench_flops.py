"""Matmul FLOPs of one VGF update, the official code's against vgf's, from the layer widths alone.

    python bench/bench_flops.py                 # quick and paper sizes (bench_vs_official's CONFIGS)

Both codes run their GEMMs at about the same rate on an AVX2 CPU in fp32 (bench_vs_official's GEMM
ceiling: ~100 GFLOP/s a core for torch; XLA does not use AVX-512 at all, so its rate is the same on
both CPU kinds), and at the quick and paper sizes the GEMMs are most of an update. So the ratio of the
two FLOP counts bounds the update's speed-up when both run fp32 GEMMs at that rate: vgf can be faster
than the official by less work (no Euler sampling per update: the particle bank; the observation's share
of the critic's first layer once per state), or by GEMMs faster than the ceiling, which fp32 on AVX2 has
no room for. The count is exact arithmetic, not a timing.

Per update, with B the batch, N particles, K Euler steps, L transport steps, M critic members:
- official (agents/vgf.py ``update``): K Euler steps of the BC flow on B*N rows; L transport steps, each a
  forward and an input-gradient backward of the online critic on B*N rows; the target critic's forward
  on B*N rows; the TD loss's forward and backward (with weight gradients) on B rows; the BC flow's loss
  forward and backward on B rows.
- vgf: the same transport, target and TD loss (the observation's share of the first layer once per
  state), the reference flow's loss in its own stage (one update per critic update in the e2e bench),
  and the bank's K Euler steps on its S*M_bank rows, once per run (``--bank-fill``), counted per update
  over ``--updates``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_official import CONFIGS  # noqa: E402


def mlp_macs(inputs: int, hidden: list[int], out: int, rows: float) -> float:
    widths = [inputs, *hidden, out]
    return rows * sum(a * b for a, b in zip(widths, widths[1:]))


def update_flops(c: dict, obs: int, act: int, members: int = 2) -> dict:
    h, b, n, k, steps = c["hidden"], c["batch"], c["particles"], c["flow_steps"], c["train_steps"]
    rows = b * n
    critic_fwd = members * mlp_macs(obs + act, h, 1, rows)
    # input-gradient backward: every layer's transpose, the first layer's action columns alone
    critic_bwd = members * (mlp_macs(0, h, 1, rows) + rows * act * h[0])
    obs_share = members * rows * obs * h[0]  # the official projects it per particle; vgf once per state
    td = 3 * members * mlp_macs(obs + act, h, 1, b)
    bc = 3 * mlp_macs(obs + act + 1, h, act, b)
    euler = k * mlp_macs(obs + act + 1, h, act, rows)
    official = euler + steps * (critic_fwd + critic_bwd) + critic_fwd + td + bc
    ours = (steps * (critic_fwd - obs_share + critic_bwd) + critic_fwd - obs_share
            + members * b * obs * h[0] * 2 + td + bc)
    return {"official_gflop": 2 * official / 1e9, "vgf_gflop": 2 * ours / 1e9,
            "euler_share_of_official": euler / official}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--obs-dim", type=int, default=28)
    p.add_argument("--act-dim", type=int, default=5)
    p.add_argument("--updates", type=int, default=1_000_000, help="for the bank fill's share per update")
    p.add_argument("--bank-states", type=int, default=1_000_000, help="dataset next states S")
    p.add_argument("--bank-size", type=int, default=32, help="samples per state M_bank")
    args = p.parse_args(argv)
    out = {}
    for name, c in CONFIGS.items():
        row = update_flops(c, args.obs_dim, args.act_dim)
        fill = c["flow_steps"] * mlp_macs(args.obs_dim + args.act_dim + 1, c["hidden"], args.act_dim,
                                          args.bank_states * args.bank_size)
        row["vgf_gflop_with_bank"] = row["vgf_gflop"] + 2 * fill / 1e9 / args.updates
        row["bound_at_equal_gemm_rate"] = row["official_gflop"] / row["vgf_gflop_with_bank"]
        out[name] = {k: round(v, 3) for k, v in row.items()}
        print(f"{name}: official {row['official_gflop']:.2f} GFLOP/update, vgf {row['vgf_gflop']:.2f} "
              f"(+ bank {row['vgf_gflop_with_bank'] - row['vgf_gflop']:.3f}): at one GEMM rate vgf is at most "
              f"{row['bound_at_equal_gemm_rate']:.2f}x the official")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
