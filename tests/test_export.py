"""`vgf export`: one program per acting rule, loadable without vgf, acting exactly as agent.act does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from vgfcli.cli import app

runner = CliRunner()
SMOKE = ["preset=smoke", "evaluate.budgets=[0]", "evaluate.episodes=1", "evaluate.num_envs=1"]

# Runs in a fresh interpreter: plain torch (and onnxruntime), never vgfcli.
LOADER = """
import json, sys
import torch
program_path, inputs_path, out_path = sys.argv[1:4]
meta = {"vgf.json": ""}
program = torch.export.load(program_path, extra_files=meta).module()
meta = json.loads(meta["vgf.json"])
obs, noise = torch.load(inputs_path)
assert noise.shape[1] == meta["noise_dim"], (noise.shape, meta)
result = {"pt2": program(obs, noise)}
if len(sys.argv) > 4:
    import onnxruntime
    session = onnxruntime.InferenceSession(sys.argv[4], providers=["CPUExecutionProvider"])
    result["onnx"] = torch.as_tensor(session.run(None, {"observations": obs.numpy(), "noise": noise.numpy()})[0])
assert not any(name.startswith("vgfcli") for name in sys.modules), "vgfcli was imported"
torch.save(result, out_path)
"""


def _agent_actions(method: str, overrides: list[str], obs, noise):
    """What agent.act gives for ``obs`` with ``noise`` fed in place of its generator."""
    from vgfcli.stages.export import STAGE, export_setting

    from vgfcli.agents import load_agent
    from vgfcli.config import compose
    from vgfcli.nn.noise import GivenNoise
    from vgfcli.ui import UI
    from vgfcli.upstream import Upstream

    cfg = compose("train", [f"method={method}", *SMOKE, *overrides])
    inputs = STAGE.resolve_inputs(cfg, Upstream(cfg, UI(json_mode=True)))
    agent, _ = load_agent(cfg, inputs.upstream, torch.device("cpu"), fp32_eager=True)
    return agent.act(obs, generator=GivenNoise(noise), **export_setting(agent, cfg).options)


@pytest.mark.parametrize("method,overrides", [
    ("vgf", ["export.budget=0", "export.format=onnx"]),
    ("vgf", ["export.budget=3", "export.particles=3"]),
    ("avgf", ["export.budget=2"]),
    ("qgf", ["export.guidance=0.1"]),
    ("qam", ["export.format=onnx"]),
    ("fql", ["export.format=onnx", "export.particles=2"]),
    ("bc", ["export.format=onnx"]),
])
def test_export_acts_as_the_agent_in_a_fresh_interpreter(method, overrides, tmp_path):
    made = runner.invoke(app, ["pipeline", f"method={method}", *SMOKE])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["export", f"method={method}", *SMOKE, *overrides, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # stdout is the JSON object alone (ONNX's chatter kept off it)
    summary = out["summary"]
    assert all(v <= 1e-5 for v in summary["parity_max_abs_diff"].values())
    assert out["metrics"]["program_actions_per_s"] > 0
    onnx = "export.format=onnx" in overrides
    assert set(out["outputs"]) == ({"program", "onnx"} if onnx else {"program"})

    # new states and new noise, a batch size the trace never saw
    generator = torch.Generator().manual_seed(5)
    obs = torch.randn(7, summary["obs_dim"], generator=generator)
    noise = torch.randn(7, summary["noise_dim"], generator=generator)
    torch.save((obs, noise), tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    args = [sys.executable, str(script), out["outputs"]["program"], str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    loaded = subprocess.run(args + ([out["outputs"]["onnx"]] if onnx else []), cwd=tmp_path, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    actions = torch.load(tmp_path / "out.pt")
    expected = _agent_actions(method, overrides, obs, noise)
    assert actions["pt2"].shape == (7, summary["act_dim"])
    for fmt, got in actions.items():
        assert (got - expected).abs().max() <= 1e-5, fmt

    again = runner.invoke(app, ["export", f"method={method}", *SMOKE, *overrides, "--json"])
    assert json.loads(again.stdout)["cache_hit"]


def test_export_refuses_what_cannot_be_one_program():
    assert runner.invoke(app, ["pipeline", "method=vgf", *SMOKE]).exit_code == 0
    onnx = runner.invoke(app, ["export", "method=vgf", *SMOKE, "export.budget=2", "export.format=onnx"])
    assert onnx.exit_code == 2 and "ONNX has no operators" in onnx.stderr and "export.format=pt2" in onnx.stderr
    adaptive = runner.invoke(app, ["export", "method=vgf", *SMOKE, "export.budget=auto"])  # steps vary per state
    assert adaptive.exit_code == 2 and "export.budget" in adaptive.stderr
    negative = runner.invoke(app, ["export", "method=vgf", *SMOKE, "export.budget=-1"])
    assert negative.exit_code == 2 and "export.budget" in negative.stderr
    fmt = runner.invoke(app, ["export", "method=vgf", *SMOKE, "export.format=tflite"])
    assert fmt.exit_code == 2 and "export.format" in fmt.stderr
    ignored = runner.invoke(app, ["export", "method=vgf", *SMOKE, "export.guidance=0.1", "--json"])
    assert ignored.exit_code == 0 and "export.guidance is ignored by method vgf" in ignored.stderr
    plain = runner.invoke(app, ["export", "method=vgf", *SMOKE, "--json"])
    assert json.loads(plain.stdout)["run_id"] == json.loads(ignored.stdout)["run_id"]  # not in the key
    missing = runner.invoke(app, ["export", "method=qgf", *SMOKE])
    assert missing.exit_code == 2 and "train-critic" in missing.stderr  # no critic run yet: says what makes one


def test_noise_given_in_draw_order_reproduces_the_generator():
    from vgfcli.nn.noise import GivenNoise, RecordedNoise, normal

    recorded = RecordedNoise(torch.Generator().manual_seed(0))
    a, b = normal((4, 3, 2), recorded), normal((4, 5), recorded)
    plain = torch.Generator().manual_seed(0)
    assert torch.equal(a, torch.randn((4, 3, 2), generator=plain)) and torch.equal(b, torch.randn((4, 5), generator=plain))
    given = GivenNoise(recorded.matrix())
    assert recorded.matrix().shape == (4, 11)
    assert torch.equal(normal((4, 3, 2), given), a) and torch.equal(normal((4, 5), given), b)
    with pytest.raises(ValueError, match="more noise than given"):
        normal((4, 1), given)


def test_export_help_and_config():
    assert "policy.pt2" in runner.invoke(app, ["export", "--help"]).stdout
    cfg = runner.invoke(app, ["export", "--cfg"]).stdout
    assert "parity_states: 64" in cfg  # the section is in the composed config
