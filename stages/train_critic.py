"""`vgf train-critic`: the method's TD critic (and whatever else it learns), trained against the
frozen reference policy.

The stage is method-agnostic: it loads the reference flow from the upstream pretrain-policy run,
builds ``vgfcli.methods.<method.name>``'s agent, lets it precompute what it can (``prepare``: VGF's
particle bank), and runs ``update`` in the shared resumable loop. What an update does, the method
decides: VGF and QGF train critics, FQL and QAM a critic and a policy. The action chunk H comes from
the policy, so batches are H-step sequences whenever the reference models H actions.
"""

from __future__ import annotations

import dataclasses

from vgfcli import agents
from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult
from vgfcli.ui import summary_table


class TrainCriticStage(Stage):
    name = "train-critic"
    config_name = "train"
    # 3: the critic is stored with its calibration (member_std_percentiles); 4: and its sampler's state
    code_version = 4
    continues = "critic.steps"  # a longer run starts from the longest shorter one's end (Stage.continues)
    main_metrics = ("critic_loss", "q_mean")
    needs = ("dataset", "policy")
    produces = ("critic",)

    def config_for(self, cfg, name: str, upstream):
        return cfg if agents.trains(cfg) else None  # BC: nothing to train after pretrain-policy

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        # A bad method value is a config error: say so before any run or upstream lookup.
        if not agents.trains(cfg):
            raise VgfError(f"method {cfg.method.name} has nothing to train after pretrain-policy: run vgf evaluate "
                           f"method={cfg.method.name}")
        return super().resolve_inputs(cfg, upstream)

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        critic = to_dict(cfg.critic)
        if critic.get("encoder") is None:  # pixel-only knobs enter the key when set: state keys stay as they were
            critic.pop("encoder", None)
        key = {"critic": critic, "method": to_dict(cfg.method), "seed": cfg.seed}
        if cfg.p_aug is not None:
            key["p_aug"] = cfg.p_aug  # (frame_stack is the policy's: its digest is in the key already)
        if cfg.method.get("train_budget", "fixed") != "fixed":
            # the adaptive TD target's own code version (2: its rules read fp32 Q), so that a change
            # to it does not invalidate every fixed-budget critic
            key["adaptive_target_version"] = 2
        return key

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from vgfcli import seeds
        from vgfcli.cache import save_output
        from vgfcli.training import Sampler, load_tensors, resolve_device, train_loop, transform_rewards

        c = cfg.critic
        device = resolve_device(cfg.device)
        run.set_tags({"vgf.device": str(device), "vgf.method": cfg.method.name})
        torch.manual_seed(cfg.seed)
        policy_path = inputs.upstream["policy"].output_paths()["policy"]
        flow, saved = agents.load_policy(policy_path, device)
        # frames: stacked as the policy was trained (its frame_stack), shifted with probability p_aug
        data = load_tensors(inputs.upstream["dataset"].output_paths()["dataset"], device,
                            frame_stack=saved.get("frame_stack"))
        rewards = transform_rewards(data, c.reward_transform)
        chunk = int(saved["chunk"])
        agents.check_compatible(saved, data.obs_dim, data.act_dim * chunk, inputs.digests["dataset"],
                                str(policy_path))
        agent, method_cfg = agents.new_agent(cfg, flow, saved, device)
        if agent.amp is not None:  # the precision amp=auto resolved to here
            run.set_tags({"vgf.amp": agent.amp})
        with ui.status("preparing the method (e.g. the particle bank)"):
            prepared = agent.prepare(data.next_states)
        sampler = Sampler(data, c.batch_size, cfg.seed, chunk=chunk, discount=method_cfg.discount, p_aug=cfg.p_aug)

        def state_fn() -> dict:
            return {"agent": agent.state_dict(), "sampler": sampler.generator.get_state()}

        def load_fn(state: dict) -> int:
            agent.load_state_dict(state["agent"])
            sampler.generator.set_state(state["sampler"])
            return int(state["step"])

        start = None
        if inputs.shorter is not None:  # a shorter run's end: its agent and sampler, as a checkpoint would hold
            shorter = torch.load(inputs.shorter.output_paths()["critic"], map_location="cpu", weights_only=False)
            # its calibration is of its end; a checkpoint mid-run has none
            start = {"agent": {k: v for k, v in shorter["agent"].items() if k != "member_std_percentiles"},
                     "sampler": shorter["sampler"], "step": shorter["agent"]["step"]}
            ui.note(f"continuing train-critic run {inputs.shorter.run_id[:8]} from its step {start['step']}")
        loop = train_loop(run, ui, f"train-critic ({cfg.method.name})", steps=c.steps,
                          step_fn=lambda step: agent.update(sampler.sample()), state_fn=state_fn, load_fn=load_fn,
                          checkpoint_every=c.checkpoint_every, log_every=c.log_every, start_state=start)
        # What acting needs to know about the trained critic (the adaptive budget's disagreement scale),
        # measured on its own draw of dataset batches so that training's sampler stream is untouched.
        calibration_batches = Sampler(data, 1024, cfg.seed + seeds.CALIBRATION, chunk=chunk, discount=method_cfg.discount)
        with ui.status("calibrating the critic on dataset actions"):
            calibration = agent.calibrate([calibration_batches.sample() for _ in range(16)])
        out = run.staging / "critic.pt"
        save_output({
            "method": cfg.method.name, "config": dataclasses.asdict(method_cfg), "agent": agent.state_dict(),
            "sampler": sampler.generator.get_state(),  # with the agent: a longer run's start (Stage.continues)
            "obs_dim": data.obs_dim, "act_dim": data.act_dim * chunk, "chunk": chunk,
            **({"obs_shape": list(data.obs_shape), "frame_stack": int(saved["frame_stack"])} if data.pixels else {}),
            "dataset_digest": inputs.digests["dataset"],
            "policy_digest": inputs.digests["policy"], "env_id": data.attrs.get("env_id"),
            "dataset_attrs": data.attrs,
        }, out)
        summary = {
            "method": cfg.method.name, "env_id": data.attrs.get("env_id"), "chunk": chunk, "steps": c.steps,
            **{k: round(v, 5) for k, v in loop.last.items() if k != "updates_per_s"},
            "resumed_from_step": loop.resumed_from, "seconds": round(loop.seconds, 1),
            **({"continued_from": {"run": inputs.shorter.run_id, "step": start["step"]}} if start else {}),
            "updates_per_s": loop.updates_per_s(c.steps), "device": str(device),
            # one-off torch.compile cost (critic.compile), included in seconds
            **({"compile_s": round(agent.compile_seconds, 1)} if agent.compile_seconds else {}),
            **({"amp": agent.amp} if agent.amp is not None else {}),  # what amp=auto chose on this machine
            **{k: float(v) for k, v in prepared.items()}, **rewards,
            **{k: round(float(v), 5) for k, v in calibration.items()},
        }
        return StageResult(outputs={"critic": out}, metrics={"resumed_from_step": float(loop.resumed_from)},
                           summary=summary)

    def render(self, outcome: Outcome):
        return summary_table(f"train-critic: {outcome.summary.get('method')} on {outcome.summary.get('env_id')}",
                             outcome.summary)


STAGE = TrainCriticStage()
