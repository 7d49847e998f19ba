"""Tiny real tokenizers built offline with the `tokenizers` library, shared by the xtoken tests."""

from __future__ import annotations

import pytest

from nemocompress.zoo import zoo_text

CORPUS = zoo_text(num_documents=30, seed=3) + "".join(
    f"In {1800 + i} there were {i * 37} ships, {i * 1234} men and 3.{i:02d} kings.\n" for i in range(60)
)

TEACHER_CORPUS = zoo_text(num_documents=30, seed=11) + "".join(
    f"Year {1900 + i}: {i * 91} stones at {i}.{i * 7}%\n" for i in range(40)
)


def byte_bpe(vocab_size: int, split_digits: bool, specials: list[str], corpus: str = CORPUS):
    """A byte-level BPE tokenizer trained on ``corpus``; ``split_digits`` gives every digit its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if split_digits:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator([corpus], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=specials[0], clean_up_tokenization_spaces=False
    )


@pytest.fixture(scope="session")
def student_tok():
    """Groups digits into multi-digit tokens (as GPT-2 does)."""
    return byte_bpe(700, split_digits=False, specials=["<|endoftext|>", "<|im_start|>"])


@pytest.fixture(scope="session")
def teacher_tok():
    """Splits every digit (as Qwen does), a different vocabulary size and special tokens."""
    return byte_bpe(
        600, split_digits=True, specials=["<eos>", "<|im_start|>", "<pad>"], corpus=TEACHER_CORPUS
    )


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every xtoken test runs on one thread (tiny tensors: threads only contend on a shared machine)."""
