"""Zero-shot candidate scores (prune/score.py): a masked candidate scores what its sliced model scores,
keep-all scores what the parent scores and leaves no mask behind, the parent's reference costs one forward
pass in all, multiple-choice accuracy equals a brute-force computation, bad input gives one-line errors."""

import json

import pytest
import torch
from helpers import logits, random_plan
from torch.nn.utils import parametrize

from nemocompress.arch import get_adapter
from nemocompress.data import DataError
from nemocompress.evaluate import evaluate
from nemocompress.prune.plan import keep_all_plan
from nemocompress.prune.score import (
    ScoreError,
    choice_loglikelihoods,
    load_choices,
    make_scorer,
    reference_bytes,
    score_masked,
)
from nemocompress.prune.slice import slice_model
from nemocompress.zoo import zoo_model, zoo_tokenizer

METRICS = ("lm-loss", "kl", "top1")


@pytest.fixture
def heldout():
    return torch.randint(0, 128, (6, 12), generator=torch.Generator().manual_seed(2))


def _scorers(model, heldout):
    return {m: make_scorer(m, model, None, heldout, batch_size=2) for m in METRICS}


@pytest.mark.parametrize("name", ["llama", "nemotron_h-hybrid"])
def test_masked_score_equals_sliced_score(name, heldout):
    model = zoo_model(name)
    adapter = get_adapter(model.config)
    scorers = _scorers(model, heldout)
    plan = random_plan(model)  # about half of every axis, and layer 0 dropped
    sliced = slice_model(model, plan)
    for metric, scorer in scorers.items():
        masked = score_masked(scorer, model, plan.kept_tensors(), adapter)
        assert masked == pytest.approx(scorer(sliced), abs=1e-5), metric
    assert scorers["kl"](sliced) > 1e-3, "half the model removed: the candidate must differ from the parent"


def test_keep_all_scores_as_the_parent_and_removes_the_masks(heldout, tokens):
    model = zoo_model("llama")
    adapter = get_adapter(model.config)
    before = logits(model, tokens)
    for metric, scorer in _scorers(model, heldout).items():
        plain = scorer(model)
        assert score_masked(
            scorer, model, keep_all_plan(model.config).kept_tensors(), adapter
        ) == pytest.approx(plain, abs=1e-6), metric
        if metric == "kl":
            assert plain == 0.0  # both terms of sum p log p - sum p log q by one expression
        if metric == "top1":
            assert plain == 1.0
    assert torch.equal(logits(model, tokens), before)
    assert not any(
        m._forward_hooks or m._forward_pre_hooks or parametrize.is_parametrized(m) for m in model.modules()
    )


def test_masks_are_removed_when_scoring_raises(heldout, tokens):
    model = zoo_model("nemotron_h-hybrid")
    before = logits(model, tokens)

    def broken(m):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        score_masked(make_scorer(broken, model, None, heldout), model, random_plan(model).kept_tensors(),
                     get_adapter(model.config))  # fmt: skip
    assert torch.equal(logits(model, tokens), before)


def test_scoring_n_candidates_costs_n_plus_one_forward_passes(heldout):
    model = zoo_model("llama")
    adapter = get_adapter(model.config)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    batches_per_pass = 3  # 6 samples, batch size 2
    scorer = make_scorer("kl", model, None, heldout, batch_size=2)
    assert len(calls) == batches_per_pass  # the cached reference
    candidates = [random_plan(model, kind) for kind in ("mlp", "attention_heads", "hidden", "depth")]
    values = [score_masked(scorer, model, plan.kept_tensors(), adapter) for plan in candidates]
    assert len(calls) == (len(candidates) + 1) * batches_per_pass
    assert len(set(values)) == len(values) and min(values) > 0


@pytest.mark.parametrize("name", ["llama", "nemotron_h-hybrid"])
def test_cached_kl_and_top1_equal_evaluate_against_the_parent_model(name, heldout):
    model = zoo_model(name)
    scorers = _scorers(model, heldout)
    candidate = slice_model(model, random_plan(model))
    report = evaluate(candidate, heldout, reference=model, batch_size=2, progress=False)
    assert scorers["kl"](candidate) == pytest.approx(report.kl, abs=1e-6)
    assert scorers["top1"](candidate) == report.top1_agreement
    assert scorers["lm-loss"](candidate) == report.loss


def test_keys_sort_larger_is_better(heldout):
    model = zoo_model("llama")
    loss = make_scorer("lm-loss", model, None, heldout)
    assert not loss.higher_is_better and loss.key(2.0) > loss.key(3.0)
    assert loss.key(float("nan")) < loss.key(1e9)

    def custom(m):
        return 0.5

    custom.higher_is_better = False
    scorer = make_scorer(custom, model, None, heldout)
    assert (scorer.name, scorer.higher_is_better, scorer(model)) == ("custom", False, 0.5)
    assert make_scorer(lambda m: 1, model, None, heldout).higher_is_better


def test_unknown_score_names_the_valid_ones(heldout):
    with pytest.raises(ScoreError, match="lm-loss, kl, top1, mc:FILE.jsonl"):
        make_scorer("mmlu", zoo_model("llama"), None, heldout)
    with pytest.raises(ScoreError, match=r"held-out token ids \[N, S\]"):
        make_scorer("kl", zoo_model("llama"), None, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ScoreError, match="tokenizer"):
        make_scorer("mc:x.jsonl", zoo_model("llama"), None, None)
    with pytest.raises(ScoreError, match="not a number"):
        make_scorer(lambda m: "high", zoo_model("llama"), None, heldout)(None)


def test_kl_reference_over_the_limit_errors_before_any_forward(heldout):
    model = zoo_model("llama")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    assert reference_bytes(heldout, 128) == 6 * 11 * 128 * 4
    with pytest.raises(ScoreError, match="--score-samples"):
        make_scorer("kl", model, None, heldout, reference_limit_bytes=1000)
    assert not calls
    make_scorer("top1", model, None, heldout, reference_limit_bytes=1000)  # top-1 tokens only: no limit


# ---------------------------------------------------------------------- multiple choice

QUESTIONS = [
    {"question": "The sky is", "choices": ["blue", "green and wide", "a"], "answer": 0},
    {"question": "Two plus two is\n", "choices": ["four", "fifty"], "answer": "fifty"},
    {"question": "Pick one:", "choices": ["xyz", "q", "long answer here"], "answer": 2},
]


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def _brute_force(model, tokenizer, question, choice):
    """Sum of the choice tokens' log-probs from one unpadded forward of question + choice."""
    sep = "" if question[-1].isspace() else " "
    context = tokenizer(question)["input_ids"]
    ids = torch.tensor([tokenizer(question + sep + choice)["input_ids"]])
    logp = torch.log_softmax(logits(model, ids)[0].double(), dim=-1)
    return sum(logp[t - 1, ids[0, t]].item() for t in range(len(context), ids.shape[1]))


@pytest.mark.parametrize("name", ["llama", "nemotron_h-hybrid"])
def test_choice_loglikelihoods_equal_brute_force(name, tmp_path):
    model, tokenizer = zoo_model(name), zoo_tokenizer()
    items = load_choices(_write(tmp_path / "mc.jsonl", QUESTIONS))
    assert [i.answer for i in items] == [0, 1, 2]
    expected = [[_brute_force(model, tokenizer, i.question, c) for c in i.choices] for i in items]
    for batch_size in (1, 3):
        got = choice_loglikelihoods(model, tokenizer, items, batch_size=batch_size)
        for g, e in zip(got, expected):
            assert g == pytest.approx(e, abs=1e-4)
    accuracy = sum(max(range(len(e)), key=e.__getitem__) == i.answer for i, e in zip(items, expected)) / 3
    scorer = make_scorer(f"mc:{tmp_path / 'mc.jsonl'}", model, tokenizer, None, batch_size=2)
    assert (scorer.name, scorer.higher_is_better) == ("mc:mc.jsonl", True)
    assert scorer(model) == pytest.approx(accuracy)


def test_mc_accuracy_when_the_answer_is_forced(tmp_path):
    """A zero LM head gives every token log-prob -log V: the choice with the fewest tokens always wins."""
    model, tokenizer = zoo_model("nemotron_h-hybrid"), zoo_tokenizer()
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    shortest = [
        {**q, "answer": min(range(len(q["choices"])), key=lambda c: len(q["choices"][c]))} for q in QUESTIONS
    ]
    longest = [
        {**q, "answer": max(range(len(q["choices"])), key=lambda c: len(q["choices"][c]))} for q in QUESTIONS
    ]
    for records, accuracy in ((shortest, 1.0), (longest, 0.0), (QUESTIONS, 0.0)):
        path = _write(tmp_path / "mc.jsonl", records)
        assert make_scorer(f"mc:{path}", model, tokenizer, None)(model) == accuracy


@pytest.mark.parametrize(
    "lines,message",
    [
        (["not json"], r"mc.jsonl:1 is not valid JSON"),
        ([QUESTIONS[0], "[1, 2]"], r"mc.jsonl:2 is a JSON list"),
        ([{"question": "q", "choices": ["a", "b"]}], r"mc.jsonl:1 lacks the field\(s\) answer"),
        ([{"question": "q", "choices": ["a", "b"], "answer": 2}], r"not an index into the 2 choices"),
        ([{"question": "q", "choices": ["a", "b"], "answer": True}], r"not an index"),
        ([{"question": "q", "choices": ["a", "b"], "answer": "c"}], r"'c' is not one of the choices"),
        ([{"question": "q", "choices": "ab", "answer": 0}], r"at least two non-empty strings"),
        ([{"question": "", "choices": ["a", "b"], "answer": 0}], r"non-empty string"),
        ([""], r"holds no question"),
    ],
)
def test_bad_mc_files_name_the_line_and_the_fix(tmp_path, lines, message):
    path = _write(tmp_path / "mc.jsonl", lines)
    with pytest.raises(DataError, match=message):
        make_scorer(f"mc:{path}", None, zoo_tokenizer(), None)


def test_missing_mc_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make_scorer(f"mc:{tmp_path / 'none.jsonl'}", None, zoo_tokenizer(), None)
