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


RECOMPILE_LIMIT = 32


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
            # one graph per distinct Python argument (VGF's acting: one per budget L): room for a sweep
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
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


def dynamic_batch(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` (one batch's inputs of a compiled call, rows first) with their batch dimension marked
    dynamic, so one compiled graph serves every batch size: evaluation's lockstep batches shrink as
    episodes end, and under ``dynamic=False`` each size would compile again until dynamo's recompile
    limit sent the rest back to eager. A batch of one row is padded to two (its copy), since dynamo
    specialises sizes 0 and 1; the caller keeps the first rows of the result."""
    if tensors[0].shape[0] == 1:  # one copy per distinct tensor: dynamo guards on which inputs alias
        padded = {id(t): torch.cat([t, t]) for t in tensors}
        tensors = [padded[id(t)] for t in tensors]
    for t in tensors:
        torch._dynamo.mark_dynamic(t, 0)
    return tensors


# --- when compiling pays (evaluate.compile=auto) -------------------------------------------------------
# The choice must be a pure function of the config and the machine's kind (the same inputs give the same
# results.json bytes whatever the load), so nothing here is timed: eager acting's time per call is
# modelled from what one call does, counted (deterministically) by running it once:
#     eager seconds = aten ops x OP_SECONDS + matmul FLOPs / GEMM_FLOPS[kind]
# OP_SECONDS: eager dispatch per aten op at the quick size, 10-14 us measured on a 2-core AVX2 EPYC (issue
# 36) and on this project's AVX-512 Xeon. GEMM_FLOPS: one core's fp32 GEMM rate (~100 GFLOP/s on AVX2,
# bench_flops.py; AVX-512 about 1.5x; bf16 matmuls with AMX/avx512_bf16 about 2x that).
OP_SECONDS = {"cpu": 12e-6, "cuda": 10e-6}
GEMM_FLOPS = {"DEFAULT": 30e9, "AVX2": 100e9, "AVX512": 150e9, "AVX512+bf16": 300e9, "cuda": 20e12}
# Compiled acting's share of eager acting's time per call, measured by bench/bench_vs_official.py on
# 1 core (quick and paper sizes, L = 0 and 3; fp32 on AVX-512 and held to AVX2): 0.62 to 0.97, median 0.85.
COMPILED_SHARE = 0.85
# One acting graph's compile, cold inductor cache, measured at the quick size on a 2-core Xeon (AVX-512):
# 7-9 s a budget, ~19 s for the first (inductor's own start in the process). A warm cache compiles
# faster, but the cache's state is not an input: the choice always assumes the cold cost.
COLD_COMPILE_S = 10.0


def machine_kind(device: torch.device, amp: str | None) -> str:
    """What the cost model reads of the machine: "cuda", or the CPU's vector ISA as torch dispatches it
    (honours ``ATEN_CPU_CAPABILITY``), with "+bf16" where the method's matmuls run in bf16."""
    if torch.device(device).type == "cuda":
        return "cuda"
    isa = torch.backends.cpu.get_cpu_capability().upper()
    isa = isa if isa in GEMM_FLOPS else ("AVX512" if isa.startswith("AVX512") else "DEFAULT")
    return f"{isa}+bf16" if amp == "bf16" and isa == "AVX512" else isa


def modelled_call_s(ops: int, flops: float, kind: str) -> float:
    """Eager seconds of one call of ``ops`` aten ops and ``flops`` matmul FLOPs on a machine of ``kind``."""
    return ops * OP_SECONDS["cuda" if kind == "cuda" else "cpu"] + flops / GEMM_FLOPS[kind]


def count_call(fn: Callable[[], Any]) -> tuple[int, float]:
    """(aten ops, FLOPs) of one call of ``fn``: counted by torch's dispatcher, never timed."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class _Ops(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            _Ops.count += 1
            return func(*args, **(kwargs or {}))

    flops = FlopCounterMode(display=False)
    with flops, _Ops():
        fn()
    return _Ops.count, float(flops.get_total_flops())


def compile_pays(eager_call_s: float, calls: int, compile_s: float, compiled_share: float = COMPILED_SHARE) -> bool:
    """Whether ``calls`` calls that take ``eager_call_s`` each eagerly save more than ``compile_s``
    when compiled (then ``compiled_share`` of the time each)."""
    return calls * eager_call_s * (1.0 - compiled_share) > compile_s
