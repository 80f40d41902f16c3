"""VGF's acting (``vgfcli.methods.vgf``): N reference samples, L transport steps along the online
critic's value gradient, then the particle of largest online Q; adaptive budgets stop each state on
their own rules (``vgfcli.nn.adaptive``); one evaluate row per budget.

``VGFActing`` is the acting half of ``VGFAgent``, kept in its own file for length: it reads the
agent's critic, reference flow, random stream and its transport and speed helpers
(``transport``, ``reference_samples``, ``_closed_form``, ``_compiled_fn``, ...), all defined in vgf.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vgfcli.budgets import explore_steps, parse_budgets
from vgfcli.methods.base import Agent, EvalSetting, best_by_q, percentile_at
from vgfcli.nn import closed_form
from vgfcli.nn.adaptive import StopRule, adaptive_transport, reads_disagreement
from vgfcli.nn.compiled import dynamic_batch
from vgfcli.nn.flow import euler_sample
from vgfcli.nn.noise import normal
from vgfcli.nn.particles import aggregate_members


def _act_best(flow, transport_tensors, critic_tensors, shape, flow_obs: Tensor, critic_obs: Tensor, noise: Tensor,
              flow_steps: int, steps: int, options: dict, q_agg: str) -> Tensor:
    """``[B, d]``: K Euler steps of the reference from ``noise`` ``[B, N, d]``, ``steps`` transport steps,
    then per state the particle of largest online Q (a NaN Q never wins; N = 1 needs no critic). The
    flow and the critic each read the states as they see them (``*_obs``: the states, or features)."""
    start = euler_sample(flow, flow_obs.unsqueeze(1), noise, flow_steps)
    moved = closed_form.transport(transport_tensors, shape, critic_obs, start, steps, **options)
    if moved.shape[1] == 1:
        return moved[:, 0]
    q = aggregate_members(closed_form.q_values(critic_tensors, shape, critic_obs, moved), q_agg)
    best = torch.nan_to_num(q, nan=float("-inf")).argmax(dim=1)
    return moved[torch.arange(moved.shape[0], device=moved.device), best]


class VGFActing(Agent):
    """``act``, ``explore_options`` and ``eval_settings`` of ``VGFAgent``. See the module docstring."""

    def act(self, obs: Tensor, *, steps: int | None = None, num_particles: int | None = None,
            select: str | None = None, generator: torch.Generator | None = None, budget: str | None = None,
            stop_quantile: float | None = None, stop_gain: float | None = None) -> Tensor:
        """Actions ``[B, act_dim]`` for ``obs`` ``[B, obs_dim]`` (or ``[act_dim]`` for ``[obs_dim]``).

        ``steps`` (L_test), ``num_particles`` and ``select`` default to the config. ``budget``: an
        adaptive rule (``auto``, ``auto_std``, ``auto_gain``; ``vgfcli.nn.adaptive``) with ``steps`` as
        its most, its ``stop_quantile`` / ``stop_gain`` defaulting to the config; None = ``steps``
        steps for every state. May run under ``torch.no_grad`` or ``torch.inference_mode``: the
        closed-form transport needs no autograd, the autograd one re-enables the gradients it needs
        (with respect to the actions only).
        """
        cfg = self.cfg
        steps = cfg.test_steps if steps is None else steps
        n = cfg.num_particles if num_particles is None else num_particles
        select = cfg.select if select is None else select
        generator = generator or self.act_generator
        obs, single = self.batched(obs)
        if budget is not None:
            actions = self._act_adaptive(obs, n, steps, budget, stop_quantile, stop_gain, generator)
            return actions[0] if single else actions
        # every state: `steps` forward + backward passes per particle, and a forward to select by Q
        self.compute.add(obs.shape[0], obs.shape[0] * n * (steps + (n > 1)), obs.shape[0] * n * steps)
        self.compute.add_steps(steps, obs.shape[0])
        if (n == 1 or select == "max") and self._closed_form():
            actions = self._act_closed_form(obs, n, steps, generator)
            return actions[0] if single else actions
        particles = self.reference_samples(obs, n, generator=generator)
        with torch.no_grad():  # frames: encoded once for every particle and step
            features = self.critic.encode(obs)
        particles = self.transport(features, particles, steps)
        if n == 1 or select == "max":
            actions = best_by_q(self.critic.head, features, particles, cfg.q_agg)
        else:
            with torch.no_grad():
                q = aggregate_members(self.critic.head(features.unsqueeze(1), particles), cfg.q_agg)  # [B, N]
                q = torch.nan_to_num(q, nan=float("-inf"))  # a NaN Q is never chosen
            if select == "softmax":
                logits = (q - q.max(dim=1, keepdim=True).values) / cfg.softmax_temp
                best = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
            elif select == "random":
                best = torch.randint(0, n, (q.shape[0],), generator=generator, device=q.device)
            else:
                raise ValueError(f"unknown particle selection '{select}'")
            actions = particles[torch.arange(q.shape[0], device=q.device), best]
        return actions[0] if single else actions

    @torch.no_grad()
    def _act_adaptive(self, obs: Tensor, n: int, max_steps: int, budget: str, stop_quantile: float | None,
                      stop_gain: float | None, generator: torch.Generator) -> Tensor:
        """Reference samples (the same draws as the fixed-budget path), at most ``max_steps`` transport
        steps per state as ``budget``'s rules allow, then the particle of largest online Q."""
        cfg = self.cfg
        if not self._closed_form():
            raise ValueError("an adaptive budget needs method.closed_form=true")
        quantile = cfg.stop_quantile if stop_quantile is None else stop_quantile
        ceiling = self.disagreement_ceiling(quantile) if reads_disagreement(budget) else float("inf")
        stop = StopRule.named(budget, ceiling, cfg.stop_gain if stop_gain is None else stop_gain)
        noise = normal((obs.shape[0], n, self.act_dim), generator, obs.device)
        start = euler_sample(self._sampling_flow(), self.reference.encode(obs).unsqueeze(1), noise, cfg.flow_steps)
        # The critic in fp32 whatever amp says: the rules compare Q differences of the size of bf16's
        # error in Q, and the choice among particles reads the same fp32 Q as the fixed budgets' rows.
        head = self.critic.head
        result = adaptive_transport(closed_form.critic_tensors(head), closed_form.CriticShape.of(head),
                                    self.critic.encode(obs), start, max_steps, stop, **self._adaptive_options())
        self.compute.add(obs.shape[0], result.forward, result.backward)
        self.compute.add_steps(result.steps)
        q = torch.nan_to_num(aggregate_members(result.member_q.float(), cfg.q_agg), nan=float("-inf"))
        moved = result.particles.float()
        return moved[torch.arange(moved.shape[0], device=moved.device), q.argmax(dim=1)]

    def disagreement_ceiling(self, quantile: float) -> float:
        """The members' std of Q at dataset actions at ``quantile`` (from ``calibrate``)."""
        if self.member_std_percentiles is None:
            raise ValueError("this critic has no disagreement calibration (it was trained before vgf stored "
                             "one): train it again, or use the auto_gain budget")
        return percentile_at(self.member_std_percentiles, quantile)

    @torch.no_grad()
    def _act_closed_form(self, obs: Tensor, n: int, steps: int, generator: torch.Generator) -> Tensor:
        """Reference samples, transport and best-of-N under the online Q as one graph (what ``act``
        does for select=max, with the same random draws)."""
        cfg = self.cfg
        noise = normal((obs.shape[0], n, self.act_dim), generator, obs.device)
        head = self.critic.head  # frames: each network encodes them once, before the loops
        fn = self._compiled_fn("act", _act_best)
        batched = [self.reference.encode(obs), self.critic.encode(obs), noise]
        rows = obs.shape[0]
        if fn.active:  # one compiled graph per budget for every batch size (lockstep batches shrink)
            batched = dynamic_batch(batched)
        actions = fn(self._sampling_flow(), self._online_tensors(), closed_form.critic_tensors(head),
                     closed_form.CriticShape.of(head), *batched, cfg.flow_steps, steps, self._transport_options(),
                     cfg.q_agg)
        return actions[:rows]

    def acts_compiled(self, options: dict) -> bool:
        """Whether ``act(**options)`` runs the compiled graph (``_act_closed_form``) when compile is on:
        fixed budgets with select=max (or one particle) under the closed-form critic; adaptive budgets
        stop states at different steps and run eagerly."""
        n = options.get("num_particles") or self.cfg.num_particles
        select = options.get("select") or self.cfg.select
        return options.get("budget") is None and (n == 1 or select == "max") and self._closed_form()

    def explore_options(self, budget: str | None = None) -> dict:
        """Online data collection (``vgf finetune``). Default (``budget`` None): best-of-N over N fresh
        reference samples with no transport step, as the reference main.py collects (its
        ``sample_actions`` call passes no ``eval_vgf_steps``, whose default is 0). ``budget``: an
        integer L, or ``train`` for L_train (``train_steps``); evaluation keeps its own budgets."""
        return {"steps": explore_steps(budget, self.cfg.train_steps)}

    @classmethod
    def check_explore_budget(cls, budget: str | None) -> None:
        explore_steps(budget, 0)

    def eval_settings(self, evaluate_cfg) -> list[EvalSetting]:
        """One row per test-time budget in ``evaluate.budgets`` with N particles (``evaluate.particles``,
        null = ``num_particles``): a number L is L steps for every state (L = 0: best-of-N under the
        learned Q); a name (auto, auto_std, auto_gain) is an adaptive budget of at most
        ``evaluate.budget_max`` steps (null = the largest L > 0 listed, else test_steps) whose rules use
        ``evaluate.stop_quantile`` / ``stop_gain`` (null = the method's)."""
        n = int(evaluate_cfg.get("particles") or self.cfg.num_particles)
        budgets = parse_budgets(evaluate_cfg.get("budgets") or [self.cfg.test_steps])
        fixed = [b for b in budgets if isinstance(b, int)]
        most = evaluate_cfg.get("budget_max")
        # no L > 0 listed (--budget 0,auto): the ceiling is the method's own test_steps
        most = int(most) if most is not None else max([b for b in fixed if b > 0], default=self.cfg.test_steps)
        if most < 1 and len(fixed) < len(budgets):
            raise ValueError(f"an adaptive budget needs budget_max >= 1, got {most}")
        rules = {"stop_quantile": evaluate_cfg.get("stop_quantile"), "stop_gain": evaluate_cfg.get("stop_gain")}
        rows = []
        for b in budgets:
            if isinstance(b, int):
                rows.append(EvalSetting(f"L={b}", f"budget_{b}", n, {"steps": b, "num_particles": n}, {"budget": b}))
                continue
            if reads_disagreement(b):
                self.disagreement_ceiling(0.5)  # a clear error now, not after the fixed rows ran
            if self.critic.members < 2:
                raise ValueError("adaptive budgets need a critic ensemble (method.num_critics >= 2)")
            rows.append(EvalSetting(f"{b}(L<={most})", f"budget_{b}", n,
                                    {"steps": most, "num_particles": n, "budget": b, **rules}, {"budget": b}))
        return rows
