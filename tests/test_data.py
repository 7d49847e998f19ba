"""Tests for nemocompress.data.build_samples, the one sample builder (load -> split -> pack, seeded)."""

import pytest
import torch

from nemocompress.data import DataError, build_samples, calibration_samples, fingerprint
from nemocompress.distill.batches import distill_samples
from nemocompress.zoo import zoo_text, zoo_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return zoo_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Twenty documents, each tagged by a unique word, one per line of a .jsonl file."""
    docs = [f"document {i} tag{i:02d}x " + "some words of text here. " * 6 for i in range(20)]
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    path.write_text("".join(f'{{"text": "{d}"}}\n' for d in docs))
    return path


def _decoded(tokenizer, samples):
    return "".join(tokenizer.decode(row) for row in samples)


def test_heldout_documents_are_never_in_the_train_samples(tokenizer, corpus):
    built = build_samples(tokenizer, corpus, seq_len=32, num_train=None, num_heldout=None, seed=3)
    held_tags = {doc.split()[2] for doc in built.heldout_texts}
    train_text = _decoded(tokenizer, built.train)
    heldout_text = _decoded(tokenizer, built.heldout)
    assert len(held_tags) == 2  # 10% of 20 documents
    assert all(tag not in train_text for tag in held_tags)
    assert all(tag in heldout_text for tag in held_tags)  # all held-out samples kept: every doc shows up


def test_seeded_determinism_and_nested_requests(tokenizer, corpus):
    a = build_samples(tokenizer, corpus, 16, num_train=8, num_heldout=4, seed=1)
    b = build_samples(tokenizer, corpus, 16, num_train=8, num_heldout=4, seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    assert a.heldout_fingerprint == b.heldout_fingerprint == fingerprint(a.heldout)
    other = build_samples(tokenizer, corpus, 16, num_train=8, num_heldout=4, seed=2)
    assert other.heldout_texts != a.heldout_texts and other.heldout_fingerprint != a.heldout_fingerprint
    bigger = build_samples(tokenizer, corpus, 16, num_train=12, num_heldout=6, seed=1)
    assert torch.equal(bigger.train[:8], a.train) and torch.equal(bigger.heldout[:4], a.heldout)


def test_every_caller_gets_the_same_split(tokenizer, corpus):
    built = build_samples(tokenizer, corpus, 16, num_train=8, num_heldout=4, seed=5)
    calib, heldout_texts = calibration_samples(tokenizer, corpus, 8, 16, seed=5)
    train_ids, heldout_ids = distill_samples(tokenizer, str(corpus), 16, eval_samples=4, seed=5)
    assert torch.equal(calib, built.train) and heldout_texts == built.heldout_texts
    assert torch.equal(train_ids[:8], built.train) and torch.equal(heldout_ids, built.heldout)


def test_zero_builds_nothing_and_the_heldout_request_is_an_upper_bound(tokenizer):
    texts = ["alpha beta gamma " * 20, "delta epsilon " * 20, "zeta eta theta " * 20]
    built = build_samples(tokenizer, texts, 16, num_train=0, num_heldout=1000)
    assert built.train is None and 0 < len(built.heldout) < 1000
    assert build_samples(tokenizer, texts, 16, num_train=2).heldout is None
    with pytest.raises(DataError, match="no held-out samples"):
        _ = build_samples(tokenizer, texts, 16, num_train=2).heldout_fingerprint


def test_a_heldout_part_too_short_for_one_sample_names_the_fix(tokenizer):
    with pytest.raises(DataError, match="held-out part.*raise heldout_fraction or lower seq_len"):
        build_samples(tokenizer, ["a long document " * 50, "tiny"], 64, num_heldout=4, heldout_fraction=0.5)


def test_zoo_text_is_deterministic_ascii():
    text = zoo_text(num_documents=3)
    assert text == zoo_text(num_documents=3) and text != zoo_text(num_documents=3, seed=1)
    assert text.count("\n\n") == 2 and all(32 <= ord(c) < 127 or c == "\n" for c in text)
    assert zoo_tokenizer().unk_token_id not in zoo_tokenizer()(text)["input_ids"]
