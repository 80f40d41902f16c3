"""Speed of the VGF critic update and of acting, at the paper config or a quick one.

    python bench/bench_vgf_update.py --preset paper --bank both --steps 10
    python bench/bench_vgf_update.py --preset quick --bank off --device cpu --compile on

Paper config: 4 x 512 critic (2 members, LayerNorm) and reference flow, batch 256, N = 10 particles,
K = 10 Euler steps, L_train = 3 transport steps. Reports updates/s with the particle bank (reference
samples drawn from a precomputed bank) and without it (K Euler steps per update), a per-phase
breakdown of one update (reference sampling, transport, target critic, critic step), and actions/s of
``act`` for one observation and for a batch. Appends one JSON line per run to bench/results.jsonl.
For scale: the official JAX code takes ~360 ms per update at the paper config on an AVX-512 CPU
(shared/PERFORMANCE.md); every figure here depends on the machine and on its load, which is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgfcli.methods.vgf import VGFAgent, build_bank  # noqa: E402

PRESETS = {
    "paper": dict(hidden=(512, 512, 512, 512), batch=256, particles=10, flow_steps=10, train_steps=3),
    "quick": dict(hidden=(256, 256), batch=64, particles=8, flow_steps=5, train_steps=2),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--bank", choices=["on", "off", "both"], default="both")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=10, help="timed updates per setting (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--obs-dim", type=int, default=40)
    p.add_argument("--act-dim", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--amp", choices=["off", "bf16"], default="off",
                   help="bf16 autocast of sampling and transport (needs native bf16 matmul)")
    p.add_argument("--compile", choices=["on", "off"], default="off")
    p.add_argument("--act-evals", type=int, default=20, help="act calls timed per act setting")
    p.add_argument("--breakdown", choices=["on", "off"], default="on")
    p.add_argument("--out", default=str(Path(__file__).with_name("results.jsonl")))
    return p.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


LAST_CPU = {}


def timed(fn, device, repeats):
    """Median wall seconds of ``fn`` over ``repeats`` calls; the median process CPU seconds (all
    threads) go to LAST_CPU["s"]: on a shared machine, CPU time with --threads 1 is the figure
    least disturbed by other processes."""
    times, cpu = [], []
    for _ in range(repeats):
        sync(device)
        start, cstart = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cstart)
    times.sort()
    cpu.sort()
    LAST_CPU["s"] = cpu[len(cpu) // 2]
    return times[len(times) // 2]


def make_batch(n, obs_dim, act_dim, dataset_rows, device, gen):
    idx = torch.randint(0, dataset_rows, (n,), generator=gen)
    return {
        "observations": torch.randn(n, obs_dim, generator=gen).to(device),
        "actions": (torch.rand(n, act_dim, generator=gen) * 2 - 1).to(device),
        "rewards": -torch.rand(n, generator=gen).to(device),
        "masks": torch.ones(n, device=device),
        "next_observations": torch.randn(n, obs_dim, generator=gen).to(device),
        "indices": idx.to(device),
    }


def breakdown(agent, batch, device, repeats):
    """Seconds per phase of one update (each phase timed on its own)."""
    cfg = agent.cfg
    nxt = batch["next_observations"]
    out = {}
    out["sample_euler"] = timed(lambda: agent.reference_samples(nxt, cfg.num_particles), device, repeats)
    start = agent.reference_samples(nxt, cfg.num_particles)
    out["transport"] = timed(lambda: agent.transport(nxt, start, cfg.train_steps), device, repeats)

    def target_eval():
        with torch.no_grad():
            agent.target_critic(nxt.unsqueeze(1), start)

    out["target_critic"] = timed(target_eval, device, repeats)

    def critic_step():
        qs = agent.critic(batch["observations"], batch["actions"])
        loss = (qs - batch["rewards"]).square().sum(0).mean()
        agent.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    out["critic_fwd_bwd"] = timed(critic_step, device, repeats)
    return {k: round(v * 1e3, 2) for k, v in out.items()}


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    torch.manual_seed(0)
    agent = VGFAgent.create(
        None, args.obs_dim, args.act_dim, device,
        critic_hidden=preset["hidden"], actor_hidden=preset["hidden"],
        num_particles=preset["particles"], flow_steps=preset["flow_steps"],
        train_steps=preset["train_steps"], test_steps=preset["train_steps"],
        amp=args.amp, compile=args.compile == "on",
    )
    gen = torch.Generator().manual_seed(0)
    rows = 4096
    batch = make_batch(preset["batch"], args.obs_dim, args.act_dim, rows, device, gen)
    record = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bench": "vgf_update",
        "preset": args.preset,
        "device": args.device, "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0],
        "torch": torch.__version__, "amp": args.amp, "compile": args.compile,
        "obs_dim": args.obs_dim, "act_dim": args.act_dim, **{k: list(v) if isinstance(v, tuple) else v
                                                              for k, v in preset.items()},
    }
    settings = ["off", "on"] if args.bank == "both" else [args.bank]
    for setting in settings:
        if setting == "on":
            t0 = time.perf_counter()
            bank = build_bank(agent.reference, torch.randn(rows, args.obs_dim, generator=gen).to(device),
                              per_state=max(32, preset["particles"]), steps=preset["flow_steps"],
                              storage_device=device, amp=args.amp)
            record["bank_build_s_per_1k_states"] = round((time.perf_counter() - t0) / rows * 1e3, 3)
            agent.set_bank(bank)
        else:
            agent.set_bank(None)
        for _ in range(args.warmup):
            agent.update(batch)
        sec = timed(lambda: agent.update(batch), device, args.steps)
        record[f"update_ms_bank_{setting}"] = round(sec * 1e3, 2)
        record[f"updates_per_s_bank_{setting}"] = round(1.0 / sec, 3)
        record[f"update_cpu_ms_bank_{setting}"] = round(LAST_CPU["s"] * 1e3, 2)
        print(f"bank {setting}: {sec * 1e3:.1f} ms/update ({LAST_CPU['s'] * 1e3:.1f} ms CPU), "
              f"{1 / sec:.2f} updates/s", flush=True)
    agent.set_bank(None)
    if args.breakdown == "on":
        record["phase_ms"] = breakdown(agent, batch, device, max(3, args.steps // 2))
        print("phase ms:", record["phase_ms"], flush=True)
    for n_obs in (1, 50):
        obs = torch.randn(n_obs, args.obs_dim, generator=gen).to(device)
        agent.act(obs)
        sec = timed(lambda: agent.act(obs), device, args.act_evals)
        record[f"act_ms_batch{n_obs}"] = round(sec * 1e3, 2)
        record[f"actions_per_s_batch{n_obs}"] = round(n_obs / sec, 1)
        print(f"act batch {n_obs}: {sec * 1e3:.1f} ms, {n_obs / sec:.0f} actions/s", flush=True)
    record["loadavg_1m_end"] = os.getloadavg()[0]
    with open(args.out, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
