"""Every method through `vgf pipeline` at the smoke preset, action chunks, and `vgf report`."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vgfcli.cli import app

runner = CliRunner()
SMOKE = ["preset=smoke"]
TRAINED = {"collect", "dataset", "val_dataset", "policy", "critic", "evaluate"}


def vgf_json(*args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("method, extra, stages, columns", [
    ("fql", [], TRAINED, [("reference", 1), ("policy", 1)]),
    ("fql", ["--particles", "3"], TRAINED, [("reference", 1), ("policy", 3)]),
    ("qgf", ["--guidance", "0.01,0.1"], TRAINED, [("reference", 1), ("w=0.01", 1), ("w=0.1", 1)]),
    ("qgf", ["policy.time_sampling=grid", "policy.time_embedding=sinusoidal", "--guidance", "0.04"], TRAINED,
     [("reference", 1), ("w=0.04", 1)]),
    ("qam", [], TRAINED, [("reference", 1), ("policy", 1)]),
    ("bc", [], TRAINED - {"critic"}, [("reference", 1)]),
    ("avgf", [], TRAINED, [("reference", 1), ("L=0", 5), ("L=1", 5)]),
])
def test_pipeline_of_each_method(method, extra, stages, columns):
    out = vgf_json("pipeline", *SMOKE, f"method={method}", *extra)
    assert set(out["stages"]) == stages
    rows = out["results"]
    labels = [("reference" if r["reference"] else r["label"], r["particles"]) for r in rows]
    assert labels == [(c if c != "policy" else method, n) for c, n in columns]
    assert all(0.0 <= r["success"] <= 1.0 and r["episodes"] == 2 for r in rows)
    if method == "qgf" and len(rows) == 3:
        assert [r.get("guidance") for r in rows] == [0, 0.01, 0.1]
    again = vgf_json("pipeline", *SMOKE, f"method={method}", *extra)
    assert all(s["cache_hit"] for s in again["stages"].values())


def test_evaluate_rows_say_what_they_cost():
    out = vgf_json("pipeline", *SMOKE, "--budget", "0,1,auto_gain,auto")
    rows = {r["label"]: r for r in out["results"]}
    n = 4  # conf/tuning/vgf_smoke.yaml
    # critic passes per action: none, N selecting, N (fwd + bwd) + N (fwd + selecting fwd); an adaptive
    # row of at most 1 step: N (fwd + bwd) at the start, N forwards at the proposal, whatever it decides
    assert [rows[k]["compute"]["critic_evals"] for k in ("reference", "L=0", "L=1")] == [0, n, 3 * n]
    for label in ("auto_gain(L<=1)", "auto(L<=1)"):
        cost = rows[label]["compute"]
        assert cost["critic_evals"] == 3 * n and 0 <= cost["steps_mean"] <= 1 and sum(cost["steps_hist"]) > 0
        assert rows[label]["budget"] == label.split("(")[0]
    assert all(r["actions_per_s"] > 0 for r in rows.values())
    assert Path(out["compute_plot"]).is_file() and Path(out["plot"]).is_file()
    critic = vgf_json("train-critic", *SMOKE)
    assert critic["cache_hit"] and 0 < critic["summary"]["member_std_p50"] <= critic["summary"]["member_std_p90"]
    bad = runner.invoke(app, ["evaluate", *SMOKE, "--budget", "0,fast"])
    assert bad.exit_code == 2 and "--budget takes" in bad.stderr


def test_method_with_nothing_to_train_refuses_train_critic():
    result = runner.invoke(app, ["train-critic", *SMOKE, "method=bc"])
    assert result.exit_code == 2 and "nothing to train" in result.stderr


def test_action_chunks_run_through_every_stage():
    out = vgf_json("pipeline", *SMOKE, "chunk=2", "evaluate.budgets=[1]")
    policy = vgf_json("pretrain-policy", *SMOKE, "chunk=2")
    assert policy["cache_hit"] and policy["summary"]["chunk"] == 2
    critic = vgf_json("train-critic", *SMOKE, "chunk=2")
    assert critic["summary"]["chunk"] == 2
    assert out["summary"]["chunk"] == 2 and len(out["results"]) == 2
    # a chunked policy is another policy: the unchunked config does not find it
    result = runner.invoke(app, ["train-critic", *SMOKE, "chunk=1"])
    assert result.exit_code == 2 and "no finished pretrain-policy run" in result.stderr


def test_report_aggregates_seeds_and_methods(tmp_path):
    for seed in (0, 1):
        vgf_json("pipeline", *SMOKE, f"seed={seed}", "evaluate.budgets=[0,1]")
    vgf_json("pipeline", *SMOKE, "method=bc")
    out = vgf_json("report", "--out", str(tmp_path / "rep"))
    assert out["metric"] == "success" and out["runs"] == 3
    cells = {(r["task"], r["column"]): r for r in out["rows"]}
    task = "cube-single-noisy-singletask-task1-v0"
    assert set(cells) == {(task, "reference"), (task, "vgf L=0"), (task, "vgf L=1"), (task, "bc")}
    assert cells[(task, "vgf L=1")]["seeds"] == 2 and cells[(task, "bc")]["seeds"] == 1
    by_seed = cells[(task, "vgf L=1")]["by_seed"]
    mean = sum(by_seed.values()) / 2
    assert cells[(task, "vgf L=1")]["mean"] == pytest.approx(mean)
    assert cells[(task, "vgf L=1")]["std"] == pytest.approx(abs(by_seed["0"] - by_seed["1"]) / 2)
    # percent, and an interval from the per-episode outcomes of both seeds (none for one seed)
    assert all(0 <= v <= 100 for v in by_seed.values())
    low, high = cells[(task, "vgf L=1")]["ci95"]
    assert low <= mean <= high and cells[(task, "bc")]["ci95"] is None
    results_file = vgf_json("evaluate", *SMOKE, "seed=1", "evaluate.budgets=[0,1]")["results_file"]
    saved = json.loads(Path(results_file).read_text())
    assert [len(r["outcomes"]["success"]) for r in saved["results"]] == [2, 2, 2]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| task | reference |" in text and "(n=2)" in text and "success (%)" in text
    assert (tmp_path / "rep" / "report.csv").read_text().startswith("task,column,unit,mean,ci95_low,ci95_high")
    assert (tmp_path / "rep" / "report.png").stat().st_size > 1000
    only_bc = vgf_json("report", "--method", "bc", "--out", str(tmp_path / "bc"))
    assert {r["column"] for r in only_bc["rows"]} == {"reference", "bc"}
    missing = runner.invoke(app, ["report", "--task", "nope", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no finished evaluate runs" in missing.stderr
