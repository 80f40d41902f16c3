"""vgf against the official VGF code (ryanxhr/vgf, JAX) on camera frames, both with the impala_small
encoder, side by side in one run:

    python bench/bench_vs_official.py --setup          # once: the scratch clone + venv (shared with that bench)
    python bench/bench_pixels_vs_official.py --threads 2

Shapes: 64 x 64 x 9 uint8 observations (3 stacked frames, OGBench's visual tasks with FQL's
``--frame_stack=3``), 5-dim actions, the same widths, batch, particles N, Euler steps K and L_train on
both sides. Reported: median ms per update and actions/s for one observation at L = 0 and L = 3 (the
official ``sample_actions`` acts on one observation, as its main.py does).

The official code's encoder path does not run as published: ``sample_bc_actions`` calls
``self.network.select('actor_bc_encoder')`` (the agent has no ``network``: FQL's layout), its time
input is shaped for state vectors (``observations.shape[:-1]``), and the update and ``sample_actions``
flatten observations with ``reshape(-1, shape[-1])``, which breaks a frame into pixel rows. The
driver applies the smallest fixes to a copy in the scratch folder (``PATCHES``: each must match its
source line exactly once, so a change upstream is caught): observations are flattened over their
leading dims only, and the BC flow encodes through its own module, as ``ActorVectorField`` is written.
Every other line, and so the official cost of encoding (every particle, Euler step and transport
step re-encodes the frames), is theirs. vgf encodes each network's input once per update or call
(``vgfcli.nn.encoders``), reads reference samples from its bank when training, and trains no BC actor
(pretrained apart); the official update also trains its BC actor: the rows say what each side does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_official import median_time, run_child  # noqa: E402
from common import RESULTS, append, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE, ACT = (64, 64, 9), 5
CONFIGS = {  # widths (critic and reference flow), batch, particles N, Euler steps K, L_train
    "visual-quick": dict(hidden=[256, 256, 256], batch=64, particles=8, flow_steps=10, train_steps=3),
    "visual-paper": dict(hidden=[512, 512, 512, 512], batch=256, particles=10, flow_steps=10, train_steps=3),
}
BUDGETS = (0, 3)

# (source text, replacement) in the official agents/vgf.py, each present exactly once.
PATCHES = [
    ("obs_flatten = obs.reshape(-1, obs.shape[-1])", "obs_flatten = obs.reshape(-1, *obs.shape[2:])"),
    ("next_obs_rep = next_obs_rep.reshape(-1, next_obs_rep.shape[-1])",
     "next_obs_rep = next_obs_rep.reshape(-1, *next_obs_rep.shape[2:])"),
    ("next_obs_rep = next_obs_rep.reshape(batch_size, self.config['vgf_particles'], -1)",
     "next_obs_rep = next_obs_rep.reshape(batch_size, self.config['vgf_particles'], *next_obs_rep.shape[1:])"),
    ("next_obs_flatten = next_obs_rep.reshape(-1, next_obs_rep.shape[-1])",
     "next_obs_flatten = next_obs_rep.reshape(-1, *next_obs_rep.shape[2:])"),
    ("obs_rep = obs_rep.reshape(-1, obs_rep.shape[-1])", "obs_rep = obs_rep.reshape(-1, *obs_rep.shape[2:])"),
    ("obs_rep = obs_rep.reshape(-1, self.config['vgf_particles'], obs_rep.shape[-1])",
     "obs_rep = obs_rep.reshape(-1, self.config['vgf_particles'], *obs_rep.shape[1:])"),
    ("obs_flatten = obs_rep.reshape(-1, obs_rep.shape[-1])", "obs_flatten = obs_rep.reshape(-1, *obs_rep.shape[2:])"),
    ("observations = self.network.select('actor_bc_encoder')(observations)", "pass"),
    ("t = jnp.full((*observations.shape[:-1], 1), i / self.config['bc_flow_steps'])",
     "t = jnp.full((*observations.shape[:-len(self.config['ob_dims'])], 1), i / self.config['bc_flow_steps'])"),
    ("vels = self.actor_bc(observations, actions, t, is_encoded=True)",
     "vels = self.actor_bc(observations, actions, t, is_encoded=False)"),
]

OFFICIAL_DRIVER = r'''
import json, sys, time
import numpy as np, jax
sys.path.insert(0, sys.argv[1])
from agents.vgf_pixels import VGFAgent, get_config
spec = json.loads(sys.argv[2])
shape, a = tuple(spec["shape"]), spec["act_dim"]


def median_s(fn, n):
    """Median wall seconds of ``fn()`` over ``n`` calls, each waited for."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


out = {}
for name, c in spec["configs"].items():
    cfg = get_config()
    cfg.update(dict(actor_hidden_dims=tuple(c["hidden"]), value_hidden_dims=tuple(c["hidden"]),
                    vgf_particles=c["particles"], train_vgf_steps=c["train_steps"], bc_flow_steps=c["flow_steps"],
                    vgf_lr=0.05, vgf_alpha=0.5, train_q_agg="mean", batch_size=c["batch"], encoder="impala_small"))
    rng = np.random.default_rng(0)
    frames = lambda n: rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    agent = VGFAgent.create(0, frames(1), np.zeros((1, a), np.float32), cfg)
    b = c["batch"]
    batch = dict(observations=frames(b), next_observations=frames(b),
                 actions=rng.uniform(-1, 1, (b, a)).astype(np.float32), rewards=np.zeros(b, np.float32),
                 masks=np.ones(b, np.float32), terminals=np.zeros(b, np.float32))
    state = {"agent": agent}

    def update():
        state["agent"], info = state["agent"].update(batch)
        return info

    t0 = time.perf_counter()
    jax.block_until_ready(update())
    row = {"update_compile_s": time.perf_counter() - t0, "update_ms": 1e3 * median_s(update, spec["steps"])}
    obs, key = frames(1)[0], jax.random.PRNGKey(0)
    for L in spec["budgets"]:
        act = lambda: state["agent"].sample_actions(obs, seed=key, eval_vgf_steps=L)
        jax.block_until_ready(act())
        row[f"actions_per_s_L{L}"] = 1.0 / median_s(act, spec["act_calls"])
    out[name] = row
print("RESULT " + json.dumps(out))
'''


def parse_args(argv=None):
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "vgf-official"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--steps", type=int, default=5, help="timed updates per side and config")
    p.add_argument("--act-calls", type=int, default=20)
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def patched_official(scratch: Path) -> Path:
    """``agents/vgf_pixels.py`` in the scratch clone: the official agent with ``PATCHES`` applied."""
    source = (scratch / "vgf" / "agents" / "vgf.py").read_text()
    for old, new in PATCHES:
        if source.count(old) != 1:
            raise SystemExit(f"error: the official agents/vgf.py no longer has exactly one '{old}'")
        source = source.replace(old, new)
    out = scratch / "vgf" / "agents" / "vgf_pixels.py"
    out.write_text(source)
    return out


def official_side(args, configs: dict) -> dict:
    scratch = Path(args.scratch)
    python = scratch / "venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"error: no official code in {scratch}: run bench/bench_vs_official.py --setup first")
    patched_official(scratch)
    driver = scratch / "driver_official_pixels.py"
    driver.write_text(OFFICIAL_DRIVER)
    spec = dict(configs=configs, shape=list(SHAPE), act_dim=ACT, steps=args.steps, budgets=list(BUDGETS),
                act_calls=args.act_calls)
    return run_child([str(python), str(driver), str(scratch / "vgf"), json.dumps(spec)], args.threads)


def worker(spec: dict) -> None:
    """vgf's side: median ms per update (bank of reference samples, as train-critic runs) and
    actions/s for one observation, per config."""
    import torch

    sys.path.insert(0, str(ROOT))
    from vgfcli.methods.vgf import VGFAgent
    from vgfcli.nn.encoders import EncodedFlow, make_encoder
    from vgfcli.nn.flow import FlowPolicy

    torch.set_num_threads(spec["threads"])
    out = {}
    for name, c in spec["configs"].items():
        torch.manual_seed(0)
        encoder = make_encoder("impala_small", SHAPE)
        reference = EncodedFlow(encoder, FlowPolicy(encoder.out_dim, ACT, tuple(c["hidden"])))
        agent = VGFAgent.create(None, SHAPE, ACT, reference=reference, encoder="impala_small",
                                critic_hidden=tuple(c["hidden"]), actor_hidden=tuple(c["hidden"]),
                                num_particles=c["particles"], flow_steps=c["flow_steps"], train_steps=c["train_steps"],
                                alpha=0.5, vgf_lr=0.05, amp="off")
        gen = torch.Generator().manual_seed(0)
        rows, b = 512, c["batch"]
        frames = lambda n: torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8)  # noqa: E731
        agent.prepare(frames(rows))
        batch = {"observations": frames(b), "actions": torch.rand(b, ACT, generator=gen) * 2 - 1,
                 "rewards": -torch.rand(b, generator=gen), "masks": torch.ones(b), "next_observations": frames(b),
                 "indices": torch.randint(0, rows, (b,), generator=gen)}
        agent.update(batch)
        row = {"update_ms": 1e3 * median_time(lambda: agent.update(batch), spec["steps"])}
        obs = frames(1)
        for L in BUDGETS:
            with torch.inference_mode():
                agent.act(obs, steps=L)
                row[f"actions_per_s_L{L}"] = 1.0 / median_time(lambda: agent.act(obs, steps=L), spec["act_calls"])
        out[name] = row
    print("RESULT " + json.dumps(out))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    configs = {k: CONFIGS[k] for k in args.configs.split(",")}
    ours = run_child([sys.executable, __file__, "--worker", json.dumps(dict(configs=configs, steps=args.steps,
                                                                            act_calls=args.act_calls,
                                                                            threads=args.threads))], args.threads)
    official = {} if args.skip_official else official_side(args, configs)
    record = {"bench": "pixels_vs_official", "machine": machine(), "threads": args.threads, "configs": configs,
              "vgf": ours, "official": official}
    append(args.out, record)
    print(f"{'config':16} {'figure':18} {'official':>10} {'vgf':>10} {'vgf / official':>15}")
    for name in configs:
        for figure, better in (("update_ms", "lower"), ("actions_per_s_L0", "higher"), ("actions_per_s_L3", "higher")):
            theirs, mine = official.get(name, {}).get(figure), ours[name][figure]
            if theirs is None:
                print(f"{name:16} {figure:18} {'-':>10} {mine:10.2f} {'-':>15}")
                continue
            speed = theirs / mine if better == "lower" else mine / theirs
            print(f"{name:16} {figure:18} {theirs:10.2f} {mine:10.2f} {speed:14.1f}x")


if __name__ == "__main__":
    main()
