"""`vgf finetune`: online steps after train-critic, exact resume after kill -9, buffer and all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from vgfcli.cli import app

runner = CliRunner()
SMOKE = ["preset=smoke", "evaluate.budgets=[0]", "threads=1", "online.eval_every=20", "online.eval_episodes=2",
         "online.max_episode_steps=15", "online.log_every=10"]


def _vgf(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "VGF_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "vgfcli", *args], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("method,extra", [("vgf", []), ("qam", ["chunk=5"]), ("fql", [])])  # qam: action chunks
def test_finetune_resumes_exactly_after_kill(method, extra, tmp_path, empty_store):
    """A kill -9 mid-run resumes from the checkpoint (buffer, open episode, random streams) and ends with
    the same agent, curves and episodes as a run never interrupted."""
    import shutil

    homes = {name: tmp_path / name for name in ("whole", "killed")}
    args = ["finetune", f"method={method}", *SMOKE, *extra, "online.steps=120", "online.checkpoint_every=25", "--json"]
    for home in homes.values():
        home.mkdir()
        shutil.copy(empty_store, home / "mlflow.db")
        made = _vgf(["pipeline", f"method={method}", *SMOKE, *extra], home)
        assert made.returncode == 0, made.stderr[-2000:]
    whole = _vgf(args, homes["whole"])
    assert whole.returncode == 0, whole.stderr[-2000:]

    env = {**os.environ, "VGF_HOME": str(homes["killed"])}
    proc = subprocess.Popen([sys.executable, "-m", "vgfcli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = homes["killed"] / "work"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoints.rglob("last.pt")):
        time.sleep(0.05)
    state = torch.load(next(checkpoints.rglob("last.pt")), weights_only=False)  # noqa: F841  a complete file
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _vgf(args, homes["killed"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = json.loads(whole.stdout), json.loads(resumed.stdout)
    assert b["summary"]["resumed_from_step"] >= 25 and a["summary"]["resumed_from_step"] == 0
    assert b["summary"]["episodes"] == a["summary"]["episodes"] > 1
    curves = [json.loads(open(x["outputs"]["curves"]).read()) for x in (a, b)]
    assert curves[0] == curves[1]
    assert [c["step"] for c in curves[0]["curves"]] == [0, 20, 40, 60, 80, 100, 120]
    agents = [torch.load(x["outputs"]["agent"], weights_only=False)["agent"] for x in (a, b)]
    for part in agents[0]:
        if isinstance(agents[0][part], dict) and "state" not in agents[0][part]:  # network weights
            for name, tensor in agents[0][part].items():
                if isinstance(tensor, torch.Tensor):
                    assert torch.equal(tensor, agents[1][part][name]), (part, name)


def test_finetune_in_the_pipeline_and_its_table():
    out = runner.invoke(app, ["pipeline", *SMOKE, "finetune=true", "online.steps=40", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert "finetune" in result["stages"]
    table = runner.invoke(app, ["finetune", *SMOKE, "online.steps=40"])
    assert table.exit_code == 0 and "before (offline)" in table.stdout and "env steps/s" in table.stdout
    bc = runner.invoke(app, ["finetune", *SMOKE, "method=bc"])
    assert bc.exit_code == 2 and "no critic to fine-tune" in bc.stderr


def test_replay_buffer_mixing_and_chunks():
    from vgfcli.replay import ReplayBuffer, ReplaySampler
    from vgfcli.training import TensorData

    n = 10
    data = TensorData(torch.zeros(n, 2), torch.zeros(n, 1), torch.zeros(n), torch.zeros(n, 2), torch.ones(n),
                      torch.tensor([0.0] * 4 + [1.0] + [0.0] * 4 + [1.0]), {})
    buffer = ReplayBuffer(data, 6)
    for i in range(6):  # online rows carry reward 1, the dataset's 0
        buffer.add([0.0, 0.0], [0.5], 1.0, [0.0, 0.0], 1.0, terminal=i in (2, 5))
    assert buffer.size == 16 and buffer.online == 6
    balanced = ReplaySampler(buffer, 1000, seed=0, balanced=True).sample()
    assert balanced["rewards"].sum() == 500  # half the batch online
    uniform = ReplaySampler(buffer, 4000, seed=0).sample()
    assert 1200 < uniform["rewards"].sum() < 1800  # 6 of 16 rows online
    chunked = ReplaySampler(buffer, 2000, seed=0, chunk=3, discount=1.0)
    starts = set(chunked.sample()["indices"].tolist())  # the last row of each 3-step sequence
    assert starts <= {2, 3, 4, 7, 8, 9, 12, 15}  # never across a trajectory end; online episodes of 3 rows
    saved = buffer.online_state()
    again = ReplayBuffer(data, 6)
    again.load_online_state(saved)
    assert again.size == 16 and torch.equal(again.rewards, buffer.rewards) and again.episode_start == 16
