"""vgf against the official VGF code (ryanxhr/vgf, JAX), side by side in one process tree.

    python bench/bench_vs_official.py --setup                 # once: scratch clone + scratch venv
    python bench/bench_vs_official.py --threads 2             # the ratio table

The official code lives in a scratch folder (``--scratch``, default ``$TMPDIR/vgf-official``) with its
own venv, never in this repository. ``--setup`` fills it: ``git clone`` of the repository (or
``--official-src`` = a local git directory, e.g. a mirror), pinned to ``--official-commit``, and a venv
with JAX on CPU. Each side then runs in its own child process with the same thread pinning, one after
the other (never concurrently), on the same synthetic batch shapes:

- update: one critic update (official: its ``update``, critic + BC actor, fresh Euler samples; vgf:
  ``VGFAgent.update`` with the particle bank, the reference pretrained apart), median ms;
- act: actions/s for 10 states at L = 0 and L = 3 (the official ``sample_actions`` is written for one
  observation; given 10 it runs 10 groups of N particles, the same work, so it times the same);
- the machine's GEMM ceiling (torch fp32 and bf16 2560x512 @ 512x512) in the same run.

Each vgf variant (``--variants``, see ``VARIANTS``) is a column. The results file keeps
every run with the CPU's flags. A timing means something only on a quiet machine: the load average
before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, append, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_URL = "https://github.com/ryanxhr/vgf"
OFFICIAL_COMMIT = "3ec8f9b6b26ca6239f9d7f635b097ac3b22a76ba"
OFFICIAL_PIP = ["jax[cpu]==0.10.2", "flax==0.12.8", "optax==0.2.8", "distrax==0.1.9", "chex==0.1.92",
                "ml_collections==1.1.0", "numpy"]
CONFIGS = {  # hidden widths (critic and reference flow), batch, particles N, Euler steps K, L_train
    "paper": dict(hidden=[512, 512, 512, 512], batch=256, particles=10, flow_steps=10, train_steps=3),
    "quick": dict(hidden=[256, 256, 256], batch=128, particles=8, flow_steps=10, train_steps=3),
}
ACT_STATES, ACT_BUDGETS = 10, (0, 3)
VARIANTS = {  # vgf settings per table column
    "autograd": dict(closed_form=False, compile=False, amp="off"),  # the transport through torch.autograd
    "eager": dict(closed_form=True, compile=False, amp="off"),
    "compiled": dict(closed_form=True, compile=True, amp="off"),
    "eager-bf16": dict(closed_form=True, compile=False, amp="bf16"),
    "compiled-bf16": dict(closed_form=True, compile=True, amp="bf16"),
}

# The official side's driver: written into the scratch folder at run time (it imports their code).
OFFICIAL_DRIVER = r'''
import json, sys, time
import numpy as np, jax
sys.path.insert(0, sys.argv[1])
from agents.vgf import VGFAgent, get_config
spec = json.loads(sys.argv[2])
out = {}
for name, c in spec["configs"].items():
    cfg = get_config()
    cfg.update(dict(actor_hidden_dims=tuple(c["hidden"]), value_hidden_dims=tuple(c["hidden"]),
                    vgf_particles=c["particles"], train_vgf_steps=c["train_steps"], bc_flow_steps=c["flow_steps"],
                    vgf_lr=0.05, vgf_alpha=0.5, train_q_agg="mean", batch_size=c["batch"]))
    o, a = spec["obs_dim"], spec["act_dim"]
    agent = VGFAgent.create(0, np.zeros((1, o), np.float32), np.zeros((1, a), np.float32), cfg)
    rng = np.random.default_rng(0)
    b = c["batch"]
    batch = dict(observations=rng.normal(size=(b, o)).astype(np.float32),
                 next_observations=rng.normal(size=(b, o)).astype(np.float32),
                 actions=rng.uniform(-1, 1, (b, a)).astype(np.float32), rewards=np.zeros(b, np.float32),
                 masks=np.ones(b, np.float32), terminals=np.zeros(b, np.float32))
    t0 = time.perf_counter()
    agent, info = agent.update(batch); jax.block_until_ready(info)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(spec["steps"]):
        t = time.perf_counter(); agent, info = agent.update(batch); jax.block_until_ready(info)
        times.append(time.perf_counter() - t)
    row = {"update_ms": 1e3 * float(np.median(times)), "update_compile_s": compile_s}
    obs = rng.normal(size=(spec["act_states"], o)).astype(np.float32)
    key = jax.random.PRNGKey(0)
    for L in spec["budgets"]:
        jax.block_until_ready(agent.sample_actions(obs, seed=key, eval_vgf_steps=L))
        times = []
        for _ in range(spec["act_calls"]):
            t = time.perf_counter()
            jax.block_until_ready(agent.sample_actions(obs, seed=key, eval_vgf_steps=L))
            times.append(time.perf_counter() - t)
        row[f"actions_per_s_L{L}"] = spec["act_states"] / float(np.median(times))
    out[name] = row
print("RESULT " + json.dumps(out))
'''


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "vgf-official"))
    p.add_argument("--setup", action="store_true", help="make the scratch clone and venv, then exit")
    p.add_argument("--official-src", default=OFFICIAL_URL, help="git URL or local git dir of ryanxhr/vgf")
    p.add_argument("--official-commit", default=OFFICIAL_COMMIT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default="paper,quick")
    p.add_argument("--variants", default="autograd,eager,compiled,compiled-bf16",
                   help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=15, help="timed updates per setting")
    p.add_argument("--act-calls", type=int, default=30)
    p.add_argument("--obs-dim", type=int, default=28)
    p.add_argument("--act-dim", type=int, default=5)
    p.add_argument("--skip-official", action="store_true", help="vgf rows only")
    p.add_argument("--rounds", type=int, default=1, help="repeat both sides, alternating; the table shows medians")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--end-to-end", action="store_true", help="the whole run side by side (bench_end_to_end.py)")
    p.add_argument("--task", default="cube-single-play-singletask-task1-v0", help="--end-to-end: the OGBench task")
    p.add_argument("--config", default="quick", help="--end-to-end: quick | paper sizes")
    p.add_argument("--updates", type=int, default=2000, help="--end-to-end: updates (official) = policy and critic "
                   "updates each (vgf)")
    p.add_argument("--episodes", type=int, default=10, help="--end-to-end: evaluation episodes per L")
    p.add_argument("--data-episodes", type=int, default=100, help="--end-to-end: episodes vgf collect makes")
    p.add_argument("--isa", default="native", choices=("native", "avx2"),
                   help="avx2: hold both sides to AVX2 (torch, oneDNN, MKL, XLA) and vgf to fp32")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run vgf's side from this JSON spec
    return p.parse_args(argv)


def setup(args) -> None:
    scratch = Path(args.scratch)
    repo = scratch / "vgf"
    if not repo.exists():
        scratch.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", args.official_src, str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "--quiet", args.official_commit], check=True)
    venv = scratch / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *OFFICIAL_PIP], check=True)
    print(f"official code at {repo}, venv at {venv}")


# --isa avx2: both sides held to AVX2 on an AVX-512 machine, standing in for an AVX2-only CPU (torch's
# kernels, oneDNN's and MKL's GEMMs, XLA's code generation)
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def pinned_env(threads: int) -> dict:
    env = dict(os.environ)
    xla = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
    if env.get("ATEN_CPU_CAPABILITY") == "avx2":
        xla += " --xla_cpu_max_isa=AVX2"
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), JAX_PLATFORMS="cpu", XLA_FLAGS=xla)
    return env


def pin_cores(threads: int):
    """The child's CPU affinity: its first ``threads`` allowed cores (XLA has no thread-count flag, so
    both sides are held to the same cores this way)."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    return lambda: os.sched_setaffinity(0, cores)


def run_child(cmd: list[str], threads: int) -> dict:
    proc = subprocess.run(cmd, env=pinned_env(threads), capture_output=True, text=True,
                          preexec_fn=pin_cores(threads))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"error: a bench child failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")


def official_side(args, configs: dict) -> dict:
    scratch = Path(args.scratch)
    python, repo = scratch / "venv" / "bin" / "python", scratch / "vgf"
    if not python.exists() or not repo.exists():
        raise SystemExit(f"error: no official code in {scratch}: run with --setup first")
    driver = scratch / "driver_official.py"
    driver.write_text(OFFICIAL_DRIVER)
    spec = dict(configs=configs, obs_dim=args.obs_dim, act_dim=args.act_dim, steps=args.steps,
                act_states=ACT_STATES, budgets=list(ACT_BUDGETS), act_calls=args.act_calls)
    return run_child([str(python), str(driver), str(repo), json.dumps(spec)], args.threads)


def vgf_side(args, configs: dict, variant: str) -> dict:
    spec = dict(configs=configs, variant=variant, obs_dim=args.obs_dim, act_dim=args.act_dim, steps=args.steps,
                act_calls=args.act_calls, threads=args.threads)
    return run_child([sys.executable, __file__, "--worker", json.dumps(spec)], args.threads)


def worker(spec: dict) -> None:
    """vgf's side, in its own process: median ms per update and actions/s, per config."""
    import torch

    sys.path.insert(0, str(ROOT))
    from vgfcli.methods.vgf import VGFAgent

    torch.set_num_threads(spec["threads"])
    variant = spec["variant"]
    out = {"gemm": gemm_ceiling()}
    for name, c in spec["configs"].items():
        torch.manual_seed(0)
        agent = VGFAgent.create(None, spec["obs_dim"], spec["act_dim"], critic_hidden=tuple(c["hidden"]),
                                actor_hidden=tuple(c["hidden"]), num_particles=c["particles"],
                                flow_steps=c["flow_steps"], train_steps=c["train_steps"], alpha=0.5,
                                vgf_lr=0.05, **VARIANTS[variant])
        gen = torch.Generator().manual_seed(0)
        rows, b = 4096, c["batch"]
        agent.prepare(torch.randn(rows, spec["obs_dim"], generator=gen))
        batch = {"observations": torch.randn(b, spec["obs_dim"], generator=gen),
                 "actions": torch.rand(b, spec["act_dim"], generator=gen) * 2 - 1,
                 "rewards": -torch.rand(b, generator=gen), "masks": torch.ones(b),
                 "next_observations": torch.randn(b, spec["obs_dim"], generator=gen),
                 "indices": torch.randint(0, rows, (b,), generator=gen)}
        t0 = time.perf_counter()
        for _ in range(3):
            agent.update(batch)
        row = {"update_warmup_s": time.perf_counter() - t0}
        row["update_ms"] = 1e3 * median_time(lambda: agent.update(batch), spec["steps"])
        obs = torch.randn(ACT_STATES, spec["obs_dim"], generator=gen)
        for L in ACT_BUDGETS:
            with torch.inference_mode():
                agent.act(obs, steps=L)
                sec = median_time(lambda: agent.act(obs, steps=L), spec["act_calls"])
            row[f"actions_per_s_L{L}"] = ACT_STATES / sec
        row["compile_s"] = agent.compile_seconds  # update and acting, all shapes
        out[name] = row
    print("RESULT " + json.dumps(out))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def gemm_ceiling() -> dict:
    """GFLOP/s of a 2560x512 @ 512x512 matmul in fp32 and bf16 (the paper config's transport GEMM)."""
    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, w = torch.randn(2560, 512, dtype=dtype), torch.randn(512, 512, dtype=dtype)
        for _ in range(5):
            a @ w
        sec = median_time(lambda: a @ w, 50)
        out[str(dtype).replace("torch.", "")] = 2 * 2560 * 512 * 512 / sec / 1e9
    return out


def median_rows(results: list[dict]) -> dict:
    """Per config and figure, the median over rounds (nested dicts of numbers)."""
    if not results or not results[0]:
        return {}
    out = {}
    for key, value in results[0].items():
        if isinstance(value, dict):
            out[key] = median_rows([r[key] for r in results])
        else:
            values = sorted(r[key] for r in results)
            out[key] = values[len(values) // 2] if len(values) % 2 else 0.5 * (values[len(values) // 2 - 1]
                                                                                + values[len(values) // 2])
    return out


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def table(official: dict, ours: dict, configs) -> str:
    lines = ["| config | what | official | " + " | ".join(f"vgf {v}" for v in ours) + " |",
             "|---|---|---|" + "---|" * len(ours)]
    for name in configs:
        for key, unit, better in (("update_ms", "ms/update", "lower"), ("actions_per_s_L0", "actions/s L=0", "higher"),
                                  ("actions_per_s_L3", "actions/s L=3", "higher")):
            ref = official.get(name, {}).get(key)
            cells = []
            for res in ours.values():
                val = res[name][key]
                ratio = "" if ref is None else f" ({(ref / val if better == 'lower' else val / ref):.2f}x)"
                cells.append(f"{val:.1f}{ratio}")
            lines.append(f"| {name} | {unit} | {'-' if ref is None else f'{ref:.1f}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if args.setup:
        return setup(args)
    if args.isa == "avx2":
        os.environ.update(AVX2_ENV)
    if args.end_to_end:
        from bench_end_to_end import end_to_end

        result = end_to_end(args)
        print(json.dumps(result, indent=1))
        append(args.out, {"bench": "end_to_end", **machine(), "threads": args.threads, "cpu_flags": cpu_flags(),
                          "task": args.task, "config": args.config, "updates": args.updates, "isa": args.isa,
                          "episodes": args.episodes, "official_commit": args.official_commit, **result})
        return None
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"error: unknown config(s) {', '.join(unknown)} (expected {', '.join(CONFIGS)})")
    configs = {k: CONFIGS[k] for k in args.configs.split(",")}
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {', '.join(unknown)} (expected {', '.join(VARIANTS)})")
    load_before = os.getloadavg()[0]
    # Rounds alternate the two codes, so slow spells of a shared host fall on both; the table shows
    # each figure's median over rounds, the results file keeps every round.
    rounds = []
    for _ in range(args.rounds):
        official = {} if args.skip_official else official_side(args, configs)
        rounds.append({"official": official, "vgf": {v: vgf_side(args, configs, v) for v in args.variants.split(",")}})
    official = median_rows([r["official"] for r in rounds])
    ours = {v: median_rows([r["vgf"][v] for r in rounds]) for v in args.variants.split(",")}
    print(table(official, ours, configs))
    for v, res in ours.items():
        print(f"GEMM ceiling ({v} child): " + ", ".join(f"{k} {g:.0f} GFLOP/s" for k, g in res["gemm"].items()))
    record = {"bench": "vs_official", **machine(), "threads": args.threads, "cpu_flags": cpu_flags(),
              "configs": configs, "official": official, "vgf": ours, "official_commit": args.official_commit,
              "rounds": rounds,
              "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0]}
    append(args.out, record)


if __name__ == "__main__":
    main()
