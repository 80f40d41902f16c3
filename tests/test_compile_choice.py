"""evaluate.compile=auto: compile acting only where the evaluation's policy calls repay the compile."""

from __future__ import annotations

import pytest
import torch

from vgfcli.eval_rows import choose_compile, compile_key, compile_setting
from vgfcli.methods.base import EvalSetting
from vgfcli.methods.vgf import VGFAgent
from vgfcli.nn.compiled import compile_pays, measured_compile_s, record_compile_s


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


def _agent():
    torch.manual_seed(0)
    return VGFAgent.create(None, 7, 3, critic_hidden=(16, 16), actor_hidden=(16, 16), num_particles=4, flow_steps=3,
                           bank_size=0, amp="off", compile=False)


def test_auto_choice_weighs_calls_against_the_measured_cost(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # the record lives beside inductor's cache
    agent = _agent()
    rows = [EvalSetting(f"L={b}", f"budget_{b}", 4, {"steps": b, "num_particles": 4}) for b in (0, 2)]
    stream = agent.act_generator.get_state()
    # no measurement yet: the cold prior (seconds a row) outweighs a short evaluation
    short = choose_compile(agent, rows, batch=5, calls=10)
    assert short["compile"] is False and short["cost_measured"] is False and short["steps"] == 10
    assert short["eager_s_per_step"] > 0
    assert torch.equal(agent.act_generator.get_state(), stream)  # the rows' own random stream is untouched
    # a cost measured here before (a warm inductor cache) is used instead, per row
    record_compile_s(compile_key(agent, 5), 1e-6)
    assert measured_compile_s(compile_key(agent, 5)) == pytest.approx(1e-6, abs=1e-3)
    long = choose_compile(agent, rows, batch=5, calls=10_000)
    assert long["compile"] is True and long["cost_measured"] is True
    assert long["estimated_saving_s"] >= long["estimated_compile_s"]
    # another batch size is another graph: no record for it
    assert choose_compile(agent, rows, batch=6, calls=10_000)["cost_measured"] is False


def test_compile_key_ignores_the_switch_itself():
    agent = _agent()
    key = compile_key(agent, 5)
    agent.set_compile(True)
    assert agent.cfg.compile is True and compile_key(agent, 5) == key and agent._compiled == {}
    assert compile_key(agent, 4) != key


def test_methods_without_compiled_acting_stay_eager():
    from vgfcli.methods.bc import BCAgent

    torch.manual_seed(0)
    bc = BCAgent.create(None, 7, 3, actor_hidden=(8,))
    assert choose_compile(bc, [EvalSetting("bc", "policy", 1, {})], batch=5, calls=10**9)["compile"] is False
