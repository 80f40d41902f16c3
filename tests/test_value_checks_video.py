"""`vgf evaluate`'s value checks of the critic and its episode videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.value_checks import calibration, discounted_returns, reward_map

runner = CliRunner()
SMOKE = ["preset=smoke", "evaluate.budgets=[0]"]


def test_discounted_returns_exact():
    assert discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5).tolist() == [1.5, 1.0, 2.0]
    assert discounted_returns(np.array([-1.0, -1.0]), 1.0).tolist() == [-2.0, -1.0]


def test_calibration_of_a_critic_that_knows_the_returns():
    rewards = np.array([-1.0, -1.0, -1.0, 0.0])
    trace = {0: {"obs": np.array([[0.0], [2.0]]), "actions": np.zeros((2, 1)), "t": np.array([0, 2]),
                 "rewards": rewards},
             1: {"obs": np.zeros((0, 1)), "actions": np.zeros((0, 1)), "t": np.array([], dtype=int),
                 "rewards": np.array([])}}
    g = discounted_returns(rewards, 0.9)  # [-2.71, -1.9, -1.0, 0.0]
    exact = lambda obs, actions: g[obs[:, 0].astype(int)]  # noqa: E731  a critic with Q = G
    summary, pairs = calibration(exact, trace, 0.9, reward_map({}))
    assert summary["bias"] == pytest.approx(0.0) and summary["rmse"] == pytest.approx(0.0)
    assert summary["corr"] == pytest.approx(1.0) and summary["decisions"] == 2
    assert pairs[:, 1].tolist() == pytest.approx([g[0], g[2]])
    shifted, _ = calibration(exact, trace, 0.9, reward_map({"reward_shift": -1.0}))  # rewards as training saw them
    assert shifted["return_mean"] < summary["return_mean"]


def test_value_checks_in_evaluate():
    out = runner.invoke(app, ["pipeline", *SMOKE, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    rows = result["results"]
    for row in rows:  # the reference row too: Q at the reference policy's actions
        check = row["value_check"]
        assert set(check) == {"q_mean", "return_mean", "bias", "rmse", "corr", "decisions"}
        assert check["decisions"] > 0 and np.isfinite(check["q_mean"])
    assert np.isfinite(result["metrics"]["val_critic_loss"])
    assert "value_bias/budget_0" in result["metrics"]
    assert Path(result["stages"]["evaluate"]["outputs"]["value_plot"]).stat().st_size > 0
    saved = json.loads(Path(result["results_file"]).read_text())
    assert saved["results"][1]["value_check"] == rows[1]["value_check"]


def test_videos_are_extra_artifacts_of_the_same_scores():
    from vgfcli.video import frame_count

    plain = runner.invoke(app, ["pipeline", *SMOKE, "--json"])
    assert plain.exit_code == 0, plain.output
    first = json.loads(plain.stdout)
    assert first["videos"] == []

    filmed = runner.invoke(app, ["evaluate", *SMOKE, "--video", "1"])
    assert filmed.exit_code == 0, filmed.output
    assert "running it again" in filmed.stderr  # the cached run has no videos

    again = runner.invoke(app, ["evaluate", *SMOKE, "--video", "1", "--json"])
    second = json.loads(again.stdout)
    assert second["cache_hit"] and second["run_id"] != first["run_id"]
    assert second["cache_key"] == first["cache_key"]  # the same scores' key
    assert Path(second["results_file"]).read_bytes() == Path(first["results_file"]).read_bytes()
    assert len(second["videos"]) == len(second["results"])  # one episode per row
    saved = json.loads(Path(second["results_file"]).read_text())
    lengths = [r["outcomes"]["length"][0] for r in saved["results"]]
    assert [frame_count(Path(v)) for v in sorted(second["videos"])] == [n + 1 for n in  # reset frame first
                                                                     [lengths[1], lengths[0]]]
    assert second["summary"]["render_s"] > 0
    no_video = runner.invoke(app, ["evaluate", *SMOKE, "--json"])  # the newest run of the key, videos and all
    assert json.loads(no_video.stdout)["run_id"] == second["run_id"]


def test_a_missing_gl_backend_is_a_clear_error(tmp_path):
    """MUJOCO_GL=osmesa where OSMesa is not installed: exit 2 naming MUJOCO_GL, not an internal error."""
    import ctypes.util
    import os
    import subprocess
    import sys

    if ctypes.util.find_library("OSMesa"):
        pytest.skip("OSMesa is installed here: the backend loads")
    assert runner.invoke(app, ["pipeline", *SMOKE]).exit_code == 0
    env = {**os.environ, "MUJOCO_GL": "osmesa"}
    out = subprocess.run([sys.executable, "-m", "vgfcli", "evaluate", *SMOKE, "--video", "1"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "MUJOCO_GL=osmesa" in out.stderr and "libosmesa6" in out.stderr and "Traceback" not in out.stderr
