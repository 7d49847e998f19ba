"""Tests for nemocompress.evaluate.evaluate: the bits-per-byte rule, KL and top-1 to a reference, throughput."""

import math

import pytest
import torch
import torch.nn.functional as F

from nemocompress.data import pack_tokens
from nemocompress.evaluate import EvalError, bits_per_byte, evaluate, heldout_loss, target_bytes
from nemocompress.zoo import zoo_model, zoo_tokenizer


class UniformLM(torch.nn.Module):
    """Equal logits over ``vocab`` tokens: every target costs ln(vocab) nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.anchor
        return type("Out", (), {"logits": logits})()


@pytest.fixture(scope="module")
def tokenizer():
    return zoo_tokenizer()  # one ASCII character per token, eos = 1


@pytest.fixture(scope="module")
def ids(tokenizer):
    texts = ["hello world, the second part of it " * 3, "another document, short", "and a third one " * 4]
    return pack_tokens(tokenizer, texts, seq_len=24)


def test_bits_per_byte_rule_by_hand(tokenizer):
    # "ab" eos "cd" eos -> targets b, eos, c, d, eos: 3 of them carry one byte each, the eos none
    input_ids = pack_tokens(tokenizer, ["ab", "cd"], seq_len=6)
    counted, num_bytes = target_bytes(tokenizer, input_ids)
    assert counted.tolist() == [[True, False, True, True, False]] and num_bytes == 3
    report = evaluate(UniformLM(128), input_ids, tokenizer, progress=False)
    assert report.loss == pytest.approx(math.log(128))  # all 5 targets
    assert report.bits_per_byte == pytest.approx(7.0)  # 3 targets x log2(128) bits over 3 bytes
    assert report.num_targets == 5 and report.num_bytes == 3


def test_a_multibyte_character_counts_its_utf8_bytes():
    class Bytes:  # a stand-in tokenizer: id 0 is special, ids 1 and 2 decode to "é" (2 bytes) and "a"
        all_special_ids = [0]

        def decode(self, row, skip_special_tokens=True):
            return "".join({1: "é", 2: "a"}.get(int(i), "") for i in row)

    input_ids = torch.tensor([[2, 1, 0, 2]])  # targets é, special, a: 3 bytes from 2 counted targets
    counted, num_bytes = target_bytes(Bytes(), input_ids)
    assert counted.tolist() == [[True, False, True]] and num_bytes == 3
    report = evaluate(UniformLM(4), input_ids, Bytes(), progress=False)
    assert report.bits_per_byte == pytest.approx(2 * math.log(4) / math.log(2) / 3)


@pytest.mark.parametrize("name", ["llama", "nemotron_h-hybrid"])
def test_against_itself_kl_is_zero_and_top1_is_one(name, ids, tokenizer):
    model = zoo_model(name)
    report = evaluate(model, ids, tokenizer, reference=zoo_model(name), batch_size=2, progress=False)
    assert report.kl == pytest.approx(0.0, abs=1e-6)
    assert report.top1_agreement == 1.0
    assert report.forward_tokens_per_s > 0 and report.generation_tokens_per_s is None


def test_another_model_has_positive_kl_and_the_loss_of_the_manual_computation(ids, tokenizer):
    model, other = zoo_model("llama", seed=0), zoo_model("llama", seed=1)
    report = evaluate(model, ids, tokenizer, reference=other, batch_size=3, progress=False)
    with torch.no_grad():
        logits, ref = model(input_ids=ids).logits[:, :-1], other(input_ids=ids).logits[:, :-1]
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(ref, -1), log_target=True, reduction="sum")
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert report.loss == pytest.approx(loss, rel=1e-5)
    assert report.kl > 0.001 and report.kl == pytest.approx(kl.item() / ids[:, 1:].numel(), rel=1e-4)
    assert report.top1_agreement == pytest.approx(agree) and report.top1_agreement < 1.0
    assert heldout_loss(model, ids, progress=False) == pytest.approx(report.loss)
    assert bits_per_byte(model, tokenizer, ids, progress=False) == pytest.approx(report.bits_per_byte)


def test_a_vocab_mismatch_is_refused(ids):
    with pytest.raises(EvalError, match="128 logits per token.*shared vocabulary"):
        evaluate(UniformLM(200), ids, reference=UniformLM(128), progress=False)


def test_a_reference_function_and_a_logits_function(ids, tokenizer):
    model = zoo_model("qwen2")
    live = evaluate(model, ids, tokenizer, reference=zoo_model("qwen2", seed=3), progress=False)
    with torch.no_grad():
        ref_logits = zoo_model("qwen2", seed=3)(input_ids=ids).logits[:, :-1]

    def cached(rows, logits):  # what the trainer does with a teacher cache
        ref = F.log_softmax(ref_logits[rows], -1)
        return (ref.exp() * (ref - F.log_softmax(logits, -1))).sum(), ref.argmax(-1)

    offline = evaluate(
        lambda x: model(input_ids=x).logits, ids, tokenizer, cached, device="cpu", progress=False
    )
    assert offline.kl == pytest.approx(live.kl, rel=1e-5)
    assert offline.top1_agreement == live.top1_agreement and offline.loss == pytest.approx(live.loss)


def test_generation_throughput_and_training_mode_restored(ids, tokenizer):
    model = zoo_model("llama").train()
    report = evaluate(model, ids[:2], tokenizer, generation_tokens=4, progress=False)
    assert report.generation_tokens_per_s > 0 and report.forward_tokens_per_s > 0
    assert model.training
