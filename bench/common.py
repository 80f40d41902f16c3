"""What the bench scripts share: the command-line knobs every one takes and the machine facts each
result line records (a figure means little without the hardware and the load it was measured under)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("results.jsonl")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--obs-dim", type=int, default=28, help="observation width (cube-single's by default)")
    parser.add_argument("--act-dim", type=int, default=5, help="action width (cube-single's by default)")
    parser.add_argument("--out", default=str(RESULTS), help="JSON-lines file the result is appended to")


def apply_threads(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def machine() -> dict:
    """When, where and under what load: the fields every result line carries."""
    import torch

    return {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "loadavg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__}


def append(path, record: dict) -> None:
    """One JSON line appended in a single O_APPEND write, so concurrent scripts never interleave."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)
