"""Matmul precision: what ``amp=auto`` means on a device, and the autocast context for it."""

from __future__ import annotations

import contextlib

import torch


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto``: bf16 where matmuls have native bf16 (a CUDA GPU that supports it, a CPU with
    AVX512-BF16 or AMX), else off; ``off`` and ``bf16`` stay as they are."""
    if amp != "auto":
        return amp
    if device.type == "cuda":  # native bf16 tensor cores from Ampere (sm_80) on; older GPUs emulate it
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "off"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "off"


def autocast(device: torch.device, amp: str):
    """bf16 autocast on ``device`` for ``amp`` = "bf16", else a context that changes nothing."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
