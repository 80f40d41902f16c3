"""``torch.compile`` where it can run, eager where it cannot, and what compiling cost.

A ``Compiled`` wraps a function (or module). With compilation on, the first call for each new input
signature (tensor shapes and dtypes, other arguments by value) is where torch.compile traces and
builds code: its wall time is added to ``seconds`` so that a stage can report the one-off cost next
to the per-step speed (a compiled module's backward graph is built at its first ``backward()``,
outside the wrapper: ``add_seconds`` lets the caller count it). If compilation fails (no C++ compiler, an unsupported platform, an operator
inductor cannot lower), one warning says so and the function runs eagerly from then on: same numbers,
less speed.

Inductor's on-disk cache does not key its C++ kernels on the vector ISA: kernels generated for AVX2
(8 floats a vector) and later built for AVX-512 (16) write past their buffers and corrupt the heap.
That happens when one machine runs with and without ``ATEN_CPU_CAPABILITY`` (as the benches do to
stand in for an AVX2 CPU), or when nodes of different CPU kinds share one cache directory. So unless
``TORCHINDUCTOR_CACHE_DIR`` is set, each ISA gets a cache directory of its own.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "torch.compile could not build this", not "the maths failed"
    (a real error, e.g. a shape mismatch, surfaces as itself or as dynamo's TorchRuntimeError)."""
    found = []
    for module, names in (("torch._dynamo.exc", ("BackendCompilerFailed", "InternalTorchDynamoError", "Unsupported")),
                          ("torch._inductor.exc", ("InductorError", "CppCompileError"))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(found)


def isolate_inductor_cache() -> str:
    """Point inductor at a cache directory of the current CPU ISA's own (see the module docstring),
    unless the user chose one; returns the directory in use. (Importing torch._dynamo already writes
    inductor's default into the environment, so the default counts as not chosen.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and os.path.abspath(chosen) != default:
        return chosen
    isa = torch.backends.cpu.get_cpu_capability().lower()  # honours ATEN_CPU_CAPABILITY
    path = os.path.join(default, isa)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def _signature(value: Any):
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _signature(v)) for k, v in sorted(value.items()))
    if isinstance(value, torch.nn.Module):
        return ("M", id(value))
    return value if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__


class Compiled:
    """``fn`` through ``torch.compile(dynamic=False)`` when ``enabled``; see the module docstring."""

    def __init__(self, fn: Callable, enabled: bool, name: str = "", **compile_kwargs):
        self.fn, self.name = fn, name or getattr(fn, "__name__", type(fn).__name__)
        if enabled:
            isolate_inductor_cache()
        self.compiled = torch.compile(fn, dynamic=False, **compile_kwargs) if enabled else None
        self.seconds = 0.0
        self._seen: set = set()

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        key = (_signature((args, kwargs)), torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        first = key not in self._seen
        start = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except _compile_errors() as exc:  # compilation failed: the eager function is the same maths
            warnings.warn(f"torch.compile of {self.name} failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); running it eagerly",
                          stacklevel=2)
            self.compiled = None
            return self.fn(*args, **kwargs)
        if first:
            self._seen.add(key)
            self.seconds += time.perf_counter() - start
        return out

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def add_seconds(self, seconds: float) -> None:
        self.seconds += seconds


# --- when compiling pays (evaluate.compile=auto) -------------------------------------------------------
# Compiled acting's share of eager acting's time per call, measured by bench/bench_vs_official.py on
# 1 core (quick and paper sizes, L = 0 and 3; fp32 on AVX-512 and held to AVX2): 0.62 to 0.97, median 0.85.
COMPILED_SHARE = 0.85
# One acting graph's compile, cold inductor cache, measured at the quick size on a 2-core Xeon (AVX-512):
# 7-9 s a budget, ~19 s for the first (inductor's own start in the process). Used until this machine
# has compiled the same agent once: then the cost it measured (a warm cache: ~1 s a budget).
COLD_COMPILE_S = 10.0
_COSTS_FILE = "vgf_compile_costs.json"


def compile_pays(eager_call_s: float, calls: int, compile_s: float, compiled_share: float = COMPILED_SHARE) -> bool:
    """Whether ``calls`` calls that take ``eager_call_s`` each eagerly save more than ``compile_s``
    when compiled (then ``compiled_share`` of the time each)."""
    return calls * eager_call_s * (1.0 - compiled_share) > compile_s


def measured_compile_s(key: str) -> float | None:
    """Seconds a compile of ``key`` took last time on this machine (its ISA's inductor cache), or None."""
    import json

    try:
        with open(os.path.join(isolate_inductor_cache(), _COSTS_FILE)) as f:
            value = json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def record_compile_s(key: str, seconds: float) -> None:
    """Keep ``seconds`` as the cost of compiling ``key`` here (atomic; a failure to write is ignored:
    the record only steers a speed choice)."""
    import json
    import tempfile

    folder = isolate_inductor_cache()
    path = os.path.join(folder, _COSTS_FILE)
    try:
        os.makedirs(folder, exist_ok=True)
        try:
            with open(path) as f:
                costs = json.load(f)
            costs = costs if isinstance(costs, dict) else {}
        except (OSError, ValueError):
            costs = {}
        costs[key] = round(float(seconds), 3)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(costs, f)
        os.replace(tmp, path)
    except OSError:
        pass
