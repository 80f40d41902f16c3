"""Env copies stepped in helper processes, so that an evaluation steps its lockstep envs on several cores.

OGBench's manipulation envs cost ~1 ms of Python a step and ~0.1-0.5 s a reset (the MJCF model is
rebuilt), most of an evaluation at the quick sizes, and one process steps its copies one after another.
``EnvWorker`` holds some of the copies in a process of its own: ``evaluate_policy`` sends every remote
copy its step first, steps its own copies meanwhile, then reads the remote results in the usual order,
so the episodes, their seeds and the order in which copies take new episodes are those of one process
(the same numbers; ``tests/test_rollout.py`` checks it).

numpy's global RNG, which OGBench draws from in resets (and teleport mazes in steps), travels with each
request: the helper sets the episode's state around the call and returns the state after, as
``rollout.call_with_rng`` does in-process.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np

from vgfcli.errors import VgfError


def call_with_rng(legacy: dict, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with numpy's global RNG set to the episode's own state ``legacy`` (OGBench
    draws from it), so other episodes in between do not change it; returns (result, the state after)."""
    saved = np.random.get_state()
    np.random.set_state(legacy)
    try:
        return fn(*args, **kwargs), np.random.get_state()
    finally:
        np.random.set_state(saved)


def is_remote(env) -> bool:
    return getattr(env, "remote", False) is True


def steps_draw_global_rng(env) -> bool:
    """Whether ``env.step`` draws from numpy's global RNG: OGBench's teleport mazes pick the teleporter
    exit with it; no other env we build does."""
    if is_remote(env):
        return env.steps_draw_global_rng
    return getattr(env.unwrapped, "_teleport_info", None) is not None


def _serve(conn, make_env, count: int) -> None:
    """The helper process: build ``count`` copies with ``make_env()``, then answer requests until told to stop."""
    try:
        envs = [make_env() for _ in range(count)]
        conn.send(("ready", envs[0].action_space, steps_draw_global_rng(envs[0])))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which raises it)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent is gone
            break
        op = request[0]
        if op == "close":
            break
        try:
            _, i, payload = request
            env = envs[i]
            if op == "reset":
                seed, legacy = payload
                env.action_space.seed(seed)  # OGBench's maze reset samples the action space
                (obs, info), legacy = call_with_rng(legacy, env.reset, seed=seed)
                conn.send(("ok", (obs, info), legacy))
            else:
                action, legacy = payload
                if legacy is None:
                    conn.send(("ok", env.step(action), None))
                else:
                    out, legacy = call_with_rng(legacy, env.step, action)
                    conn.send(("ok", out, legacy))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    for env in envs:
        env.close()


class EnvWorker:
    """``count`` copies from ``make_env`` (a picklable callable, e.g. a ``functools.partial`` of
    ``rollout.make_env``) in a helper process; ``remote(i)`` is copy i's proxy."""

    def __init__(self, make_env, env_id: str, count: int):
        self.env_id, self.count = env_id, count
        ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold torch's thread pools
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, make_env, count), daemon=True)
        self.proc.start()
        child.close()
        self._ready = None

    def ready(self) -> tuple[Any, bool]:
        """(the action space, whether steps draw from numpy's global RNG), once the copies are built."""
        if self._ready is None:
            _, *rest = self._receive()
            self._ready = tuple(rest)
        return self._ready

    def _receive(self):
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            raise VgfError(f"the env helper process for '{self.env_id}' died (exit code {self.proc.exitcode})") from None
        if reply[0] == "error":
            raise VgfError(f"env '{self.env_id}' failed in its helper process: {reply[1]}")
        return reply

    def request(self, op: str, i: int, payload) -> None:
        self.conn.send((op, i, payload))

    def result(self):
        _, out, legacy = self._receive()
        return out, legacy

    def close(self) -> None:
        if self.conn.closed:
            return
        if self.proc.is_alive():
            try:
                self.conn.send(("close",))
            except (OSError, BrokenPipeError):
                pass
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
        self.conn.close()

    def remote(self, i: int) -> "RemoteEnv":
        return RemoteEnv(self, i)


class RemoteEnv:
    """Copy ``i`` of an ``EnvWorker``: the part of an env's API ``evaluate_policy`` uses, split into
    sending a request and reading its result, so other copies can step in between."""

    remote = True

    def __init__(self, worker: EnvWorker, i: int):
        self.worker, self.i = worker, i

    @property
    def action_space(self):
        return self.worker.ready()[0]

    @property
    def steps_draw_global_rng(self) -> bool:
        return self.worker.ready()[1]

    def reset(self, seed: int, legacy: dict) -> tuple[np.ndarray, dict]:
        """(obs, numpy's global RNG state after) of a seeded reset (the action space seeded alike)."""
        self.worker.request("reset", self.i, (seed, legacy))
        (obs, _), legacy = self.worker.result()
        return obs, legacy

    def send_step(self, action: np.ndarray, legacy: dict | None) -> None:
        self.worker.request("step", self.i, (action, legacy))

    def step_result(self):
        """(obs, reward, terminated, truncated, info), and the RNG state after (None if none was sent)."""
        return self.worker.result()

    def close(self) -> None:
        self.worker.close()  # the helper and every copy in it (again: a no-op)
