"""What the training stages share: device choice, the dataset as tensors, batch sampling, and a
resumable loop with atomic checkpoints.

Resuming is exact: a checkpoint holds the model(s), optimiser(s), step and every random stream
(the sampler's generator and the method's own), so a run killed and resumed ends where an
uninterrupted run ends, on deterministic hardware.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vgfcli.errors import TrainingDiverged, VgfError

# Dataset actions are clipped just inside the box when loaded for training, for every method, as every
# reference repo does before any training (the flow never has to reach the boundary exactly, and the
# critic sees the same actions the flow was cloned from).
ACTION_CLIP = 1.0 - 1e-5


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else must name an available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VgfError(f"device '{name}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VgfError(f"device '{name}' asked for, but this machine has no CUDA device (use device=auto or cpu)")
    return device


@dataclass
class PixelFrames:
    """A pixel dataset's frames, and observations made of them by index: a frame stack of ``frame_stack``
    frames ending at a row, clamped to its episode's first frame (``vgfcli.pixels``)."""

    frames: object  # uint8 [M, H, W, C]: a tensor on the data's device, or a FrameReader (larger than memory)
    starts: torch.Tensor  # [M] each frame's episode start (a frame no transition uses: 0)
    frame_stack: int

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w, c = self.frames.shape[1:]
        return int(h), int(w), int(c) * self.frame_stack

    def observe(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, C * frame_stack]``: the observations whose newest frame is at ``rows``."""
        from vgfcli.pixels import gather_stack, stack_indices

        stacks = stack_indices(rows.cpu(), self.starts, self.frame_stack)
        if isinstance(self.frames, torch.Tensor):
            return gather_stack(self.frames, stacks.to(self.frames.device))
        picked = torch.from_numpy(self.frames[stacks.reshape(-1).numpy()]).to(rows.device)
        return gather_stack(picked, torch.arange(picked.shape[0], device=rows.device).reshape(stacks.shape))


@dataclass
class TensorData:
    """The canonical dataset's arrays as float32 tensors on one device. For a pixel dataset
    ``observations`` and ``next_observations`` are frame rows (int64) and ``pixels`` makes them images."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    masks: torch.Tensor
    terminals: torch.Tensor  # 1.0 on the last row of each trajectory
    attrs: dict
    pixels: PixelFrames | None = None

    @property
    def size(self) -> int:
        return self.observations.shape[0]

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """One observation's shape: ``(obs_dim,)``, or ``(H, W, C * frame_stack)`` for pixels."""
        return self.pixels.shape if self.pixels is not None else (self.observations.shape[1],)

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.obs_shape))

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def next_states(self):
        """What a method precomputes from (``Agent.prepare``): the next observations, row-indexable, as
        tensors; for pixels an ``ObservedRows`` that makes each row's frame stack when indexed."""
        if self.pixels is None:
            return self.next_observations
        return ObservedRows(self.next_observations, self.pixels)


@dataclass
class ObservedRows:
    """A pixel dataset's observations by row, made when indexed: ``view[idx]`` is the uint8 frame
    stacks ``[len(idx), H, W, C]`` of rows ``idx`` (a batch's worth at a time, never all of them)."""

    rows: torch.Tensor  # [N] frame rows (int64)
    pixels: PixelFrames

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.pixels.observe(self.rows[idx])


def load_tensors(path: Path, device: torch.device, *, frame_stack: int | None = None) -> TensorData:
    """The dataset at ``path`` on ``device``. A pixel dataset's frames are read into memory when they
    take at most half of the memory available, else read per batch (``FrameReader``); its
    observations are stacks of ``frame_stack`` frames (None: 1)."""
    from vgfcli.data import canonical
    from vgfcli.data.frames import fits_in_memory

    ds = canonical.load(path, frames="lazy")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=device)

    actions = t(ds.actions).clamp_(-ACTION_CLIP, ACTION_CLIP)
    if not ds.is_pixels:
        return TensorData(t(ds.observations), actions, t(ds.rewards), t(ds.next_observations), t(ds.masks),
                          t(ds.terminals), dict(ds.attrs))
    frames = ds.frames
    if fits_in_memory(frames.shape):
        frames = torch.from_numpy(frames.read_all()).to(device)
    rows, next_rows = (torch.as_tensor(ds.observations, device=device), torch.as_tensor(ds.next_observations, device=device))
    pixel_frames = PixelFrames(frames, frame_starts(ds.observations, ds.next_observations, ds.terminals, len(frames)),
                               int(frame_stack or 1))
    return TensorData(rows, actions, t(ds.rewards), next_rows, t(ds.masks), t(ds.terminals), dict(ds.attrs),
                      pixel_frames)


def frame_starts(rows: np.ndarray, next_rows: np.ndarray, terminals: np.ndarray, frames: int) -> torch.Tensor:
    """``[frames]``: the frame row each frame's episode began at, from the transitions' frame rows and
    their trajectory ends (a transition's next frame belongs to its episode)."""
    from vgfcli.data.canonical import episode_starts

    first = np.repeat(episode_starts(terminals), np.diff(np.append(episode_starts(terminals), len(terminals))))
    starts = np.zeros(frames, dtype=np.int64)
    starts[rows] = rows[first]
    starts[next_rows] = rows[first]
    return torch.as_tensor(starts)


REWARD_TRANSFORMS = ("none", "return_range", "minus_one", "sparse")


def transform_rewards(data: TensorData, how: str) -> dict:
    """Transform ``data.rewards`` in place as the reference code does: ``return_range`` multiplies by
    1000 / (max - min undiscounted trajectory return) (VGF's D4RL locomotion), ``minus_one`` subtracts
    1 (antmaze), ``sparse`` maps r to -(r != 0) (QAM on puzzle-3x3, scene and puzzle-4x4: -1 until
    every subtask is done, 0 then). Returns what was done, for the run's summary."""
    if how not in REWARD_TRANSFORMS:
        raise VgfError(f"critic.reward_transform must be one of {', '.join(REWARD_TRANSFORMS)}, got '{how}'")
    if how == "sparse":
        data.rewards.copy_(-(data.rewards != 0).to(data.rewards.dtype))
        return {"reward_sparse": 1.0}
    if how == "minus_one":
        data.rewards.sub_(1.0)
        return {"reward_shift": -1.0}
    if how == "return_range":
        from vgfcli.data.canonical import episode_returns

        returns = episode_returns(data.rewards.cpu().numpy(), data.terminals.cpu().numpy())
        spread = float(returns.max() - returns.min())
        if spread <= 0:
            raise VgfError("critic.reward_transform=return_range: every trajectory has the same return")
        data.rewards.mul_(1000.0 / spread)
        return {"reward_scale": 1000.0 / spread}
    return {}


def chunk_starts(terminals: np.ndarray | torch.Tensor, chunk: int) -> torch.Tensor:
    """Rows i whose next ``chunk`` rows i .. i+chunk-1 lie in one trajectory (``terminals`` marks each
    trajectory's last row; a final row without one ends a trajectory too)."""
    from vgfcli.data.canonical import episode_starts

    term = np.asarray(terminals.cpu() if isinstance(terminals, torch.Tensor) else terminals)
    starts = episode_starts(term)
    lengths = np.diff(np.append(starts, len(term)))
    rows_left = np.repeat(starts + lengths, lengths) - np.arange(len(term))  # rows to the trajectory's end
    return torch.as_tensor(np.flatnonzero(rows_left >= chunk), dtype=torch.int64)


class Sampler:
    """Uniform minibatches (with replacement, as the reference code) from one seeded generator.

    With ``chunk`` = H > 1 a sample is an H-step sequence that never crosses a trajectory boundary:
    ``actions`` are the H actions flattened ``[B, H * act_dim]``, ``rewards`` the discounted sum
    sum_k discount^k r_{i+k} up to and including the first step that stops bootstrapping (mask 0),
    ``masks`` 1 only if no step of the sequence stops bootstrapping, ``next_observations`` the state
    after the H-th step, and ``indices`` that step's dataset row (whose ``next_observations`` these are;
    for H = 1, the sampled row itself).
    """

    def __init__(self, data: TensorData, batch_size: int, seed: int, chunk: int = 1, discount: float = 1.0,
                 p_aug: float | None = None):
        self.data, self.batch_size, self.chunk, self.discount = data, batch_size, int(chunk), float(discount)
        self.p_aug = p_aug  # pixels: chance a batch is randomly shifted (drawn from the same stream)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.starts = chunk_starts(data.terminals, self.chunk) if self.chunk > 1 else None
        if self.starts is not None and self.starts.numel() == 0:
            raise VgfError(f"no trajectory in the dataset has {self.chunk} steps: use a smaller chunk")

    def sample(self) -> dict[str, torch.Tensor]:
        if self.starts is None:
            idx = torch.randint(0, self.data.size, (self.batch_size,), generator=self.generator)
        else:
            idx = self.starts[torch.randint(0, self.starts.numel(), (self.batch_size,), generator=self.generator)]
        return self.batch_at(idx)

    def batch_at(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch starting at dataset rows ``idx`` (valid chunk starts when ``chunk`` > 1); a pixel
        dataset's observations are frame stacks, shifted with probability ``p_aug``."""
        batch = self._rows_at(idx)
        pixels = self.data.pixels
        if pixels is None:
            return batch
        from vgfcli.pixels import augment

        batch["observations"] = pixels.observe(batch["observations"])
        batch["next_observations"] = pixels.observe(batch["next_observations"])
        return augment(batch, self.p_aug, self.generator)

    def _rows_at(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        d, dev = self.data, self.data.observations.device
        idx = idx.to(dev, non_blocking=True)
        if self.chunk == 1:
            return {
                "observations": d.observations[idx], "actions": d.actions[idx], "rewards": d.rewards[idx],
                "next_observations": d.next_observations[idx], "masks": d.masks[idx], "indices": idx,
            }
        h = self.chunk
        rows = idx.unsqueeze(1) + torch.arange(h, device=dev)                       # [B, H]
        masks = d.masks[rows]
        # alive[:, k]: no earlier step of the sequence stopped bootstrapping, so reward k counts.
        alive = torch.cat([torch.ones_like(masks[:, :1]), masks[:, :-1].cumprod(1)], dim=1)
        powers = self.discount ** torch.arange(h, device=dev, dtype=masks.dtype)
        last = rows[:, -1]
        return {
            "observations": d.observations[idx], "actions": d.actions[rows].reshape(idx.shape[0], -1),
            "rewards": (d.rewards[rows] * alive * powers).sum(1), "masks": masks.prod(1),
            "next_observations": d.next_observations[last], "indices": last,
        }


class Checkpoints:
    """``last.pt`` in a work folder that outlives a killed run; written atomically."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "last.pt"
        self.problem: str | None = None  # why the last load found no usable checkpoint, if one was there

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a damaged checkpoint costs a restart (with a warning), never a crash
            self.problem = (f"checkpoint {self.path} cannot be read ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:120]}); training starts again from step 0")
            return None

    def save(self, state: dict) -> None:
        from vgfcli.cache import torch_bytes, write_bytes_atomic

        write_bytes_atomic(self.path, torch_bytes(state))  # a full disk: ENOSPC, the temporary file removed


@dataclass
class LoopReport:
    resumed_from: int  # the step the run resumed from (0 for a fresh start)
    seconds: float
    last: dict  # the last logged value of every metric

    def updates_per_s(self, steps: int) -> float:
        return round((steps - self.resumed_from) / max(self.seconds, 1e-9), 2)


def train_loop(run, ui, label: str, *, steps: int, step_fn, state_fn, load_fn, checkpoint_every: int,
               log_every: int, every: dict | None = None, start_state: dict | None = None) -> LoopReport:
    """``fit`` inside a stage run: checkpoints in the run's work folder (which the runner removes once
    the run has finished), metrics to MLflow, a progress bar, and a note when it resumed.
    ``start_state``: where to start when there is no checkpoint (a shorter run's end, ``Stage.continues``)."""
    from vgfcli.tracking import work_dir

    start = time.perf_counter()
    with ui.progress(label, steps, unit="updates") as bar:
        resumed = fit(steps=steps, step_fn=step_fn, state_fn=state_fn, load_fn=load_fn,
                      checkpoints=Checkpoints(work_dir(run.stage, run.cache_key)), checkpoint_every=checkpoint_every,
                      log_every=log_every, log=run.log_metrics, bar=bar, every=every, warn=ui.warn,
                      start_state=start_state)
    if resumed:
        ui.note(f"resumed from step {resumed}")
    return LoopReport(resumed, time.perf_counter() - start, dict(run.latest_metrics))


def fit(*, steps: int, step_fn: Callable[[int], dict], state_fn: Callable[[], dict],
        load_fn: Callable[[dict], int], checkpoints: Checkpoints, checkpoint_every: int, log_every: int,
        log: Callable[[dict, int], None], bar, every: dict[int, Callable[[int], dict]] | None = None,
        warn: Callable[[str], None] | None = None, start_state: dict | None = None) -> int:
    """Run ``step_fn(step)`` for steps ``[start, steps)``, resuming from the last checkpoint.

    ``step_fn`` returns metrics as 0-dim tensors; they are averaged over ``log_every`` steps on the
    device and read back once per log (no host sync per step). ``every`` maps an interval to a
    callback whose metrics are logged at that step (validation losses, say). Returns the step the
    run resumed from (0 for a fresh start).

    A non-finite metric (a NaN or inf loss) stops the loop with ``TrainingDiverged`` naming the first
    such step and metric: the step is tracked on the device, read back only at a log or a checkpoint,
    and no checkpoint is written after it. The final state's tensors are checked too (a weight can
    turn NaN in the last step). An unreadable checkpoint is a warning (``warn``) naming the file.
    """
    from vgfcli.methods.base import scalars

    state = checkpoints.load()
    if checkpoints.problem and warn is not None:
        warn(checkpoints.problem)
    state = start_state if state is None else state  # this run's own checkpoint is further on
    if state is not None:
        try:
            start = load_fn(state)
        except Exception as exc:
            raise VgfError(f"checkpoint {checkpoints.path} does not fit this run ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:120]}); delete it to start over") from None
    else:
        start = 0
    bar.advance(start)
    sums: dict[str, torch.Tensor] = {}
    count, t_log = 0, time.perf_counter()
    first_bad: torch.Tensor | None = None  # the first step with a non-finite metric, -1 while none
    for step in range(start, steps):
        info = step_fn(step)
        for key, value in info.items():
            sums[key] = sums[key] + value.detach() if key in sums else value.detach().clone()
        first_bad = _track_non_finite(info, step, first_bad)
        count += 1
        done = step + 1
        logging = done % log_every == 0 or done == steps
        if logging or (done % checkpoint_every == 0 and done < steps):
            _raise_if_diverged(first_bad, sums)
        if logging:
            metrics = {k: v / count for k, v in scalars(sums).items()}
            now = time.perf_counter()
            metrics["updates_per_s"] = count / max(now - t_log, 1e-9)  # over this log interval
            t_log = now
            log(metrics, done)
            bar.advance(count)
            sums, count = {}, 0
        for interval, callback in (every or {}).items():
            if done % interval == 0 or done == steps:
                log(callback(done), done)
        if done % checkpoint_every == 0 and done < steps:
            checkpoints.save(state_fn() | {"step": done})
    if start < steps:
        _check_finite_state(state_fn(), steps)
    return start


def _track_non_finite(info: dict, step: int, first_bad: torch.Tensor | None) -> torch.Tensor | None:
    """Device-side: keep the first step at which any metric of ``info`` was NaN or inf (no sync)."""
    values = [v.detach().reshape(()).float() for v in info.values() if isinstance(v, torch.Tensor)]
    if not values:
        return first_bad
    bad = ~torch.isfinite(torch.stack(values)).all()
    if first_bad is None:
        first_bad = torch.full((), -1, dtype=torch.int64, device=values[0].device)
    return torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)


def _raise_if_diverged(first_bad: torch.Tensor | None, sums: dict) -> None:
    if first_bad is None or int(first_bad) < 0:
        return
    culprits = [f"{k}={float(v):g}" for k, v in sums.items() if not math.isfinite(float(v))]
    raise TrainingDiverged(f"training diverged: a non-finite loss at step {int(first_bad) + 1} "
                           f"({', '.join(culprits) or 'a metric'} over the log interval); the run is FAILED and "
                           "nothing was cached (lower the learning rate or check the data)")


def _check_finite_state(state: dict, step: int) -> None:
    """Every floating tensor of the final state (weights, optimiser moments) must be finite."""
    def walk(node, path):
        if isinstance(node, torch.Tensor):
            if node.is_floating_point() and not bool(torch.isfinite(node).all()):
                raise TrainingDiverged(f"training diverged: non-finite values in {path} after step {step}; the "
                                       "run is FAILED and nothing was cached")
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(state, "")
