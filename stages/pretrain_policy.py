"""`vgf pretrain-policy`: flow-matching behaviour cloning of the reference policy.

The reference policy is the distribution every method moves actions away from, so it is trained
once, frozen, and shared: train-critic and evaluate read ``policy.pt``, which carries the dims, the
action chunk H, the Euler step count and the digest of the dataset it was cloned from, so a later
stage can refuse a policy made for other data. With ``chunk`` = H > 1 the flow models H consecutive
actions of one trajectory, flattened.
"""

from __future__ import annotations

from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult
from vgfcli.ui import summary_table

VAL_ROWS = 4096  # validation loss on at most this many rows, with fixed noise, so values compare over time


class PretrainPolicyStage(Stage):
    name = "pretrain-policy"
    config_name = "train"
    # 3: policy.pt holds Adam's state, the loss's settings (the flow learns on online) and the random
    # streams (a longer run continues from it)
    code_version = 3
    continues = "policy.steps"
    main_metrics = ("loss", "val_loss")
    needs = ("dataset", "val_dataset")
    produces = ("policy",)

    def preflight(self, cfg) -> None:
        """A camera task needs a visual encoder, a state task none: said before collecting frames for minutes."""
        from vgfcli.protocols import observation_for, task_label

        if cfg.data.source == "file" and cfg.data.kind != "ogbench":
            return  # D4RL / Minari: state vectors, the dataset says so (checked when it is read)
        label = task_label(cfg)
        frames = observation_for(label) == "pixels"
        if frames and cfg.policy.encoder is None:
            how = " (observation=state)" if cfg.choices.get("observation") == "state" else ""
            raise VgfError(f"task={label} observes camera frames but policy.encoder is null{how}: leave observation "
                           "unset (it picks pixels and policy.encoder=impala_small), or choose the state task "
                           f"{label.removeprefix('visual-')}")
        if not frames and cfg.policy.encoder is not None:
            raise VgfError(f"policy.encoder={cfg.policy.encoder} reads camera frames, but task={label} observes "
                           "state vectors: leave policy.encoder unset (or choose a visual-* task)")

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        policy = to_dict(cfg.policy)
        key = {"policy": policy, "chunk": cfg.chunk, "seed": cfg.seed}
        # pixel-only knobs enter the key when set, so state-based runs keep the keys they had
        if policy.get("encoder") is None:
            policy.pop("encoder", None)
        key |= {k: cfg[k] for k in ("frame_stack", "p_aug") if cfg[k] is not None}
        return key

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from vgfcli.cache import save_output
        from vgfcli.nn.encoders import EncodedFlow, make_encoder
        from vgfcli.nn.flow import FlowPolicy
        from vgfcli.training import Sampler, load_tensors, resolve_device, train_loop

        p = cfg.policy
        device = resolve_device(cfg.device)
        run.set_tags({"vgf.device": str(device)})
        torch.manual_seed(cfg.seed)
        data = load_tensors(inputs.upstream["dataset"].output_paths()["dataset"], device,
                            frame_stack=cfg.frame_stack)
        val = data
        if "val_dataset" in inputs.upstream:
            val = load_tensors(inputs.upstream["val_dataset"].output_paths()["dataset"], device,
                               frame_stack=cfg.frame_stack)
        act_dim = data.act_dim * cfg.chunk
        if (data.pixels is not None) != (p.encoder is not None):
            raise VgfError(f"policy.encoder={p.encoder} but the dataset has "
                           f"{'frames: set policy.encoder=impala_small' if data.pixels is not None else 'state observations: leave policy.encoder unset'}")
        try:
            encoder = make_encoder(p.encoder, data.obs_shape) if p.encoder else None
            flow = FlowPolicy(encoder.out_dim if encoder else data.obs_dim, act_dim, tuple(p.hidden), p.activation,
                              p.layer_norm, time_embedding=p.time_embedding)
            flow = (EncodedFlow(encoder, flow) if encoder else flow).to(device)
        except ValueError as exc:
            raise VgfError(f"policy.{exc}") from None
        t_grid = p.flow_steps if p.time_sampling == "grid" else None
        optimizer = torch.optim.Adam(flow.parameters(), lr=p.lr)
        sampler = Sampler(data, p.batch_size, cfg.seed, chunk=cfg.chunk, p_aug=cfg.p_aug)
        val_sampler = Sampler(val, p.batch_size, cfg.seed, chunk=cfg.chunk)
        val_rows = torch.arange(val.size) if val_sampler.starts is None else val_sampler.starts
        val_batch = val_sampler.batch_at(val_rows[:VAL_ROWS])
        noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)

        def step_fn(step: int) -> dict:
            batch = sampler.sample()
            loss = flow.loss(batch["observations"], batch["actions"], noise, t_grid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach()}

        def val_fn(step: int) -> dict:
            fixed = torch.Generator(device=device).manual_seed(12345)
            with torch.no_grad():
                loss = flow.loss(val_batch["observations"], val_batch["actions"], fixed, t_grid)
            return {"val_loss": float(loss)}

        def state_fn() -> dict:
            return {"flow": flow.state_dict(), "optimizer": optimizer.state_dict(),
                    "sampler": sampler.generator.get_state(), "noise": noise.get_state()}

        def load_fn(state: dict) -> int:
            flow.load_state_dict(state["flow"])
            optimizer.load_state_dict(state["optimizer"])
            sampler.generator.set_state(state["sampler"])
            noise.set_state(state["noise"])
            return int(state["step"])

        start = None
        if inputs.shorter is not None:  # a shorter run's end: what a checkpoint at its last step holds
            shorter = torch.load(inputs.shorter.output_paths()["policy"], map_location="cpu", weights_only=False)
            start = {k: shorter[k] for k in ("flow", "optimizer", "sampler", "noise", "step")}
            ui.note(f"continuing pretrain-policy run {inputs.shorter.run_id[:8]} from its step {start['step']}")
        loop = train_loop(run, ui, "pretrain-policy", steps=p.steps, step_fn=step_fn, state_fn=state_fn,
                          load_fn=load_fn, checkpoint_every=p.checkpoint_every, log_every=p.log_every,
                          every={p.val_every: val_fn}, start_state=start)
        out = run.staging / "policy.pt"
        save_output({
            "flow": {k: v.cpu() for k, v in flow.state_dict().items()}, "obs_dim": data.obs_dim,
            "act_dim": act_dim, "chunk": cfg.chunk, "hidden": list(p.hidden), "flow_steps": p.flow_steps,
            "time_embedding": p.time_embedding, "activation": p.activation, "layer_norm": p.layer_norm,
            **({"encoder": p.encoder, "obs_shape": list(data.obs_shape), "frame_stack": int(cfg.frame_stack or 1)}
               if p.encoder else {}),
            # what vgf finetune trains the flow on with (vgfcli.online_flow): Adam's state and the loss's settings
            "optimizer": optimizer.state_dict(),
            # the random streams at the end: with flow and optimiser, a longer run's start (Stage.continues)
            "sampler": sampler.generator.get_state(), "noise": noise.get_state(), "step": p.steps,
            "train": {"lr": float(p.lr), "time_sampling": p.time_sampling, "flow_steps": int(p.flow_steps)},
            "dataset_digest": inputs.digests["dataset"], "env_id": data.attrs.get("env_id"),
            "dataset_attrs": data.attrs,
        }, out)
        summary = {
            "env_id": data.attrs.get("env_id"), "transitions": data.size, "chunk": cfg.chunk, "steps": p.steps,
            "loss": round(loop.last.get("loss", float("nan")), 5),
            "val_loss": round(loop.last.get("val_loss", float("nan")), 5), "resumed_from_step": loop.resumed_from,
            **({"continued_from": {"run": inputs.shorter.run_id, "step": start["step"]}} if start else {}),
            "seconds": round(loop.seconds, 1), "updates_per_s": loop.updates_per_s(p.steps), "device": str(device),
        }
        return StageResult(outputs={"policy": out}, metrics={"resumed_from_step": float(loop.resumed_from)},
                           summary=summary)

    def render(self, outcome: Outcome):
        return summary_table(f"pretrain-policy: {outcome.summary.get('env_id')}", outcome.summary)


STAGE = PretrainPolicyStage()
