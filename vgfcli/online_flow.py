"""The reference flow keeps learning online (``vgf finetune``), as every reference code trains it.

Offline, ``vgf pretrain-policy`` clones the behaviour flow and the later stages hold it frozen: every
reference trains it jointly with the critic instead, and keeps doing so in its online loop, on the same
replay batches as the critic (VGF ``agents/vgf.py`` l.289 and A-VGF ``agents/a_vgf.py`` l.295, called
from ``main.py`` l.239-247; FQL ``agents/fql.py`` l.52-59, l.79; QAM ``agents/qam.py`` l.113-121, l.208;
QGF ``agents/qgf.py`` l.132-134). So online the flow takes one flow-matching step on each update's batch,
after the method's own update (whose TD target read the flow as it was before this step, as the
references' joint step does):

- the loss is pretrain-policy's (the batch's actions, ``policy.time_sampling``), with noise from a
  stream of its own (``seeds.ONLINE_FLOW``: the method's own draws are those of a frozen-flow run);
- the optimiser is pretrain-policy's Adam with its state carried over from the end of pretraining (the
  references carry their TrainStates from offline into online), at ``policy.lr``; per-parameter Adam
  over the flow alone is what one Adam over every network does to the flow's weights;
- the method says whether its reference clips the flow's gradient norm (``Agent.reference_grad_clip``:
  A-VGF and QAM clip at 1.0 (QAM's clip is global over all its networks; here it is the flow's own),
  VGF, FQL and QGF do not) and what else follows the flow (``Agent.reference_updated``: QAM's EMA copy).

``online.train_reference=false`` keeps the flow frozen (the build before this, for comparison).
Checkpointed with the rest (the flow's weights are in the agent's state; its optimiser and noise here),
so a resumed fine-tune continues bit for bit.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from vgfcli import seeds
from vgfcli.training import ACTION_CLIP


class OnlineFlow:
    """One flow-matching step of ``agent.reference`` per ``update(batch)``; see the module docstring."""

    def __init__(self, agent, saved_policy: Mapping[str, Any], seed: int):
        train = saved_policy.get("train")
        if train is None or "optimizer" not in saved_policy:
            raise ValueError("the policy run has no optimiser state to train the flow online with (it was made "
                             "by an older vgf): run pretrain-policy again, or set online.train_reference=false")
        self.agent, self.flow = agent, agent.reference
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=float(train["lr"]))
        self.optimizer.load_state_dict(saved_policy["optimizer"])
        self.t_grid = int(train["flow_steps"]) if train["time_sampling"] == "grid" else None
        self.clip = agent.reference_grad_clip
        self.generator = torch.Generator(device=agent.device).manual_seed(seed + seeds.ONLINE_FLOW)
        agent.start_reference_training()

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step on ``batch``'s (observation, action) pairs; the flow is frozen again after it."""
        actions = batch["actions"].clamp(-ACTION_CLIP, ACTION_CLIP)  # as pretrain-policy's data loader does
        self.flow.requires_grad_(True)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                loss = self.flow.loss(batch["observations"], actions, self.generator, self.t_grid)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            info = {"flow_loss": loss.detach()}
            if self.clip is not None:
                info["flow_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.clip)
            self.optimizer.step()
        finally:
            self.flow.requires_grad_(False)
        self.agent.reference_updated()
        return info

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
