"""`vgf finetune`: offline-to-online fine-tuning, after train-critic.

The method's trained agent (critic, policy and the reference flow) keeps learning from the
environment, as the reference codebases' off2on loops do (VGF's, FQL's, QAM's and QGF's main.py): one env
step per online step, then, once ``online.start_training`` online steps are in the buffer (the method's
warm-up, ``conf/online/<method>.yaml``: 5000 for VGF, A-VGF and QAM, none for FQL and QGF), one update of
the method's own ``update`` and one flow-matching step of the reference flow (``vgfcli.online_flow``, with
pretrain-policy's Adam state carried over; ``online.train_reference=false`` keeps it frozen) on a batch
from the replay buffer (``vgfcli.replay``: ``online.sampling`` uniform,
balanced or online-only, a ``buffer_size`` ring that wraps around as the reference's does).

Acting while collecting is the method's own acting rule with fresh noise at every call, the reference
code's exploration (``Agent.explore_options``): VGF and A-VGF take the best of N reference samples with
no transport step, as VGF's main.py calls ``sample_actions`` without ``eval_vgf_steps``
(``online.explore_budget`` moves them L or L_train steps instead). Rewards are mapped as in offline
training (D4RL antmaze: r - 1, online too, as the reference loops do); a goal reached ends the episode
without bootstrapping, a time limit ends it with bootstrapping.

Every ``online.eval_every`` steps (and at step 0, before any online data, and at the end) the policy is
scored in separate env copies on ``online.eval_episodes`` episodes per row of ``vgf evaluate`` (one row
per budget for vgf, per guidance weight for qgf), plus the method's own acting rule if no row is it:
the learning curves, as metrics ``online/<metric>/<row>`` and ``curves.json`` / ``finetune_curve.png``.
The adaptive rows' calibration (the members' disagreement at buffer actions) is measured again at each
point after the first, since the critic keeps changing, and saved with the fine-tuned agent. The
headline metrics are the method's own acting rule's row (``*_score_default_rule``), fixed before any
score is seen; the best row at each end is kept only as ``*_score_best_row_posthoc``.

Kill -9 safe: a checkpoint every ``online.checkpoint_every`` steps holds the agent (with its random
streams and the reference flow's weights), the flow's optimiser and noise, the sampler's stream, the online rows of the buffer and the episode in progress; episode i
starts from a reset seeded by (seed, i), so resuming replays the open episode's actions from that reset
to the same simulator state and carries on exactly as an uninterrupted run.
"""

from __future__ import annotations

import json

import numpy as np

from vgfcli import agents, seeds
from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult


class FinetuneStage(Stage):
    name = "finetune"
    config_name = "train"
    # 2: the reference's warm-up, exploration, sampling styles, buffer ring; recalibration;
    # 3: the reference flow learns online (online.train_reference, vgfcli.online_flow)
    code_version = 3
    main_metrics = ("final_score_default_rule", "offline_score_default_rule")
    needs = ("dataset", "policy", "critic")

    def in_pipeline(self, cfg) -> bool:
        return bool(cfg.finetune)  # vgf pipeline finetune=true: offline-to-online after the evaluation

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        agent_class = agents.method_module(cfg).Agent
        if not agent_class.trains:
            raise VgfError(f"method {cfg.method.name} has no critic to fine-tune online")
        try:
            agent_class.check_explore_budget(cfg.online.explore_budget)
        except ValueError as exc:
            raise VgfError(str(exc)) from None
        return super().resolve_inputs(cfg, upstream)

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        # which rows the curves score: the evaluate knobs this method reads, nothing else of that section
        rows = {k: v for k, v in agents.evaluate_key(cfg.evaluate, agents.method_module(cfg).Agent).items()
                if k in agents.METHOD_KNOBS}
        return {"online": to_dict(cfg.online), "evaluate": rows, "batch_size": cfg.critic.batch_size,
                "method": cfg.method.name, "seed": cfg.seed}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import time

        import torch

        from vgfcli.cache import save_output, write_bytes_atomic
        from vgfcli.plots import plot_curves
        from vgfcli.replay import ReplayBuffer, ReplaySampler
        from vgfcli.rollout import release_envs
        from vgfcli.training import load_tensors, resolve_device, train_loop
        from vgfcli.value_checks import reward_map

        o = cfg.online
        device = resolve_device(cfg.device)
        run.set_tags({"vgf.device": str(device), "vgf.method": cfg.method.name})
        # it trains: the update compiles as train-critic's does (critic.compile), acting with it
        agent, saved = agents.load_agent(cfg, inputs.upstream, device, compile=bool(cfg.critic.compile))
        env_id = agents.evaluation_env(cfg, saved["dataset_attrs"])
        rewards_fn = reward_map(inputs.upstream["critic"].summary)
        data = load_tensors(inputs.upstream["dataset"].output_paths()["dataset"], device,
                            frame_stack=saved.get("frame_stack"))
        data.rewards.copy_(torch.as_tensor(rewards_fn(data.rewards.cpu().numpy()), dtype=data.rewards.dtype))
        try:
            buffer = ReplayBuffer(data, o.steps, sampling=o.sampling, buffer_size=o.buffer_size, chunk=agent.chunk)
            settings, headline = curve_settings(agent, cfg.evaluate)
            explore = agent.explore_options(o.explore_budget)
        except ValueError as exc:
            raise VgfError(f"finetune: {exc}") from None
        online_flow = None
        if o.train_reference:  # the flow learns on each update's batch, as in every reference code
            from vgfcli.online_flow import OnlineFlow

            policy_saved = torch.load(inputs.upstream["policy"].output_paths()["policy"], map_location="cpu",
                                      weights_only=False)
            try:
                online_flow = OnlineFlow(agent, policy_saved, cfg.seed)
            except ValueError as exc:
                raise VgfError(f"finetune: {exc}") from None
            del policy_saved
        del data  # the buffer holds its own copy (with room for the online rows): the dataset's arrays go now
        sampler = ReplaySampler(buffer, cfg.critic.batch_size, cfg.seed + seeds.ONLINE_SAMPLER, chunk=agent.chunk,
                                discount=float(agent.cfg.discount), p_aug=cfg.p_aug)
        # the method's reference may act at random until its updates start (QAM under balanced sampling)
        random_steps = o.start_training if o.sampling in agent.random_warmup_under else 0
        actor = OnlineActor(env_id, agent, buffer, rewards_fn, cfg.seed, o.max_episode_steps, run.log_metrics,
                            explore, random_steps)
        curves: list[dict] = []

        def evaluate_now(step: int) -> dict:
            metrics = {}
            if step > 0:  # the critic has moved since train-critic measured its disagreement
                metrics = {f"online/{k}": float(v) for k, v in recalibrate(agent, buffer, cfg, step).items()}
            with ui.status(f"evaluating at online step {step}"):
                rows = score_rows(agent, settings, env_id, o, cfg.seed, step, saved["dataset_attrs"],
                                  int(saved.get("frame_stack", 1)))
            curves.append({"step": step, "rows": rows})
            return metrics | {f"online/{r['metric']}/{r['key']}": r["score"] for r in rows}

        def step_fn(step: int) -> dict:
            if step == 0:
                run.log_metrics(evaluate_now(0), step=0)  # the offline agent, before any online data
            actor.step()
            if step + 1 < o.start_training:  # the warm-up: transitions in, no update yet
                return {}
            batch = sampler.sample()
            info = agent.update(batch)  # its TD target reads the flow as it was before this step's
            return info | online_flow.update(batch) if online_flow is not None else info

        def state_fn() -> dict:
            return {"agent": agent.state_dict(), "sampler": sampler.generator.get_state(),
                    "buffer": buffer.online_state(), "actor": actor.state(), "curves": list(curves),
                    **({"online_flow": online_flow.state_dict()} if online_flow is not None else {})}

        def load_fn(state: dict) -> int:
            agent.load_state_dict(state["agent"])
            if online_flow is not None:
                online_flow.load_state_dict(state["online_flow"])
            sampler.generator.set_state(state["sampler"])
            buffer.load_online_state(state["buffer"])
            actor.load_state(state["actor"])
            curves[:] = state["curves"]
            return int(state["step"])

        start = time.perf_counter()
        loop = train_loop(run, ui, f"finetune ({cfg.method.name}, online steps)", steps=o.steps, step_fn=step_fn,
                          state_fn=state_fn, load_fn=load_fn, checkpoint_every=o.checkpoint_every,
                          log_every=o.log_every, every={o.eval_every: evaluate_now})
        seconds = time.perf_counter() - start
        release_envs()
        out = run.staging / "finetuned.pt"
        save_output({"method": cfg.method.name, "config": saved["config"], "agent": agent.state_dict(),
                     "obs_dim": saved["obs_dim"], "act_dim": saved["act_dim"], "chunk": agent.chunk,
                     "dataset_digest": saved["dataset_digest"], "policy_digest": saved["policy_digest"],
                     "env_id": saved.get("env_id"), "dataset_attrs": saved["dataset_attrs"],
                     "online_steps": o.steps}, out)
        curves_path = run.staging / "curves.json"
        episodes = actor.finished
        write_bytes_atomic(curves_path, json.dumps({"env_id": env_id, "method": cfg.method.name, "curves": curves,
                                                    "episodes": episodes}, indent=1).encode())
        plot = run.staging / "finetune_curve.png"
        plot_curves(curves, plot, f"{cfg.method.name} fine-tuned online on {env_id}")
        first, last = curves[0]["rows"], curves[-1]["rows"]
        default_first, default_last = (next(r for r in rows if r["key"] == headline.key) for rows in (first, last))
        summary = {"method": cfg.method.name, "env_id": env_id, "online_steps": o.steps, "seed": cfg.seed,
                   "preset": cfg.choices.get("preset"),
                   "offline": first, "final": last, "default_rule": headline.label,
                   "episodes": len(episodes), "resumed_from_step": loop.resumed_from,
                   "reference_trained_online": online_flow is not None,
                   "online_success": float(np.mean([e["success"] for e in episodes])) if episodes else None,
                   "env_steps_per_s": round((o.steps - loop.resumed_from) / max(seconds, 1e-9), 1),
                   "seconds": round(seconds, 1)}
        metrics = {"offline_score_default_rule": default_first["score"],
                   "final_score_default_rule": default_last["score"],
                   # the best row at each end, picked after the scores were seen: optimistic
                   "offline_score_best_row_posthoc": max(r["score"] for r in first),
                   "final_score_best_row_posthoc": max(r["score"] for r in last),
                   "env_steps_per_s": summary["env_steps_per_s"]}
        return StageResult(outputs={"agent": out, "curves": curves_path, "plot": plot}, metrics=metrics,
                           summary=summary)

    def render(self, outcome: Outcome):
        from rich.table import Table

        s = outcome.summary
        table = Table(title=f"finetune: {s['method']} on {s['env_id']}, {s['online_steps']} online steps "
                            f"({s['env_steps_per_s']} env steps/s)", title_justify="left",
                      caption="* the method's own acting rule: the headline metrics' row", caption_justify="left")
        for column in ("policy", "metric", "before (offline)", "95% interval before", "after", "95% interval after"):
            table.add_column(column, justify="right")
        for before, after in zip(s["offline"], s["final"]):
            label = after["label"] + (" *" if after["label"] == s.get("default_rule") else "")
            table.add_row(label, after["metric"], f"{before['score']:.3f}", _interval(before), f"{after['score']:.3f}",
                          _interval(after))
        return table


def _interval(row: dict) -> str:
    lo, hi = row["interval"]
    return f"[{lo:.3f}, {hi:.3f}]"


def curve_settings(agent, evaluate_cfg) -> tuple[list, object]:
    """The rows the curves score: evaluate's rows for this method, plus the method's own acting rule
    (``Agent.default_setting``) when none of them acts as it does; and that rule's row (the headline)."""
    import dataclasses

    settings = list(agent.eval_settings(evaluate_cfg))
    default = agent.default_setting()
    same = next((s for s in settings if dict(s.options) == dict(default.options)), None)
    if same is not None:
        return settings, same
    if any(s.key == default.key for s in settings):
        default = dataclasses.replace(default, label=f"{default.label} (default)", key=f"{default.key}_default")
    return [*settings, default], default


def recalibrate(agent, buffer, cfg, step: int) -> dict:
    """The agent's calibration (``Agent.calibrate``) measured again on 16 batches of the buffer (its own
    random stream, so training's is left alone); its new percentiles go into checkpoints and the output."""
    from vgfcli.replay import ReplaySampler

    draws = ReplaySampler(buffer, cfg.critic.batch_size, cfg.seed + seeds.RECALIBRATION + step, chunk=agent.chunk,
                          discount=float(agent.cfg.discount), sampling="uniform")
    return agent.calibrate([draws.sample() for _ in range(16)])


class OnlineActor:
    """One env copy stepped by the agent, transition by transition, into the replay buffer. On camera
    frames each frame goes into the buffer's frame store once, and the agent sees the frame stack the
    buffer makes of it (the first frame repeated at a reset, as training and evaluation stack them)."""

    def __init__(self, env_id: str, agent, buffer, rewards_fn, seed: int, max_episode_steps, log, options: dict,
                 random_steps: int = 0):
        from vgfcli.rollout import make_env

        self.env = make_env(env_id, max_episode_steps=max_episode_steps)
        self.agent, self.buffer, self.rewards_fn, self.seed, self.log = agent, buffer, rewards_fn, seed, log
        space = self.env.action_space
        self.low, self.high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        self.options = options  # act() keywords of exploration (Agent.explore_options)
        # the first ``random_steps`` online steps act uniformly at random in [-1, 1], one action per step
        self.random_steps = int(random_steps)
        self.random = np.random.Generator(np.random.PCG64(seed + seeds.ONLINE_WARMUP))
        self.pixels = buffer.pixels is not None
        self.episode, self.obs, self.queue, self.actions = 0, None, [], []
        self.first = None  # camera frames: the buffer row of the open episode's first frame
        self.ret, self.length, self.legacy = 0.0, 0, None
        self.finished: list[dict] = []

    def _call(self, fn, *args, **kwargs):
        from vgfcli.rollout import call_with_rng

        out, self.legacy = call_with_rng(self.legacy, fn, *args, **kwargs)
        return out

    def _start(self, record: bool = True) -> None:
        env_seed, legacy_seed = seeds.episode_seeds(self.seed, self.episode, seeds.ONLINE)
        self.legacy = np.random.RandomState(legacy_seed).get_state()
        self.env.action_space.seed(env_seed)
        obs, _ = self._call(self.env.reset, seed=env_seed)
        self.obs = self._observed(obs, record)
        self.queue, self.actions, self.ret, self.length = [], [], 0.0, 0

    def _observed(self, obs, record: bool):
        """A state as a float32 vector; a camera frame as its buffer row (stored when ``record``)."""
        if not self.pixels:
            return np.asarray(obs, np.float32).reshape(-1)
        if not record:
            return np.asarray(obs)
        row = self.buffer.add_frame(obs, self.first)
        self.first = row if self.first is None else self.first
        return row

    def _acting_input(self):
        import torch

        if self.pixels:  # [1, H, W, C * frame_stack] uint8
            return self.buffer.pixels.observe(torch.tensor([self.obs], device=self.buffer.observations.device))
        return torch.as_tensor(self.obs, device=self.agent.device).unsqueeze(0)

    def step(self) -> None:
        import torch

        if self.obs is None:
            self._start()
        if self.buffer.online < self.random_steps:  # the reference's random warm-up (an open chunk is dropped)
            self.queue = [self.random.uniform(-1.0, 1.0, self.low.shape)]
        if not self.queue:
            with torch.inference_mode():  # as the curves' scoring acts: one compiled graph serves both
                chunk = self.agent.act(self._acting_input(), **self.options).detach().cpu().numpy().astype(np.float64)
            self.queue = list(np.clip(chunk.reshape(self.agent.chunk, -1), self.low, self.high))
        action = self.queue.pop(0)
        next_obs, reward, terminated, truncated, info = self._call(self.env.step, action)
        next_obs = self._observed(next_obs, record=True)
        done = bool(terminated or truncated)
        self.buffer.add(self.obs, action, float(self.rewards_fn(np.asarray([reward]))[0]), next_obs,
                        0.0 if terminated else 1.0, done)
        self.actions.append(action)
        self.ret += float(reward)
        self.length += 1
        self.obs = next_obs
        if done:
            success = float(bool(info.get("success", False)))
            self.finished.append({"return": self.ret, "length": self.length, "success": success})
            self.log({"online/episode_return": self.ret, "online/episode_success": success},
                     step=self.buffer.online)
            self.episode, self.obs, self.first = self.episode + 1, None, None

    def state(self) -> dict:
        return {"episode": self.episode, "actions": np.asarray(self.actions), "queue": np.asarray(self.queue),
                "random": self.random.bit_generator.state,
                "ret": self.ret, "length": self.length, "obs": self.obs, "finished": list(self.finished),
                "open": self.obs is not None, "first": self.first}

    def load_state(self, state: dict) -> None:
        """Back to the checkpoint's step: the open episode replayed from its seeded reset."""
        self.episode, self.finished = int(state["episode"]), list(state["finished"])
        self.random.bit_generator.state = state["random"]
        self.obs, self.first = None, state.get("first")
        if state["open"]:
            self._start(record=False)  # the buffer has the episode's frames already (its online state)
            for action in state["actions"]:
                obs, *_ = self._call(self.env.step, action)
                self.obs = self._observed(obs, record=False)
            # the replay must reach the checkpoint's state (on frames: the frame stored at its row)
            expected = self.buffer.pixels.frames[int(state["obs"])].cpu().numpy() if self.pixels else state["obs"]
            if not np.array_equal(self.obs, expected):
                raise VgfError("finetune: replaying the open episode did not reach the checkpoint's state "
                               "(the environment is not deterministic); delete the checkpoint to start over")
            self.obs = int(state["obs"]) if self.pixels else self.obs
            self.actions = list(state["actions"])
            self.queue = list(state["queue"])
            self.ret, self.length = float(state["ret"]), int(state["length"])


def score_rows(agent, settings, env_id: str, o, seed: int, step: int, dataset_attrs: dict,
               frame_stack: int = 1) -> list[dict]:
    """Every row's score on ``o.eval_episodes`` episodes, acting from a generator of its own (so scoring
    leaves the exploration's random stream alone): evaluate's rows, one after another."""
    from vgfcli.eval_rows import RowJob, run_rows, score_row

    jobs = [RowJob(setting, False, env_id, o.eval_episodes, min(o.eval_episodes, 10), seed, o.max_episode_steps,
                   0, 256, False, acting_seed=seed + seeds.CURVE_ROWS + step, frame_stack=frame_stack)
            for setting in settings]
    return [score_row(setting, result, dataset_attrs, env_id)[0]
            for setting, (result, _) in zip(settings, run_rows(agent, jobs))]


STAGE = FinetuneStage()
