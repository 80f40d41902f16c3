"""Intervals of scores (exact values) and the report's family means over tasks."""

import numpy as np
import pytest

from vgfcli.report import FAMILY_SUFFIX, Cell, _family_means, task_family
from vgfcli.stats import bootstrap_mean, episode_interval, percentile_interval, wilson


def test_wilson_interval_known_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert episode_interval([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], binary=True) == pytest.approx(wilson(5, 10))


@pytest.mark.parametrize("n", range(1, 201))
def test_wilson_interval_contains_its_mean_exactly_at_the_ends(n):
    # 0 of 50 gave a lower bound of 7e-18 (rounding): an error bar below zero, which matplotlib refuses
    assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0
    for k in (0, 1, n // 2, n):
        low, high = wilson(k, n)
        assert low <= k / n <= high


def test_evaluate_error_bars_are_never_negative():
    from vgfcli.plots import _yerr

    rows = [{"score": 0.0, "interval": (6.9e-18, 0.07)}, {"score": 0.5, "interval": (0.3, 0.7)}]
    low, high = _yerr(rows)
    assert low == [0.0, pytest.approx(0.2)] and high == [0.07, pytest.approx(0.2)]


def test_normal_interval_of_returns():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * x.std(ddof=1) / 2
    assert episode_interval(x, binary=False) == pytest.approx((2.5 - half, 2.5 + half))


def test_bootstrap_resamples_seeds_then_episodes():
    constant = bootstrap_mean([np.full(5, 0.4)])
    assert np.all(constant == pytest.approx(0.4))
    two = bootstrap_mean([np.zeros(4), np.ones(4)], replicates=20000)
    values, counts = np.unique(np.round(two, 6), return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]              # which seeds were drawn decides it here
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert percentile_interval(two) == (0.0, 1.0)
    again = bootstrap_mean([np.zeros(4), np.ones(4)], replicates=20000)
    assert np.array_equal(two, again)                      # a fixed seed: the same table every time


def test_task_families():
    assert task_family("cube-single-play-singletask-task2-v0") == "cube-single-play"
    assert task_family("cube-single-play-singletask-task2-v0 (H=5)") == "cube-single-play (H=5)"
    assert task_family("hopper-medium-v2") == "d4rl-locomotion"
    assert task_family("pen-cloned-v1") == "d4rl-adroit"  # not the dataset's own protocol family
    assert task_family("mystery") is None


def test_family_mean_averages_the_tasks_per_seed_and_per_replicate():
    def cell(a, b):
        c = Cell({0: np.array(a, float), 1: np.array(b, float)})
        c.replicates = bootstrap_mean(list(c.outcomes.values()))
        return c

    t1, t2 = "cube-single-play-singletask-task1-v0", "cube-single-play-singletask-task2-v0"
    cells = {(t1, "vgf"): cell([1, 1], [0, 1]), (t2, "vgf"): cell([0, 0], [1, 1]),
             (t1, "bc"): cell([0, 0], [0, 0])}
    rows = _family_means(cells, [t1, t2])
    assert rows == ["cube-single-play" + FAMILY_SUFFIX]
    fam = cells[(rows[0], "vgf")]
    assert fam.by_seed == {0: 0.5, 1: 0.75} and fam.tasks == 2
    assert fam.mean == pytest.approx(0.625)
    assert np.allclose(fam.replicates, (cells[(t1, "vgf")].replicates + cells[(t2, "vgf")].replicates) / 2)
    assert (rows[0], "bc") not in cells  # one task of the family only: no mean


def test_a_success_cell_where_every_episode_failed_still_has_a_width():
    from vgfcli.report import _pooled

    cell = Cell({0: np.zeros(30), 1: np.zeros(30), 2: np.zeros(30)})
    cell.replicates = bootstrap_mean(list(cell.outcomes.values()))
    assert cell.interval == (0.0, 0.0)          # the bootstrap alone: no width
    cell.pooled = _pooled(cell.outcomes.values())
    assert cell.pooled == (0.0, 90)
    assert cell.interval == pytest.approx(wilson(0, 90))
