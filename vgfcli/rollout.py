"""Roll a policy out in the real environment: the engine behind the evaluation stage.

``evaluate_policy`` steps ``num_envs`` copies of one environment in lockstep and asks the policy for actions
once per step, batched over every copy that needs one (a policy call integrates an ODE: batching it matters).
With ``env_processes``, helper processes hold and step a share of the copies (``vgfcli.env_workers``): OGBench's
manipulation steps cost ~1 ms of Python and its resets rebuild the model, work a second core can share.

Reproducibility: episode ``i`` is reset with seeds derived from ``(seed, i)`` alone, and whichever copy runs it
starts from a fresh ``reset``, so with a deterministic policy the per-episode results do not depend on
``num_envs``. OGBench also draws from numpy's *global* RNG (maze start noise in ``reset``; teleport mazes also in
``step``), so every episode carries its own copy of that global state, swapped in around those calls. A swap
costs ~0.18 ms (numpy converts the 624-word state through Python), more than a maze step, so plain steps skip it.

Env copies are expensive to build (cube-single: ~0.9 s of MJCF compilation each) and every episode starts with a
seeded reset, so copies are kept in a per-process pool and reused by later calls (``release_envs`` closes them).

Success follows OGBench's own evaluation (and FQL's, which reuses it): an episode runs until
``terminated or truncated`` and its success is ``info['success']`` of the last step. Single-task OGBench envs
are registered with ``success_timing='pre'`` and ``terminate_at_goal=True``: a step whose *starting* state is at
the goal reports success and terminates, and a TimeLimit truncates at the family's ``max_episode_steps``
(read from the registry). Their reward is 0 on success steps and -1 otherwise.
"""

from __future__ import annotations

import functools
import os
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vgfcli import seeds
from vgfcli.env_workers import EnvWorker, call_with_rng, is_remote, steps_draw_global_rng
from vgfcli.errors import VgfError
from vgfcli.video import camera_and_view

# D4RL's Ant datasets were recorded with gym's Ant-v3 under mujoco>=2: 111-dim observations whose 84 contact-force
# entries are always zero. Gymnasium's Ant-v4 with use_contact_forces=True reproduces exactly that layout (Ant-v5
# has 105 dims and real contact forces), so D4RL ant data is evaluated on this alias.
D4RL_ANT_ENV_ID = "vgf/AntD4RL-v4"


def _register_aliases(gymnasium) -> None:
    if D4RL_ANT_ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=D4RL_ANT_ENV_ID,
            entry_point="gymnasium.envs.mujoco.ant_v4:AntEnv",
            kwargs={"use_contact_forces": True},
            max_episode_steps=1000,
        )


def ogbench_env_id(name: str) -> str:
    """The env id for an OGBench single-task name; a dataset name maps the way ogbench.make_env_and_datasets does.

    'cube-single-play-singletask-task2-v0' (a dataset) -> 'cube-single-singletask-task2-v0' (its env): drop the
    dataset-type word just before 'singletask'. Names that are already env ids come back unchanged.
    """
    splits = name.split("-")
    if "singletask" in splits:
        pos = splits.index("singletask")
        candidate = "-".join(splits[: pos - 1] + splits[pos:])
        import gymnasium

        if name not in gymnasium.registry and candidate in gymnasium.registry:
            return candidate
    return name


def resolve_env(env_id: str) -> tuple[str, bool]:
    """(registered id, whether it is an OGBench env). OGBench registers its envs on import, so import it only
    when the id is not already known to gymnasium (the MuJoCo locomotion ids are, without importing MuJoCo)."""
    import gymnasium

    _register_aliases(gymnasium)
    if env_id not in gymnasium.registry:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import ogbench  # noqa: F401  (registers its envs with gymnasium)
            except ImportError:
                pass
        env_id = ogbench_env_id(env_id)
    if env_id not in gymnasium.registry:
        from vgfcli.scores import gym_env_for

        hint = gym_env_for(env_id)
        hint = f" (for that dataset evaluate on '{hint}')" if hint else ""
        raise VgfError(f"unknown environment id '{env_id}': not a gymnasium or OGBench env id{hint}")
    entry = gymnasium.registry[env_id].entry_point
    return env_id, isinstance(entry, str) and entry.startswith("ogbench.")


def make_env(env_id: str, seed: int | None = None, *, max_episode_steps: int | None = None,
             render_size: int | None = None):
    """Build one environment the way its benchmark evaluates it.

    OGBench ids (e.g. 'cube-single-singletask-task2-v0') go through ``gymnasium.make`` after ``import ogbench``.
    That is exactly what ``ogbench.make_env_and_datasets(<dataset>, env_only=True)`` does for a single-task
    dataset name (it strips the dataset type and calls ``gymnasium.make(env_name, **env_kwargs)``, no extra
    wrappers); OGBench dataset names are accepted too and mapped the same way. Any other id is a gymnasium env
    (MuJoCo v4 for D4RL data, v5 for Minari data, e.g. 'Hopper-v5'). ``max_episode_steps`` overrides the
    registered time limit. ``render_size``: frames of that many pixels a side from ``env.render()``
    (MuJoCo offscreen; ``MUJOCO_GL`` picks EGL or OSMesa). Unknown ids raise VgfError.
    """
    import gymnasium

    env_id, _ = resolve_env(env_id)
    kwargs: dict[str, Any] = {}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    if render_size is not None and not env_id.startswith("visual-"):
        # a visual env's width and height are its observations' size: its videos are drawn apart
        kwargs |= {"render_mode": "rgb_array", "width": int(render_size), "height": int(render_size)}
    try:
        with warnings.catch_warnings():
            # v4 MuJoCo ids warn that they are out of date; they are chosen on purpose to match D4RL's dynamics.
            warnings.simplefilter("ignore")
            # No PassiveEnvChecker (it only inspects): in OGBench's manipulation envs its look at
            # observation_space is a full reset, the MuJoCo model compiled once more per env copy.
            env = gymnasium.make(env_id, disable_env_checker=True, **kwargs)
    except gymnasium.error.Error as e:  # missing dependency, deprecated version, ...
        raise VgfError(f"cannot build environment '{env_id}': {e}") from None
    except (ImportError, AttributeError, OSError) as e:
        # MuJoCo loads the OpenGL backend MUJOCO_GL names when it is first imported; a missing one
        # (osmesa without libOSMesa, egl without libEGL) fails there, deep inside PyOpenGL.
        gl = os.environ.get("MUJOCO_GL")
        if not gl or not re.search(r"\bgl|opengl|egl|osmesa", f"{e}", re.IGNORECASE):
            raise
        raise VgfError(f"cannot build environment '{env_id}': MuJoCo's OpenGL backend MUJOCO_GL={gl} does not load "
                       f"({type(e).__name__}: {' '.join(str(e).split())[:120]}); use MUJOCO_GL=egl (libegl1), or "
                       "osmesa with libosmesa6 installed") from None
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
    return env


@dataclass
class EvalResult:
    env_id: str
    episodes: int
    returns: np.ndarray  # [episodes] float64, undiscounted, in episode order
    lengths: np.ndarray  # [episodes] int64 env steps
    successes: np.ndarray | None  # [episodes] float64 0/1, None when the env reports no info['success']
    success_rate: float | None
    return_mean: float
    return_std: float
    steps: int  # env steps over all episodes
    seconds: float  # wall time of the whole call, env construction included
    policy_seconds: float  # part of ``seconds`` spent inside the policy
    policy_calls: int  # batched policy calls
    policy_states: int = 0  # observations the policy acted on, over all its calls (actions/s = this / policy_seconds)
    frames: dict[int, list] | None = None  # episode -> its rendered frames (render_episodes), reset frame first
    render_seconds: float = 0.0  # part of ``seconds`` spent rendering
    # record=True: episode -> {"obs": [decisions, obs_dim], "actions": [decisions, H * act_dim] as executed
    # (clipped), "t": [decisions] step of each decision, "rewards": [length]}
    trace: dict[int, dict[str, np.ndarray]] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready scalars for logging."""
        out: dict[str, Any] = {
            "env_id": self.env_id,
            "episodes": self.episodes,
            "return_mean": self.return_mean,
            "return_std": self.return_std,
            "length_mean": float(self.lengths.mean()),
            "steps": self.steps,
            "seconds": self.seconds,
            "policy_seconds": self.policy_seconds,
            "policy_calls": self.policy_calls,
            "policy_states": self.policy_states,
        }
        if self.success_rate is not None:
            out["success_rate"] = self.success_rate
        return out


# Idle env copies by (env id, time limit, render size), reused across evaluate_policy calls in this process.
_POOL: dict[tuple[str, int | None, int | None], list] = {}


def _take_envs(env_id: str, max_episode_steps: int | None, n: int, render_size: int | None = None,
               helpers: int = 0) -> list:
    """``n`` env copies: with ``helpers`` helper processes (``vgfcli.env_workers``), a share of them in
    each, built there while this process builds its own."""
    remote_n = n - -(-n // (helpers + 1)) if helpers > 0 else 0
    idle_remote = _POOL.setdefault((env_id, max_episode_steps, "remote"), [])
    remote = [idle_remote.pop() for _ in range(min(remote_n, len(idle_remote)))]
    short, workers = remote_n - len(remote), min(helpers, remote_n - len(remote))
    for k in range(workers):  # the shortfall, split over the helpers
        worker = EnvWorker(functools.partial(make_env, env_id, max_episode_steps=max_episode_steps), env_id,
                           short // workers + (k < short % workers))
        remote += [worker.remote(i) for i in range(worker.count)]
    idle = _POOL.setdefault((env_id, max_episode_steps, render_size), [])
    envs = [idle.pop() for _ in range(min(n - remote_n, len(idle)))]
    while len(envs) < n - remote_n:
        envs.append(make_env(env_id, max_episode_steps=max_episode_steps, render_size=render_size))
    return envs + remote


def _give_back(env_id: str, max_episode_steps: int | None, render_size: int | None, envs: list) -> None:
    for env in envs:
        _POOL.setdefault((env_id, max_episode_steps, "remote" if is_remote(env) else render_size), []).append(env)


def release_envs() -> None:
    """Close every pooled env copy (frees MuJoCo models and any renderer)."""
    for envs in _POOL.values():
        for env in envs:
            view = getattr(getattr(env, "unwrapped", None), "_vgf_view_renderer", None)
            if view is not None:  # camera_and_view's renderer
                view.close()
            env.close()
    _POOL.clear()


class _Slot:
    """One env copy and the episode it is running."""

    __slots__ = ("env", "episode", "obs", "queue", "ret", "length", "legacy", "swap_steps", "trace", "frames", "remote",
                 "action")

    def __init__(self, env):
        self.env = env
        self.remote = is_remote(env)  # a copy in a helper process (vgfcli.env_workers)
        self.swap_steps = steps_draw_global_rng(env)
        self.action = None  # this step's action
        self.episode: int | None = None
        self.obs = None
        self.queue: list[np.ndarray] = []  # actions of the current chunk still to execute
        self.ret = 0.0
        self.length = 0
        self.legacy = None  # this episode's copy of numpy's global RNG state
        self.trace: dict[str, list] | None = None  # record=True: this episode's decisions and rewards
        self.frames: list[np.ndarray] = []  # camera observations: the last frame_stack frames, oldest first

    def observe(self, obs, frame_stack: int, reset: bool) -> None:
        """The policy's view of ``obs``: a state as a float32 vector; a camera frame (uint8 H x W x C) with
        the frames before it, channels concatenated, the first frame repeated at a reset (the reference's
        frame-stack wrapper)."""
        obs = np.asarray(obs)
        if obs.dtype != np.uint8 or obs.ndim != 3:
            self.obs = np.asarray(obs, np.float32).reshape(-1)
            return
        self.frames = [obs] * frame_stack if reset else [*self.frames[1:], obs]
        self.obs = np.concatenate(self.frames, axis=-1)

    def call(self, fn, *args, **kwargs):
        out, self.legacy = call_with_rng(self.legacy, fn, *args, **kwargs)
        return out


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator; avoids importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def evaluate_policy(
    env_id: str,
    policy: Callable[[np.ndarray], np.ndarray],
    *,
    episodes: int,
    num_envs: int,
    seed: int,
    max_episode_steps: int | None = None,
    action_repeat_chunk: int = 1,
    progress: Callable[[int], None] | None = None,
    render_episodes: int = 0,
    render_size: int = 256,
    record: bool = False,
    frame_stack: int = 1,
    env_processes: int = 0,
) -> EvalResult:
    """Run exactly ``episodes`` episodes of ``policy`` on ``num_envs`` lockstepped copies of ``env_id``.

    ``policy(obs [n, obs_dim] float32) -> actions [n, act_dim]``, or ``[n, H*act_dim]`` (or ``[n, H, act_dim]``)
    when ``action_repeat_chunk`` = H > 1: the H actions then run open loop, one per step, and an episode that
    ends mid-chunk drops the rest. Each step makes at most one policy call, over the copies whose chunk is used
    up. Actions are clipped to the action space, as OGBench/FQL evaluation clips to [-1, 1].
    Camera observations (visual envs) reach the policy as uint8 ``[n, H, W, C * frame_stack]`` frame stacks.
    ``progress(n_finished)`` is called each time an episode finishes. Episodes ``0 .. render_episodes-1``
    are rendered frame by frame (``EvalResult.frames``); rendering reads the simulator's state and changes
    no outcome. ``record`` keeps every episode's decisions and rewards (``EvalResult.trace``).
    ``env_processes``: helper processes that hold and step a share of the copies (``vgfcli.env_workers``;
    not with rendering), on other cores; the numbers are the same.
    """
    if episodes < 1:
        raise VgfError(f"evaluation needs at least one episode, got episodes={episodes}")
    if num_envs < 1:
        raise VgfError(f"num_envs must be at least 1, got {num_envs}")
    if action_repeat_chunk < 1:
        raise VgfError(f"action_repeat_chunk must be at least 1, got {action_repeat_chunk}")
    if seed < 0:
        raise VgfError(f"evaluation seed must be non-negative, got {seed}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise VgfError(f"max_episode_steps must be at least 1, got {max_episode_steps}")

    t0 = time.perf_counter()
    env_id, _ = resolve_env(env_id)
    H = int(action_repeat_chunk)
    render = render_size if render_episodes > 0 else None
    helpers = 0 if render else max(0, int(env_processes))
    slots = [_Slot(env) for env in _take_envs(env_id, max_episode_steps, min(num_envs, episodes), render, helpers)]
    frames: dict[int, list] = {}
    traces: dict[int, dict[str, np.ndarray]] = {}
    render_seconds = 0.0

    def snap(slot: _Slot) -> None:
        nonlocal render_seconds
        if slot.episode is not None and slot.episode < render_episodes:
            tr = time.perf_counter()
            try:
                frame = slot.env.render() if not slot.frames else camera_and_view(slot.env, slot.frames[-1], render_size)
            except Exception as exc:  # no EGL device, no OSMesa library, ...
                raise VgfError(f"rendering '{env_id}' failed with MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset)')} "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); try MUJOCO_GL=egl, or "
                               "MUJOCO_GL=osmesa with OSMesa installed (Debian: libosmesa6)") from None
            frames.setdefault(slot.episode, []).append(np.asarray(frame, dtype=np.uint8))
            render_seconds += time.perf_counter() - tr
    space = slots[0].env.action_space
    act_shape = tuple(space.shape)
    act_dim = int(np.prod(act_shape))
    low = np.broadcast_to(np.asarray(space.low, np.float64).reshape(-1), (act_dim,))
    high = np.broadcast_to(np.asarray(space.high, np.float64).reshape(-1), (act_dim,))

    returns = np.zeros(episodes, np.float64)
    lengths = np.zeros(episodes, np.int64)
    successes = np.full(episodes, np.nan)
    next_episode = 0
    finished = 0
    steps = 0
    policy_calls = policy_states = 0
    policy_seconds = 0.0

    def start(slot: _Slot) -> None:
        nonlocal next_episode
        if next_episode >= episodes:
            slot.episode = None
            return
        i = next_episode
        next_episode += 1
        env_seed, legacy_seed = seeds.episode_seeds(seed, i)
        slot.episode, slot.queue, slot.ret, slot.length = i, [], 0.0, 0
        slot.legacy = np.random.RandomState(legacy_seed).get_state()
        if slot.remote:  # seeds its action space and swaps the RNG state as below, in its process
            obs, slot.legacy = slot.env.reset(env_seed, slot.legacy)
        else:
            # OGBench's maze reset takes a few action_space.sample() steps; seed that RNG too.
            slot.env.action_space.seed(env_seed)
            obs, _ = slot.call(slot.env.reset, seed=env_seed)
        slot.observe(obs, frame_stack, reset=True)
        slot.trace = {"obs": [], "actions": [], "t": [], "rewards": []} if record else None
        snap(slot)

    try:
        for slot in slots:
            start(slot)
        while True:
            live = [s for s in slots if s.episode is not None]
            if not live:
                break
            need = [s for s in live if not s.queue]
            if need:
                batch = np.stack([s.obs for s in need])
                tp = time.perf_counter()
                actions = _as_numpy(policy(batch))
                policy_seconds += time.perf_counter() - tp
                policy_calls += 1
                policy_states += len(need)
                if actions.size != len(need) * H * act_dim or actions.shape[0] != len(need):
                    raise VgfError(
                        f"policy returned actions of shape {actions.shape} for {len(need)} observations of "
                        f"'{env_id}'; expected ({len(need)}, {H * act_dim}) ({H} x {act_dim}-dim actions)"
                    )
                if not np.all(np.isfinite(actions)):
                    raise VgfError(f"policy returned non-finite actions on '{env_id}' (diverged checkpoint?)")
                chunks = np.clip(actions.reshape(len(need), H, act_dim), low, high)
                for s, chunk in zip(need, chunks):
                    s.queue = list(chunk)
                    if s.trace is not None:
                        s.trace["obs"].append(s.obs)
                        s.trace["actions"].append(chunk.reshape(-1).astype(np.float32))
                        s.trace["t"].append(s.length)
            for s in live:  # remote copies first get their steps, which run while this process steps its own
                s.action = s.queue.pop(0).reshape(act_shape)
                if s.remote:
                    s.env.send_step(s.action, s.legacy if s.swap_steps else None)
            for s in live:
                if s.remote:
                    (obs, reward, terminated, truncated, info), legacy = s.env.step_result()
                    s.legacy = legacy if legacy is not None else s.legacy
                elif s.swap_steps:
                    obs, reward, terminated, truncated, info = s.call(s.env.step, s.action)
                else:
                    obs, reward, terminated, truncated, info = s.env.step(s.action)
                steps += 1
                s.ret += float(reward)
                s.length += 1
                s.observe(obs, frame_stack, reset=False)
                if s.trace is not None:
                    s.trace["rewards"].append(float(reward))
                snap(s)
                if terminated or truncated:
                    i = s.episode
                    returns[i], lengths[i] = s.ret, s.length
                    if s.trace is not None:
                        traces[i] = {k: np.asarray(v) for k, v in s.trace.items()}
                    if "success" in info:
                        successes[i] = float(bool(info["success"]))
                    finished += 1
                    if progress is not None:
                        progress(finished)
                    start(s)
    finally:
        # Back to the pool even after an error: the next use starts every episode with a seeded reset.
        _give_back(env_id, max_episode_steps, render, [slot.env for slot in slots])

    has_success = not np.all(np.isnan(successes))
    # An env that reports success on some final steps but not others did not succeed on the others.
    successes = np.nan_to_num(successes, nan=0.0)
    return EvalResult(
        env_id=env_id,
        episodes=episodes,
        returns=returns,
        lengths=lengths,
        successes=successes if has_success else None,
        success_rate=float(successes.mean()) if has_success else None,
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        steps=steps,
        seconds=time.perf_counter() - t0,
        policy_seconds=policy_seconds,
        policy_calls=policy_calls,
        policy_states=policy_states,
        frames=frames if render_episodes > 0 else None,
        render_seconds=render_seconds,
        trace=traces if record else None,
    )
