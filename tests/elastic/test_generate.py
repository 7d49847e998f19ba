"""Budget-controlled generation: one loaded RUN thinks at one budget and answers at another, switching once
at the end of thinking; the answer equals what the answer budget's own sliced checkpoint writes from the
same context; plain checkpoints have one budget; bad budgets and formats are one-line errors."""

import json
import shutil

import pytest
import torch
from helpers import seeded_scores
from transformers import AutoModelForCausalLM

from nemocompress import api, cli
from nemocompress.elastic import ElasticConfig, train_elastic
from nemocompress.elastic import generate as gen
from nemocompress.zoo import save_zoo_checkpoint, zoo_text, zoo_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _thinking_checkpoint(name, path):
    save_zoo_checkpoint(name, path)
    tokenizer = zoo_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [gen.THINK_START, gen.THINK_END]})
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "nemotron_h-hybrid"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"generate-{request.param}")
    parent = _thinking_checkpoint(request.param, root / "parent")
    (root / "text.txt").write_text(zoo_text())
    config = ElasticConfig(
        parent=parent, budgets=["0.5", "0.75"], data=root / "text.txt", output_dir=root / "run", steps=4,
        seq_len=32, batch_size=4, eval_every=0, save_every=0, progress=False, max_width_pruning=0.75,
        max_depth_pruning=0.67,
    )  # fmt: skip
    train_elastic(config, lambda: seeded_scores(parent))
    return root


def _greedy(model, context, count):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([context]), max_new_tokens=count, do_sample=False, eos_token_id=None
        )
    return out[0, len(context) :].tolist()


@pytest.mark.parametrize("think", ["0.5", "0.75"])
def test_think_small_answer_large_switches_once_and_answers_as_the_large_model(run, monkeypatch, think):
    switched = []
    original = gen._Budgets.set
    monkeypatch.setattr(gen._Budgets, "set", lambda self, b: (switched.append(b), original(self, b))[1])
    result = api.generate(run / "run", ["2 + 3 ="], think_budget=think, answer_budget="0.75",
                          max_think_tokens=5, max_new_tokens=6)  # fmt: skip
    out = result.outputs[0]
    think_phase, answer = out.phases
    assert (think_phase.name, think_phase.budget, answer.name, answer.budget) == (
        "think",
        think,
        "answer",
        "0.75",
    )
    context = out.token_ids[: len(out.token_ids) - answer.tokens]
    if think == "0.75":  # one budget: no switch, the answer continues from the think phase's cache
        assert switched == ["0.75", None] and answer.prefill_tokens <= 2
    else:
        assert switched == ["0.5", "0.75", None], (
            "one switch, at the end of thinking; then the model is restored"
        )
        assert answer.prefill_tokens == len(context), "the whole context is prefilled again"
    assert think_phase.tokens <= 5
    end = gen._token_id(gen.load_tokenizer(run / "run"), gen.THINK_END)
    assert context[-1] == end and context.count(end) == 1
    api.elastic_slice(run / "run", run / "sliced-0.75", budget="0.75", progress=False)
    large = AutoModelForCausalLM.from_pretrained(run / "sliced-0.75").eval()
    eos = gen.load_tokenizer(run / "run").eos_token_id
    expected = _greedy(large, context, answer.tokens)
    assert out.token_ids[len(context) :] == expected[: answer.tokens]
    assert eos not in expected[: answer.tokens - 1]
    shutil.rmtree(run / "sliced-0.75")


def test_plain_checkpoint_has_one_budget_and_cli_prints_json(run, capsys):
    assert cli.main(["generate", str(run / "parent"), "--prompt", "hi", "--max-think-tokens", "3",
                     "--max-new-tokens", "3", "--json"]) == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    phases = shown["outputs"][0]["phases"]
    assert [p["name"] for p in phases] == ["think", "answer"] and all(p["budget"] is None for p in phases)
    assert phases[0]["forced_end"] and phases[0]["tokens"] == 3


def test_bad_budgets_and_formats_are_one_line_errors(run, tmp_path, capsys):
    def fails(args, message):
        assert cli.main(["generate", *args, "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    fails([str(run / "run"), "--prompt", "x", "--think-budget", "0.6"], "was not trained")
    fails([str(run / "parent"), "--prompt", "x", "--think-budget", "0.5"], "not an elastic RUN")
    save_zoo_checkpoint("llama", tmp_path / "plain")
    capsys.readouterr()
    fails([str(tmp_path / "plain"), "--prompt", "x", "--think-budget", "0.5"], "no thinking format")
    (tmp_path / "p.jsonl").write_text('{"question": "x"}\n')
    fails([str(tmp_path / "plain"), "--prompts", str(tmp_path / "p.jsonl")], "expected a JSON object")
