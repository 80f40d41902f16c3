"""Evaluation rows: seeds of their own, how many workers, and errors from a worker process."""

import os
import types

import pytest

from vgfcli.errors import VgfError
from vgfcli.eval_rows import RowJob, auto_workers, run_rows
from vgfcli.methods.base import EvalSetting
from vgfcli.seeds import row_seed


def test_a_rows_seed_depends_on_the_run_seed_and_its_key_alone():
    assert row_seed(0, "budget_1") == row_seed(0, "budget_1")
    assert len({row_seed(0, "budget_1"), row_seed(0, "budget_2"), row_seed(1, "budget_1"),
                row_seed(0, "reference")}) == 4
    assert 0 <= row_seed(123, "guidance_0.04") < 2**63


def test_workers_one_per_core_for_long_cpu_evaluations_only():
    assert auto_workers(None, rows=5, episodes=50, device="cuda") == 1
    assert auto_workers(None, rows=5, episodes=2, device="cpu") == 1  # a worker's start would not pay
    assert 1 <= auto_workers(None, rows=5, episodes=50, device="cpu") <= 5
    assert auto_workers(None, rows=1, episodes=50, device="cpu") == 1
    assert auto_workers(3, rows=2, episodes=2, device="cpu") == 2  # never more than one per row
    # camera frames: every step renders, so even short rows pay a worker's start
    assert auto_workers(None, rows=3, episodes=10, device="cpu", rendered=True) == min(3, len(os.sched_getaffinity(0)))


def stub_agent():
    """Picklable by reference: what a worker builds (the env below fails before any action)."""
    return types.SimpleNamespace(device="cpu", chunk=1)


def test_an_error_in_a_worker_reaches_the_caller_as_itself():
    jobs = [RowJob(EvalSetting(f"L={b}", f"budget_{b}", 1, {"steps": b}), False, "no-such-env-v0", 2, 1, 0,
                   None, 0, 64, False) for b in (0, 1, 2)]
    with pytest.raises(VgfError, match="unknown environment id 'no-such-env-v0'"):
        run_rows(stub_agent(), jobs, workers=2, make_agent=stub_agent)


def test_auto_env_workers_uses_spare_cores_for_long_evaluations(monkeypatch):
    from vgfcli.eval_rows import auto_env_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert auto_env_workers(None, 1, copies=10, env_steps=10_000, video=False) == 3   # one per spare core
    assert auto_env_workers(None, 1, copies=2, env_steps=10_000, video=False) == 1    # one copy stays here
    assert auto_env_workers(None, 2, copies=10, env_steps=10_000, video=False) == 0   # row workers fill the cores
    assert auto_env_workers(None, 1, copies=10, env_steps=10_000, video=True) == 0    # frames come from the env
    assert auto_env_workers(None, 1, copies=10, env_steps=4_999, video=False) == 0    # too short to pay a start
    assert auto_env_workers(5, 2, copies=3, env_steps=10, video=True) == 2            # asked for: capped by copies
