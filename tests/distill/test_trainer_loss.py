"""The trainer's loss: the LM-head-fused path equals the logits path, and falls back where it cannot fuse."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nemocompress.arch import get_adapter
from nemocompress.distill import DistillConfig
from nemocompress.distill.losses import HiddenStateProjection
from nemocompress.distill.trainer import _fused_head, _loss_terms, _Trainable
from nemocompress.zoo import zoo_model

BASE = dict(teacher="t", student="s", data="d", output_dir="o")


def _models(family):
    student = zoo_model(family, seed=1).double().train()
    teacher = zoo_model(family, seed=2).double().eval().requires_grad_(False)
    return student, teacher


def _step(model, teacher, ids, config, pairs, fused):
    model.zero_grad(set_to_none=True)
    terms = _loss_terms(model, teacher, ids, None, config, 7.5, pairs, fused)
    terms[0].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [t.detach() for t in terms], grads


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(
    "family,kd_loss,extra",
    [
        ("llama", "kl", {}),  # tied head
        ("qwen2", "kl", {}),  # untied head
        ("llama", "jsd", {"jsd_beta": 0.3, "chunk_size": 3}),
        ("qwen2", "tvd", {"intermediate": "cosine", "kd_weight": 0.7}),
        ("llama", "rkl", {"kd_weight": 0.0, "ce_weight": 1.0}),  # CE only: no teacher on the fused path
    ],
)
def test_fused_step_equals_logits_step(family, kd_loss, extra):
    student, teacher = _models(family)
    tied = student.lm_head.weight is student.model.embed_tokens.weight
    assert tied == (family == "llama")
    settings = {"kd_loss": kd_loss, "temperature": 2.0, "ce_weight": 0.5, **extra}
    config = DistillConfig(**BASE, **settings)
    fused, why_not = _fused_head(config, student, teacher, fsdp=False)
    assert fused is not None and why_not is None
    assert (fused[1] is None) == (config.kd_weight == 0)
    projection = HiddenStateProjection(64, 64) if config.intermediate else None
    model = _Trainable(student, projection, fused[0])
    pairs = [(1, 1), (2, 2)] if config.intermediate else []
    ids = torch.randint(0, student.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    head_calls = _count_calls(student.lm_head), _count_calls(teacher.lm_head)

    fused_terms, fused_grads = _step(model, teacher, ids, config, pairs, fused)
    assert head_calls == ([], [])  # neither model's full logits were made
    logit_terms, logit_grads = _step(model, teacher, ids, config, pairs, None)
    assert len(head_calls[0]) == 1 and len(head_calls[1]) == (1 if config.kd_weight > 0 else 0)

    for got, want in zip(fused_terms, logit_terms):
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-10, atol=1e-12)
    assert fused_terms[2] > 0 and (fused_terms[1] > 0) == (config.kd_weight > 0)
    assert fused_grads.keys() == logit_grads.keys()
    assert ("student.lm_head.weight" in fused_grads) == (
        not tied
    )  # a tied head's gradient is the embedding's
    for name, grad in logit_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_fused_step_in_float32():
    student, teacher = (m.float() for m in _models("qwen2"))
    config = DistillConfig(**BASE, temperature=1.5, ce_weight=0.25)
    fused, _ = _fused_head(config, student, teacher, fsdp=False)
    model = _Trainable(student, None, fused[0])
    ids = torch.randint(0, student.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    fused_terms, fused_grads = _step(model, teacher, ids, config, [], fused)
    logit_terms, logit_grads = _step(model, teacher, ids, config, [], None)
    torch.testing.assert_close(fused_terms[0], logit_terms[0], rtol=1e-5, atol=1e-6)
    for name, grad in logit_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_head_falls_back_and_says_why():
    student, teacher = _models("llama")
    topk = DistillConfig(**BASE, kd_loss="topk-kl")
    fused, why_not = _fused_head(topk, student, teacher, fsdp=False)
    assert fused is None and "topk-kl" in why_not and "computing full logits" in why_not
    assert _fused_head(DistillConfig(**BASE), student, teacher, fsdp=True)[1].count("FSDP") == 1
    assert _fused_head(DistillConfig(**BASE, fused_head=False), student, teacher, fsdp=False) == (None, None)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=student.config.vocab_size))
    fused, why_not = _fused_head(DistillConfig(**BASE), gpt2, teacher, fsdp=False)
    assert fused is None and "gpt2" in why_not
    # a CE-only run never needs the teacher's head, so an unknown teacher family does not matter
    ce_only = DistillConfig(**BASE, kd_weight=0.0, ce_weight=1.0)
    assert _fused_head(ce_only, student, gpt2, fsdp=False)[0] == (get_adapter(student.config), None)
