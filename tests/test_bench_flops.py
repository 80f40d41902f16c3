"""bench/bench_flops.py: the update's matmul count, checked by hand on small widths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_flops import mlp_macs, update_flops  # noqa: E402


def test_mlp_macs_counts_each_layer_once_per_row():
    assert mlp_macs(3, [4], 2, rows=10) == 10 * (3 * 4 + 4 * 2)
    assert mlp_macs(3, [4, 5], 1, rows=1) == 3 * 4 + 4 * 5 + 5 * 1


def test_the_two_updates_differ_by_euler_sampling_and_the_observation_share():
    c = dict(hidden=[4, 4], batch=3, particles=2, flow_steps=5, train_steps=2)
    obs, act, members = 6, 2, 2
    out = update_flops(c, obs, act, members)
    rows = 3 * 2
    euler = 5 * mlp_macs(obs + act + 1, [4, 4], act, rows)
    share = members * rows * obs * 4              # per particle, every transport step and the target
    once = members * 3 * obs * 4                  # per state, once for the transport and once for the target
    expected = euler + (2 + 1) * share - 2 * once
    assert out["official_gflop"] - out["vgf_gflop"] == pytest.approx(2 * expected / 1e9, rel=1e-9)
