"""evaluate.compile=auto: compile acting only where the evaluation's policy calls repay the compile, a choice
made from counted ops and FLOPs, never from a timing, so the same inputs give the same bytes."""

from __future__ import annotations

import time

import pytest
import torch

from vgfcli.eval_rows import choose_compile, compile_setting
from vgfcli.methods.base import EvalSetting
from vgfcli.methods.vgf import VGFAgent
from vgfcli.nn.compiled import COLD_COMPILE_S, GEMM_FLOPS, compile_pays, machine_kind


def test_compile_pays_when_the_calls_saving_exceeds_the_cost():
    # 1000 calls of 10 ms at half the time compiled save 5 s: more than 1 s of compiling, less than 6 s
    assert compile_pays(0.01, 1000, 1.0, compiled_share=0.5)
    assert not compile_pays(0.01, 1000, 6.0, compiled_share=0.5)
    assert not compile_pays(0.01, 0, 0.5, compiled_share=0.5)


def test_compile_setting_reads_true_false_and_auto():
    assert compile_setting("auto") == "auto" and compile_setting("AUTO") == "auto"
    assert compile_setting(True) is True and compile_setting("True") is True and compile_setting("false") is False
    with pytest.raises(ValueError, match="true, false or auto"):
        compile_setting("sometimes")


def test_config_rejects_other_compile_values():
    from vgfcli.config import compose
    from vgfcli.errors import VgfError

    assert compose("train", ["evaluate.compile=true"]).evaluate.compile == "True"
    with pytest.raises(VgfError, match="evaluate.compile must be true, false or auto, got 'often'"):
        compose("train", ["evaluate.compile=often"])


def _agent(compile: bool = False):
    torch.manual_seed(0)
    return VGFAgent.create(None, 7, 3, critic_hidden=(16, 16), actor_hidden=(16, 16), num_particles=4, flow_steps=3,
                           bank_size=0, amp="off", compile=compile)


def _rows(*budgets):
    return [EvalSetting(f"L={b}", f"budget_{b}", 4, {"steps": b, "num_particles": 4}) for b in budgets]


def test_auto_choice_is_counted_never_timed(monkeypatch):
    agent = _agent()
    stream = agent.act_generator.get_state()
    real = time.perf_counter
    choices = []
    for scale in (1e-3, 1e3):  # a clock 1000x slower, then 1000x faster: the same choice, the same figures
        monkeypatch.setattr(time, "perf_counter", lambda s=scale: real() * s)
        choices.append([choose_compile(agent, _rows(0, 2), batch=5, calls=c) for c in (10, 10**6)])
    monkeypatch.setattr(time, "perf_counter", real)
    assert choices[0] == choices[1]
    short, long = choices[0]
    assert short["compile"] is False and long["compile"] is True and short["steps"] == 10
    assert short["ops_per_step"] > 0 and short["gflop_per_step"] > 0 and short["rows_compiled"] == 2
    assert long["estimated_saving_s"] >= long["estimated_compile_s"] == 2 * COLD_COMPILE_S
    assert torch.equal(agent.act_generator.get_state(), stream)  # the rows' own random stream is untouched
    assert agent.compute.states == 0  # nor does the counting count as the rows' acting


def test_auto_choice_counts_only_rows_that_run_compiled():
    agent = _agent()
    adaptive = EvalSetting("auto", "budget_auto", 4, {"steps": 2, "num_particles": 4, "budget": "auto"})
    assert not agent.acts_compiled(dict(adaptive.options)) and agent.acts_compiled({"steps": 2})
    assert not agent.acts_compiled({"steps": 2, "select": "softmax"})
    both = choose_compile(agent, [*_rows(0), adaptive], batch=5, calls=10**6)
    assert both["rows_compiled"] == 1 and both["estimated_compile_s"] == COLD_COMPILE_S
    assert choose_compile(agent, [adaptive], batch=5, calls=10**9)["compile"] is False


def test_the_machine_kind_reads_the_isa_and_bf16():
    kind = machine_kind(torch.device("cpu"), "off")
    assert kind in GEMM_FLOPS and "bf16" not in kind
    assert machine_kind(torch.device("cpu"), "bf16") in (kind, f"{kind}+bf16")


def test_compiled_acting_compiles_once_per_budget_whatever_the_batch():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled, eager = _agent(compile=True), _agent()
    with torch.inference_mode():
        for steps in (0, 2):
            for rows in (6, 4, 3, 1):  # an evaluation's lockstep batches shrink as its episodes end
                obs = torch.randn(rows, 7, generator=torch.Generator().manual_seed(rows))
                got = compiled.act(obs, steps=steps, generator=torch.Generator().manual_seed(1))
                want = eager.act(obs, steps=steps, generator=torch.Generator().manual_seed(1))
                assert got.shape == (rows, 3)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == 2


def test_methods_without_compiled_acting_stay_eager():
    from vgfcli.methods.bc import BCAgent

    torch.manual_seed(0)
    bc = BCAgent.create(None, 7, 3, actor_hidden=(8,))
    assert choose_compile(bc, [EvalSetting("bc", "policy", 1, {})], batch=5, calls=10**9)["compile"] is False


def test_the_same_evaluation_gives_the_same_bytes_under_any_clock(tmp_path, monkeypatch):
    import hashlib
    import json

    from typer.testing import CliRunner

    from vgfcli.cli import app

    runner = CliRunner()
    monkeypatch.setenv("VGF_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    first = runner.invoke(app, ["pipeline", "preset=smoke", "--json"])
    assert first.exit_code == 0, first.output
    real = time.perf_counter
    seen = []
    for scale in (1e-3, 1e3):  # the old timed choice compiled under the slow clock and not under the fast
        monkeypatch.setattr(time, "perf_counter", lambda s=scale: real() * s)
        result = runner.invoke(app, ["evaluate", "preset=smoke", "--force", "--json"])
        monkeypatch.setattr(time, "perf_counter", real)
        assert result.exit_code == 0, result.output
        path = json.loads(result.stdout)["results_file"]
        data = open(path, "rb").read()
        seen.append((hashlib.sha256(data).hexdigest(), json.loads(data)["compile_choice"]))
    assert seen[0] == seen[1]
    assert seen[0][1]["compile"] is False and "evaluate.compile=auto" in seen[0][1]["reason"]
