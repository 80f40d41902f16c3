"""Does the critic know what its policy earns? Off-policy value checks for ``vgf evaluate``.

Calibration: at every decision of the evaluation episodes, the critic's Q at the state and the action
(chunk) actually executed, against the discounted return that followed in the same episode,
G_t = sum_k discount^k r_{t+k} over the rest of the episode, with rewards mapped as training mapped
them (``critic.reward_transform``). A time limit cuts G short where Q assumes more to come, so on
truncated episodes Q above G is expected; the correlation says whether Q ranks states and actions as
their outcomes do. TD: the method's own critic loss on batches of the validation split, which the
critic never trained on (against its training loss it shows over-fitting).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def reward_map(critic_summary: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Env rewards as the critic saw them in training (its run's summary says what was done)."""
    if critic_summary.get("reward_sparse"):
        return lambda r: -(np.asarray(r) != 0).astype(np.float64)
    shift = float(critic_summary.get("reward_shift", 0.0))
    scale = float(critic_summary.get("reward_scale", 1.0))
    return lambda r: (np.asarray(r, dtype=np.float64) + shift) * scale


def discounted_returns(rewards: np.ndarray, discount: float) -> np.ndarray:
    """``G[t] = sum_k discount^k rewards[t + k]`` for every step t of one episode."""
    out = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + discount * running
        out[t] = running
    return out


def calibration(q_fn, trace: dict[int, dict[str, np.ndarray]], discount: float, rewards_fn) -> tuple[dict, np.ndarray]:
    """Q at the executed decisions against the discounted return that followed; the summary and the
    ``[decisions, 2]`` pairs (Q, G). ``q_fn(obs, actions) -> [n]`` numpy."""
    obs, actions, returns = [], [], []
    for episode in sorted(trace):
        tr = trace[episode]
        if len(tr["t"]) == 0:
            continue
        g = discounted_returns(rewards_fn(tr["rewards"]), discount)
        obs.append(tr["obs"])
        actions.append(tr["actions"])
        returns.append(g[tr["t"]])
    if not obs:
        return {}, np.zeros((0, 2))
    q = np.concatenate([q_fn(o, a) for o, a in zip(obs, actions)])
    g = np.concatenate(returns)
    corr = float(np.corrcoef(q, g)[0, 1]) if len(q) > 1 and q.std() > 0 and g.std() > 0 else float("nan")
    summary = {"q_mean": float(q.mean()), "return_mean": float(g.mean()), "bias": float((q - g).mean()),
               "rmse": float(np.sqrt(((q - g) ** 2).mean())), "corr": corr, "decisions": int(len(q))}
    return summary, np.stack([q, g], axis=1)


def value_q_fn(agent, device):
    """``(obs, actions) -> Q`` in numpy for the value checks, batched; None for a method without a critic."""
    import torch

    if agent.critic is None:
        return None

    size = 256 if agent.pixels else 4096  # frame stacks are ~100x a state's size

    def q_fn(obs, actions):
        out = []
        for start in range(0, len(obs), size):
            o = agent.batched(obs[start:start + size])[0]
            a = torch.as_tensor(actions[start:start + size], dtype=torch.float32, device=device)
            out.append(agent.q_values(o, a).cpu().numpy())
        return np.concatenate(out)

    return q_fn


def validation_loss(agent, val_path, *, chunk: int, discount: float, rewards_fn, batches: int, batch_size: int,
                    seed: int, device, frame_stack: int | None = None) -> float | None:
    """Mean of the method's critic loss over ``batches`` batches of the validation split (no update;
    frames stacked as the agent was trained, never shifted)."""
    import torch

    from vgfcli.training import Sampler, load_tensors

    if agent.critic is None or batches < 1:
        return None
    data = load_tensors(val_path, device, frame_stack=frame_stack)
    data.rewards.copy_(torch.as_tensor(rewards_fn(data.rewards.cpu().numpy()), dtype=data.rewards.dtype))
    sampler = Sampler(data, batch_size, seed, chunk=chunk, discount=discount)
    losses = []
    for _ in range(batches):
        _, info = agent.losses(sampler.sample())
        losses.append(float(info["critic_loss"]))
    return float(np.mean(losses))
