"""Full-logits losses, top-k and CE (distill/losses/logits.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from distill.losses.reference import F64, B, S, V, assert_close, grads

from nemocompress.distill.losses import (
    cross_entropy_loss,
    forward_kl,
    generalized_jsd,
    kd_loss,
    reverse_kl,
    token_divergence,
    topk_forward_kl,
    total_variation,
)


def test_named_wrappers_match_kd_loss(logits):
    student, teacher, labels = logits
    kw = {"labels": labels, "temperature": 1.7}
    assert_close(forward_kl(student, teacher, **kw), kd_loss(student, teacher, "kl", **kw))
    assert_close(reverse_kl(student, teacher, **kw), kd_loss(student, teacher, "rkl", **kw))
    assert_close(
        generalized_jsd(student, teacher, beta=0.2, **kw), kd_loss(student, teacher, "jsd", beta=0.2, **kw)
    )
    assert_close(total_variation(student, teacher, **kw), kd_loss(student, teacher, "tvd", **kw))


def test_topk_equals_full_forward_kl_when_k_is_vocab(logits):
    student, teacher, labels = logits
    perm = torch.randperm(V)  # cache order must not matter
    indices = perm.expand(B, S, V)
    values = teacher.gather(-1, indices)
    loss = topk_forward_kl(student, values, indices, labels=labels, temperature=2.0)
    expected = forward_kl(student, teacher, labels=labels, temperature=2.0)
    assert_close(loss, expected)
    for got, want in zip(grads(loss, [student, teacher]), grads(expected, [student, teacher])):
        assert_close(got, want)


def test_topk_matches_reference(logits):
    student, teacher, labels = logits
    values, indices = teacher.topk(4, dim=-1)
    loss = topk_forward_kl(student, values, indices, labels=labels, temperature=1.5)
    p_t = torch.softmax(values / 1.5, dim=-1)
    log_q = torch.log_softmax(student / 1.5, dim=-1).gather(-1, indices)
    valid = (labels != -100).to(F64)
    expected = 1.5**2 * ((p_t * (p_t.log() - log_q)).sum(-1) * valid).sum() / valid.sum()
    assert_close(loss, expected)
    assert_close(grads(loss, [student])[0], grads(expected, [student])[0])


def test_topk_zero_when_student_matches_truncated_teacher(logits):
    _, teacher, _ = logits
    values, indices = teacher.detach().topk(5, dim=-1)
    student = torch.full((B, S, V), -math.inf, dtype=F64).scatter(-1, indices, values)
    assert abs(topk_forward_kl(student, values, indices).item()) < 1e-12


def test_cross_entropy_matches_torch(logits):
    student, _, labels = logits
    loss = cross_entropy_loss(student, labels)
    expected = F.cross_entropy(student.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    assert_close(loss, expected)
    assert_close(grads(loss, [student])[0], grads(expected, [student])[0])


def test_bad_arguments_raise(logits):
    student, teacher, labels = logits
    with pytest.raises(ValueError, match="same shape"):
        forward_kl(student, teacher[..., :-1])
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, beta=1.5)
    with pytest.raises(ValueError, match="token shape"):
        forward_kl(student, teacher, labels=labels[:, :-1])
    with pytest.raises(ValueError, match="top-k"):
        token_divergence(student, teacher, "topk-kl")
    with pytest.raises(ValueError, match="divergence"):
        kd_loss(student, teacher, "nope")
