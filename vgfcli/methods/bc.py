"""BC: the reference flow alone, evaluated as a policy (the baseline every method starts from).

Behaviour cloning by flow matching is what ``vgf pretrain-policy`` trains, so BC has nothing left to
learn: ``trains`` is False, the pipeline skips train-critic, and acting is one K-step Euler sample of
the frozen flow per state. There is no critic, so there is no best-of-N selection either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vgfcli.methods.base import Agent, Batch, EvalSetting, Info, MethodConfig
from vgfcli.nn.flow import flow_matching_loss


@dataclass
class BCConfig(MethodConfig):
    """BC has no hyperparameters of its own: the flow's come from the pretrained policy."""

    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    # Euler steps K when sampling the flow.
    flow_steps: int = 10
    discount: float = 0.99  # unused (no TD learning); kept so every method has one
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming a value BC cannot run with (run once, as the Config is made)."""
        self.check_numbers(at_least_one=("flow_steps",), not_negative=("seed",), unit=("discount",))


Config = BCConfig


class BCAgent(Agent):
    name = "bc"
    config_class = BCConfig
    eval_knobs = ()
    trains = False
    checkpoint_parts = ("reference",)

    def losses(self, batch: Batch) -> tuple[Tensor, Info]:
        """The flow-matching loss of the (frozen) reference on ``batch``: what BC minimised."""
        with torch.no_grad():
            loss = flow_matching_loss(self.reference, batch["observations"], batch["actions"], self.generator)
        return loss, {"flow_loss": loss}

    def update(self, batch: Batch) -> Info:
        raise RuntimeError("bc has nothing to train after vgf pretrain-policy (BCAgent.trains is False)")

    def act(self, obs: Tensor, *, num_particles: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        if num_particles not in (None, 1):
            raise ValueError("bc has no critic: best-of-N selection (particles > 1) needs a method with one")
        return self.act_reference(obs, generator or self.act_generator)

    def eval_settings(self, evaluate_cfg) -> list[EvalSetting]:
        return []  # the reference row IS the BC policy


Agent = BCAgent
create = BCAgent.create
