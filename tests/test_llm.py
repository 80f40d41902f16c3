"""VGF on language models (``vgfcli.llm``, the domain=llm stages), on tiny random-weight GPT-2-shaped
models made here: the transport against an analytic reward, decoding round trips, L = 0 as best-of-N,
the reward of embeddings against the model's own logits, the tokenizer refusal, prompt-set readers,
and the whole pipeline through the CLI."""

import json
import math
import os

import pytest
import torch
from typer.testing import CliRunner

from vgfcli.cli import app
from vgfcli.errors import VgfError
from vgfcli.llm import decoding, models, tiny
from vgfcli.llm.rows import LmRowsContext, evaluate_prompt, sample_responses
from vgfcli.llm.transport import ResponseParticles, TransportSettings
from vgfcli.nn.particles import svgd_direction

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()
TEXTS = [f"the {a} {b} sat on the {c} near the river" for a in ("quick", "lazy", "brown", "wonderful")
         for b in ("cat", "dog", "horse") for c in ("mat", "garden", "mountain")]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A policy and a 2-member reward model sharing one BPE tokenizer, saved as HF folders."""
    root = tmp_path_factory.mktemp("lm")
    make_models(tiny.train_tokenizer(TEXTS, 300), root / "policy", root / "reward", members=2)
    return root


def make_models(tokenizer, policy_dir, reward_dir, members):
    """A random-weight GPT-2-shaped LM and a reward model on its body, each saved with the tokenizer."""
    tiny.new_causal_lm(tokenizer, layers=1, heads=2, width=32, context=64, seed=0).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    tiny.reward_from_lm(str(policy_dir), members, seed=1).save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)


def load(root):
    policy, tokenizer = models.load_policy(str(root / "policy"), torch.device("cpu"), torch.float32)
    reward = models.load_reward(str(root / "reward"), torch.device("cpu"), torch.float32)
    return policy, tokenizer, reward


class QuadraticReward:
    """R(u) = -sum (u - target)^2 over a response's embeddings: grad = -2 (u - target), exactly."""

    def __init__(self, dim=4, vocab=7):
        self.target = torch.linspace(-1, 1, dim)
        self.table = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(0))
        self.members = 1

    def embed(self, ids):
        return self.table[ids]

    def last_index(self, ids, mask):
        return mask.sum(1) - 1

    def from_embeddings(self, embeds, mask, last):
        response = embeds[:, -3:]  # the prompt is one token, responses three
        return -(response - self.target).square().sum((1, 2))[None]


def test_transport_moves_along_the_analytic_reward_gradient():
    reward = QuadraticReward()
    response = torch.tensor([[1, 2, 3], [4, 5, 6], [0, 2, 4]])
    particles = ResponseParticles(reward, torch.tensor([0]), response, torch.tensor([3, 3, 3]),
                                  torch.ones(3, 3, dtype=torch.bool))
    lr, alpha = 0.01, 0.5
    moved = particles.move([1], TransportSettings(alpha, lr, "plain")).embeddings[1]
    u = particles.start
    score = (-2.0 * (u - reward.target)).reshape(1, 3, -1)
    expected = u + lr * svgd_direction(u.reshape(1, 3, -1), score, alpha).reshape(u.shape)
    torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-6)
    # one particle: no repulsion, the step is lr * grad R / alpha
    single = ResponseParticles(reward, torch.tensor([0]), response[:1], torch.tensor([3]), torch.ones(1, 3, dtype=torch.bool))
    step = single.move([1], TransportSettings(alpha, lr, "plain")).embeddings[1] - single.start
    torch.testing.assert_close(step, lr * (-2.0 * (single.start - reward.target)) / alpha)
    # reward rises with the budget; a fixed (EOS) position never moves
    held = torch.ones(3, 3, dtype=torch.bool)
    held[:, 2] = False
    stepped = ResponseParticles(reward, torch.tensor([0]), response, torch.tensor([3, 3, 3]), held)
    out = stepped.move([0, 3, 10], TransportSettings(1.0, 0.05, "adam")).embeddings
    values = [float(stepped.members_at(out[b]).mean()) for b in (0, 3, 10)]
    assert values[0] < values[1] < values[2]
    torch.testing.assert_close(out[10][:, 2], stepped.start[:, 2], rtol=0, atol=0)


def test_snapshots_of_one_run_equal_separate_runs_and_adaptive_stops_by_the_offline_rules():
    from vgfcli.nn.adaptive import StopRule

    reward = QuadraticReward()
    response = torch.tensor([[1, 2, 3], [4, 5, 6], [0, 2, 4]])
    particles = ResponseParticles(reward, torch.tensor([0]), response, torch.tensor([3, 3, 3]),
                                  torch.ones(3, 3, dtype=torch.bool))
    for rule in ("adam", "plain"):
        settings = TransportSettings(1.0, 0.05, rule)
        together = particles.move([1, 3, 5], settings).embeddings
        for budget in (1, 3, 5):
            torch.testing.assert_close(together[budget], particles.move([budget], settings).embeddings[budget],
                                       rtol=0, atol=0)

    class TwoMembers(QuadraticReward):  # the second member disagrees more the further from the start
        def from_embeddings(self, embeds, mask, last):
            one = super().from_embeddings(embeds, mask, last)
            return torch.cat([one, one + 10.0 * (embeds - self.table[torch.tensor([0, 1, 2, 3])]).norm()], 0)

    two = TwoMembers()
    particles = ResponseParticles(two, torch.tensor([0]), response, torch.tensor([3, 3, 3]),
                                  torch.ones(3, 3, dtype=torch.bool))
    settings = TransportSettings(1.0, 0.05)
    free = particles.move_adaptive(4, StopRule(("gain",), gain_fraction=0.0), settings)
    assert int(free.steps[0]) == 4  # every step gains: never stops
    torch.testing.assert_close(free.embeddings[-1], particles.move([4], settings).embeddings[4])
    strict = particles.move_adaptive(4, StopRule(("disagreement",), threshold=0.0), settings)
    assert int(strict.steps[0]) == 0 and torch.equal(strict.embeddings[-1], particles.start)
    assert strict.forward[-1] == 3 * 3 and strict.backward[-1] == 3  # one proposal, rejected


def test_reward_of_embeddings_equals_the_models_logits(tiny_models):
    _, tokenizer, reward = load(tiny_models)
    rows = [tokenizer(t)["input_ids"] for t in TEXTS[:5]]
    ids, mask = models.pad_right([r[: 3 + i] for i, r in enumerate(rows)], tokenizer.pad_token_id, "cpu")
    ours = reward.from_ids(ids, mask)
    theirs = reward.model(input_ids=ids, attention_mask=mask).logits.T
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert ours.shape == (2, 5)
    # a reward model whose pad id is its EOS (GPT-2 and Pythia ones): read where HF reads, before the EOS
    model = reward.model
    model.config.pad_token_id = tokenizer.eos_token_id
    eos_reward = models.RewardModel(model, tokenizer)
    rows = [r + [tokenizer.eos_token_id] for r in rows]
    ids, mask = models.pad_right(rows, tokenizer.eos_token_id, "cpu")
    torch.testing.assert_close(eos_reward.from_ids(ids, mask), model(input_ids=ids, attention_mask=mask).logits.T,
                               rtol=1e-5, atol=1e-6)


def test_decoding_round_trips(tiny_models):
    policy, tokenizer, reward = load(tiny_models)
    prompt = torch.tensor(tokenizer("the quick cat")["input_ids"])
    k = 5
    response, lengths, movable = sample_responses(policy, prompt, 6, 10, temperature=1.0, top_k=k,
                                                  eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
                                                  generator=torch.Generator().manual_seed(3))
    u = reward.embed(response).float()
    nearest, _ = decoding.decode("nearest", u, reward.table, response, movable)
    assert torch.equal(nearest, response)
    # samples drawn from the LM's top-k come back through the top-k decoder unchanged too
    topk, passes = decoding.decode("topk", u, reward.table, response, movable, policy=policy, prompt_ids=prompt, k=k)
    assert torch.equal(topk, response)
    assert passes > 0
    # a small disturbance still decodes to the same tokens; a move onto another token's embedding gives it
    assert torch.equal(decoding.decode_nearest(u + 1e-4, reward.table, response, movable), response)
    target = reward.table[7].expand_as(u)
    assert bool((decoding.decode_nearest(target, reward.table, response, movable)[movable] == 7).all())
    # special tokens are never written: an embedding moved onto EOS's decodes to another token
    allowed = decoding.allowed_tokens(tokenizer, reward.table.shape[0], "cpu")
    onto_eos = reward.table[tokenizer.eos_token_id].expand_as(u)
    assert not bool((decoding.decode_nearest(onto_eos, reward.table, response, movable, allowed)[movable]
                     == tokenizer.eos_token_id).any())
    # moved embeddings through the top-k decoder equal a loop without the KV cache, position by position
    moved = u.clone()
    moved[:, 1] = reward.table[9]
    fast = decoding.decode_topk(moved, reward.table, response, movable, policy, prompt, k, allowed)
    slow = response.clone()
    for pos in range(response.shape[1]):
        logits = policy(input_ids=torch.cat([prompt.expand(6, -1), slow[:, :pos]], 1)).logits[:, -1]
        cands = logits.masked_fill(~allowed[None], float("-inf")).topk(k, -1).indices
        best = cands.gather(1, (reward.table[cands] - moved[:, pos, None]).square().sum(-1).argmin(-1, keepdim=True))[:, 0]
        slow[:, pos] = torch.where(movable[:, pos], best, response[:, pos])
    assert torch.equal(fast, slow) and not torch.equal(fast, response)


def context(policy, tokenizer, reward, judge=None, n=6):
    return LmRowsContext(policy, tokenizer, reward, judge, TransportSettings(1.0, 0.05), n, 8, 1.0, 0, "nearest", 10,
                         {}, 3, torch.device("cpu"), 40, decoding.allowed_tokens(tokenizer, reward.table.shape[0], "cpu"))


def test_budget_zero_is_exactly_best_of_n(tiny_models):
    policy, tokenizer, reward = load(tiny_models)
    ctx = context(policy, tokenizer, reward)
    out = evaluate_prompt(ctx, "the lazy dog", [0, 1], torch.Generator().manual_seed(11))
    prompt = torch.tensor(tokenizer("the lazy dog")["input_ids"])
    response, lengths, _ = sample_responses(policy, prompt, 6, 8, temperature=1.0, top_k=0, eos=tokenizer.eos_token_id,
                                            pad=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(11))
    rows = [torch.cat([prompt, r[:int(n)]]).tolist() for r, n in zip(response, lengths)]
    ids, mask = models.pad_right(rows, tokenizer.pad_token_id, "cpu")
    scores = reward.from_ids(ids, mask).mean(0)
    best = int(scores.argmax())
    assert out["L=0"]["reward"] == pytest.approx(float(scores[best]), abs=1e-6)
    assert out["L=0"]["text"] == tokenizer.decode(response[best, :int(lengths[best])], skip_special_tokens=True)
    assert out["L=0"]["changed"] == 0.0 and out["L=0"]["reward_backward"] == 0
    assert out["reference"]["reward"] == pytest.approx(float(scores[0]), abs=1e-6)
    assert out["L=1"]["reward_backward"] == 6 and out["L=1"]["steps"] == 1


def test_a_reward_model_with_another_tokenizer_is_refused(tiny_models, tmp_path):
    other = tiny.train_tokenizer(["completely different words here " * 3, "zebra yak quokka"], 280)
    _, tokenizer, _ = load(tiny_models)
    with pytest.raises(VgfError, match="must read every policy token at the same id"):
        models.check_same_tokenizer(tokenizer, other, "policy", "reward")
    make_models(other, tmp_path / "other", tmp_path / "other-reward", members=1)
    prompts = write_prompts(tmp_path / "p.jsonl")
    result = runner.invoke(app, ["evaluate", "domain=llm", "prompts.source=file", f"prompts.path={prompts}",
                                 f"llm.policy={tiny_models / 'policy'}", f"llm.reward={tmp_path / 'other-reward'}",
                                 "evaluate.prompts=2", "llm.judge=rule:long_words"])
    assert result.exit_code == 2 and "no finished ingest-prompts run" in result.output, result.output
    made = runner.invoke(app, ["ingest", "domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["evaluate", "domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS,
                                 f"llm.policy={tiny_models / 'policy'}", f"llm.reward={tmp_path / 'other-reward'}",
                                 "evaluate.prompts=2"])
    assert result.exit_code == 2 and "at the same id" in result.output, result.output


def write_prompts(path, n=40):
    rows = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        words = text.split()
        rows.append({"q": f"{i} " + " ".join(words[:3]), "ref": " " + " ".join(words[3:]),
                     "good": " " + " ".join(words[3:]), "bad": " sat sat"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FIELDS = ["prompts.prompt_field=q", "prompts.reference_field=ref", "prompts.chosen_field=good",
          "prompts.rejected_field=bad", "llm.judge=rule:long_words"]  # prompts of our own: a judge named
TINY = ["sft.vocab_size=300", "sft.layers=1", "sft.heads=2", "sft.width=32", "sft.context=48", "sft.steps=20",
        "sft.log_every=10", "reward.steps=10", "reward.log_every=5", "evaluate.prompts=3", "evaluate.particles=4",
        "evaluate.max_new_tokens=6", "prompts.val_fraction=0.2"]


def test_pipeline_end_to_end_on_tiny_models(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    args = ["pipeline", "domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS, *TINY,
            "--budget", "0,1,2,auto", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert sorted(out["stages"]) == ["evaluate-lm", "lm", "prompts", "reward"]
    rows = {r["row"]: r for r in out["summary"]["rows"]}
    # N = 4: best-of-n at L = 1's and L = 2's reward passes, 4 (2 + 2L) = 16 and 24
    assert list(rows) == ["reference", "L=0", "L=1", "L=2", "L=0 decoded", "best-of-16", "best-of-24", "auto"]
    for row in rows.values():
        assert row["reward_ci"][0] <= row["reward"] <= row["reward_ci"][1]
        assert "judge_win" in row and 0.0 <= row["changed"] <= 1.0
        assert 0.0 <= row["judge_win_data_ci"][0] <= row["judge_win_data"] <= row["judge_win_data_ci"][1] <= 1.0
    assert rows["L=2"]["reward_backward"] == 2 * 4 and rows["L=0"]["changed"] == 0.0
    assert rows["L=1"]["reward_forward"] + rows["L=1"]["reward_backward"] == rows["best-of-16"]["reward_forward"] == 16
    assert (rows["best-of-16"]["as_budget"], rows["best-of-24"]["as_budget"]) == (1, 2)
    assert rows["reference"]["kl_best_of_n"] == 0.0 and "kl_best_of_n" not in rows["L=1"]
    assert rows["L=0"]["kl_best_of_n"] == pytest.approx(math.log(4) - 3 / 4)  # log N - (N - 1) / N
    assert 0.0 <= rows["auto"]["steps"] <= 2  # budget_max: the largest L
    results = json.loads(open(out["outputs"]["results"]).read())
    per = results["per_prompt"]
    assert len(per["L=1"]["reward"]) == 3
    for a, b, c in zip(per["L=0"]["reward"], per["best-of-16"]["reward"], per["best-of-24"]["reward"]):
        assert a <= b <= c  # more samples of the same stream: never a worse best
    assert per["L=0 decoded"]["reward"] == per["L=0"]["reward"]  # nearest decoding of unmoved samples: themselves
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and all(s["cache_hit"] for s in json.loads(again.stdout)["stages"].values())
    # the single commands find the pipeline's runs; evaluate on training prompts with the top-k decoder
    base = ["domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS, *TINY]
    reward = runner.invoke(app, ["train-reward", *base, "--json"])
    assert reward.exit_code == 0 and json.loads(reward.stdout)["cache_hit"], reward.output
    topk = runner.invoke(app, ["evaluate", *base, "evaluate.split=train", "llm.decode=topk", "--budget", "0,1", "--json"])
    assert topk.exit_code == 0, topk.output
    summary = json.loads(topk.stdout)["summary"]
    assert summary["split"] == "train" and summary["decode"] == "topk" and not json.loads(topk.stdout)["cache_hit"]
    assert {r["row"]: r for r in summary["rows"]}["L=1"]["policy_passes"] > {r["row"]: r for r in summary["rows"]}["L=0"]["policy_passes"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets"])
def test_prompt_sets_of_every_format_give_the_same_canonical_files(tmp_path, kind):
    import datasets

    from vgfcli.tracking import Store

    source = write_prompts(tmp_path / "p.jsonl")
    if kind != "jsonl":
        table = datasets.Dataset.from_json(str(source))
        if kind == "parquet":
            table.to_parquet(str(tmp_path / "p.parquet"))
            source = tmp_path / "p.parquet"
        else:
            table.save_to_disk(str(tmp_path / "folder"))
            source = tmp_path / "folder"
    result = runner.invoke(app, ["ingest", "domain=llm", "prompts.source=file", f"prompts.path={source}", *FIELDS,
                                 "--json"])
    assert result.exit_code == 0, result.output
    run = Store("vgf").get(json.loads(result.stdout)["run_id"])
    digests = {k: v["sha256"] for k, v in run.outputs_meta.items()}
    reference = write_prompts(tmp_path / "again.jsonl")
    from vgfcli.llm import prompts as P

    train, val = P.hash_split(P.canonical_rows(P.read_rows(reference)[0], {"prompt": "q", "reference": "ref",
                              "chosen": "good", "rejected": "bad"}, "x"), 0.1)
    P.write_jsonl(train, tmp_path / "t.jsonl")
    from vgfcli.cache import file_sha256

    assert digests["prompts"] == file_sha256(tmp_path / "t.jsonl")


@pytest.mark.parametrize("content, message", [
    ('{"q": "a"}\nnot json\n', "line 2: not JSON"),
    ('{"x": "a"}\n', "no field 'q'"),
    ('{"q": 3}\n', "not text"),
    ('{"q": "  "}\n', "empty prompt"),
])
def test_bad_prompt_sets_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = runner.invoke(app, ["ingest", "domain=llm", "prompts.source=file", f"prompts.path={path}",
                                 "prompts.prompt_field=q"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_unreachable_models_and_unknown_judges_are_one_line_errors(tiny_models, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    made = runner.invoke(app, ["ingest", "domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS])
    assert made.exit_code == 0, made.output
    base = ["evaluate", "domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS, "evaluate.prompts=1"]
    result = runner.invoke(app, [*base, "llm.policy=nobody/no-such-model", f"llm.reward={tiny_models / 'reward'}"])
    assert result.exit_code == 2 and "could not be loaded" in result.output, result.output
    result = runner.invoke(app, [*base, f"llm.policy={tmp_path}", f"llm.reward={tiny_models / 'reward'}"])
    assert result.exit_code == 2 and "no config.json" in result.output, result.output
    result = runner.invoke(app, [*base, f"llm.policy={tiny_models / 'policy'}", f"llm.reward={tiny_models / 'reward'}",
                                 "llm.judge=rule:nope"])
    assert result.exit_code == 2 and "no such rule" in result.output, result.output
    result = runner.invoke(app, [*base, f"llm.policy={tiny_models / 'policy'}", f"llm.reward={tiny_models / 'policy'}"])
    assert result.exit_code == 2 and "not a reward model" in result.output, result.output
    result = runner.invoke(app, [*base, f"llm.policy={tiny_models / 'policy'}", f"llm.reward={tiny_models / 'reward'}",
                                 "evaluate.max_new_tokens=64"])
    assert result.exit_code == 2 and "no room for a prompt" in result.output, result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (tiny_models / "reward").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = runner.invoke(app, [*base, f"llm.policy={tiny_models / 'policy'}", f"llm.reward={broken}"])
    assert result.exit_code == 2 and "could not be loaded" in result.output, result.output
    result = runner.invoke(app, [*base, "evaluate.lr=inf"])
    assert result.exit_code == 2 and "finite" in result.output, result.output
    result = runner.invoke(app, ["train-critic", "domain=llm"])
    assert result.exit_code == 2 and "domain=rl" in result.output


def test_demo_prompt_set_comes_from_the_shipped_corpus_and_its_rule_labels_the_pairs():
    from vgfcli.llm.corpus import RULES, corpus_sentences, demo_rows, long_words

    sentences = corpus_sentences()
    assert len(sentences) > 20_000 and sentences[0].startswith("In the beginning God created")
    rows = demo_rows(300, "long_words", seed=4)
    assert rows == demo_rows(300, "long_words", seed=4) and rows != demo_rows(300, "long_words", seed=5)
    pairs = [r for r in rows if "chosen" in r]
    assert len(pairs) > 200 and all(long_words(r["chosen"]) > long_words(r["rejected"]) for r in pairs)
    assert all(r["reference"] in (r["chosen"], r["rejected"]) for r in pairs)
    assert long_words("a b extraordinary") == pytest.approx(1 / 3) and long_words("") == 0.0
    assert set(RULES) == {"long_words"}
    with pytest.raises(VgfError, match="not a rule"):
        demo_rows(10, "shortest", seed=0)


def test_memory_estimate_adds_up_from_the_model_sizes():
    from vgfcli.llm.memory import ModelSize, evaluate_bytes

    small = ModelSize(parameters=1_000_000_000, layers=16, width=2048, heads=8)
    one = evaluate_bytes(small, small, None, particles=8, prompt_tokens=500, response_tokens=50)
    two = evaluate_bytes(small, small, None, particles=16, prompt_tokens=500, response_tokens=50)
    assert one["policy weights"] == pytest.approx(2e9 / 1024 ** 3)
    assert two["reward backward"] == pytest.approx(2 * one["reward backward"])
    assert one["total"] == pytest.approx(sum(v for k, v in one.items() if k != "total"))
    config = tiny.gpt2_config(tiny.train_tokenizer(TEXTS, 300), layers=2, heads=2, width=32, context=64)
    from transformers import GPT2LMHeadModel

    counted = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    assert ModelSize.of(config).parameters == pytest.approx(counted, rel=0.1)  # tied head: one table counted twice


def test_the_demo_prompt_set_ingests_and_rl_commands_take_domain_rl():
    result = runner.invoke(app, ["ingest", "domain=llm", "prompts.demo_rows=60", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["train_prompts"] + summary["val_prompts"] >= 50 and summary["preference_pairs"] > 0
    shown = runner.invoke(app, ["pretrain-policy", "domain=rl", "--cfg"])
    assert shown.exit_code == 0 and "policy:" in shown.output, shown.output


def test_the_memory_script_prints_every_part():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "llm_memory.py"
    out = subprocess.run([sys.executable, str(script), "--judge", "pythia-1b", "--particles", "4"], capture_output=True,
                         text=True, check=True).stdout
    assert all(part in out for part in ("policy weights", "reward backward", "judge weights", "total"))


def test_the_judge_is_named_with_models_of_ones_own_and_is_never_the_reward(tiny_models, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    made = runner.invoke(app, ["ingest", "domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS])
    assert made.exit_code == 0, made.output
    base = ["evaluate", "domain=llm", "prompts.source=file", f"prompts.path={prompts}", *FIELDS[:-1],
            "evaluate.prompts=1", f"llm.policy={tiny_models / 'policy'}", f"llm.reward={tiny_models / 'reward'}"]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "llm.judge must be named with llm.policy and llm.reward" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, [*base, f"llm.judge={tiny_models / 'reward'}/"])
    assert result.exit_code == 2 and "is the reward model" in result.stderr, result.output


def test_the_judge_reads_the_whole_response_and_the_prompts_end(tiny_models):
    _, tokenizer, _ = load(tiny_models)
    prompt, response = "the quick cat sat on the mat near the river", " the lazy dog"
    whole = models.judge_input(tokenizer, prompt, response, [tokenizer.eos_token_id], 64, "judge")
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert whole[-1] == tokenizer.eos_token_id and whole[-1 - len(response_ids):-1] == response_ids
    short = models.judge_input(tokenizer, prompt, response, [tokenizer.eos_token_id], len(response_ids) + 3, "judge")
    assert len(short) == len(response_ids) + 3 and short[:2] == whole[len(whole) - len(short):][:2]  # the prompt's end
    with pytest.raises(VgfError, match="too few for a response"):
        models.judge_input(tokenizer, prompt, response, [tokenizer.eos_token_id], len(response_ids), "judge")


def test_padded_vocabulary_rows_are_never_sampled(tiny_models):
    policy, tokenizer, _ = load(tiny_models)
    response, _, _ = sample_responses(policy, torch.tensor(tokenizer("the cat")["input_ids"]), 16, 12,
                                      temperature=1.0, top_k=0, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
                                      generator=torch.Generator().manual_seed(0), vocab=20)
    assert int(response.max()) < 20


def test_a_reward_vocabulary_that_extends_the_policys_is_accepted(tiny_models):
    import copy

    _, tokenizer, _ = load(tiny_models)
    extended = copy.deepcopy(tokenizer)
    extended.add_special_tokens({"pad_token": "<pad>"})
    assert len(extended) == len(tokenizer) + 1
    models.check_same_tokenizer(tokenizer, extended, "policy", "reward")  # every policy id reads the same
    with pytest.raises(VgfError, match="1 of the policy's entries missing"):
        models.check_same_tokenizer(extended, tokenizer, "policy", "reward")


def test_win_rate_intervals_stay_inside_0_and_1():
    from stages.llm_evaluate import summarize_rows

    outcomes = [{"reference": {"win": 0.5}, "L=1": {"win": 1.0, "reward": 2.0}} for _ in range(4)]
    rows = {r["row"]: r for r in summarize_rows(outcomes)}
    low, high = rows["L=1"]["win_ci"]
    assert rows["L=1"]["win"] == 1.0 and 0.0 < low < 1.0 and high == 1.0
    assert 0.0 <= rows["reference"]["win_ci"][0] <= 0.5 <= rows["reference"]["win_ci"][1] <= 1.0
