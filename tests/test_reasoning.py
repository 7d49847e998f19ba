"""Synthetic arithmetic with worked reasoning: seeded, correct, splits never overlap, and the training text
starts with exactly what `generate` prompts with."""

import json

import pytest

from nemocompress.reasoning import (
    THINK_END,
    add_thinking_tokens,
    arithmetic_problems,
    prompt_text,
    write_problems,
)
from nemocompress.zoo import zoo_tokenizer


def test_seeded_correct_and_the_splits_never_overlap():
    train = arithmetic_problems(300, "train", seed=0)
    assert train == arithmetic_problems(300, "train", seed=0)
    heldout = {p.prompt for seed in (0, 1, 2) for p in arithmetic_problems(60, "heldout", seed=seed)}
    trained = {p.prompt for seed in (0, 1, 2) for p in arithmetic_problems(300, "train", seed=seed)}
    assert not heldout & trained and len(heldout) > 60
    for p in train[:50]:
        value = None
        for step in p.thinking.split(". "):
            left, result = step.rstrip(".").split(" = ")
            assert eval(left) == int(result)  # noqa: S307 - our own arithmetic strings
            value = int(result)
        assert str(value) == p.answer


def test_training_text_starts_with_the_generate_prompt(tmp_path):
    tokenizer = zoo_tokenizer()
    assert add_thinking_tokens(tokenizer) and not add_thinking_tokens(tokenizer)
    problems = arithmetic_problems(3, "heldout")
    path = write_problems(tokenizer, problems, tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, p in zip(rows, problems):
        assert row["text"].startswith(prompt_text(tokenizer, p.prompt, True))
        assert f"{THINK_END}\n{p.answer}" in row["text"] and row["answer"] == p.answer
    with pytest.raises(ValueError, match="split"):
        arithmetic_problems(1, "test")
