"""Chunked logit losses (distill/losses/chunked.py) equal the full ones, in value and gradients."""

import pytest
import torch
from distill.losses.reference import DIVERGENCES, assert_close, grads

from nemocompress.distill.losses import (
    chunked_kd_loss,
    cross_entropy_loss,
    forward_kl,
    kd_loss,
)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
@pytest.mark.parametrize("kind,beta", DIVERGENCES)
def test_chunked_equals_unchunked(logits, kind, beta, chunk_size, masked):
    student, teacher, labels = logits
    kw = {"beta": beta, "temperature": 2.0, "labels": labels if masked else None}
    full = kd_loss(student, teacher, kind, **kw)
    chunked = chunked_kd_loss(student, teacher, kind, chunk_size=chunk_size, **kw)
    assert_close(chunked, full, tol=1e-6)
    for got, want in zip(grads(chunked, [student, teacher]), grads(full, [student, teacher])):
        assert_close(got, want, tol=1e-6)


def test_chunked_on_shifted_non_contiguous_logits(logits):
    student, teacher, labels = logits
    s, t, lab = student[:, :-1], teacher[:, :-1].detach(), labels[:, 1:]
    assert not s.is_contiguous()
    full = forward_kl(s, t, labels=lab)
    chunked = chunked_kd_loss(s, t, labels=lab, chunk_size=4)
    assert_close(chunked, full, tol=1e-6)
    assert_close(grads(chunked, [student])[0], grads(full, [student])[0], tol=1e-6)


def test_chunked_composes_with_other_terms_and_grad_scaling(logits):
    student, teacher, labels = logits
    t = teacher.detach()
    full = 0.25 * kd_loss(student, t, labels=labels) + cross_entropy_loss(student, labels)
    chunked = 0.25 * chunked_kd_loss(student, t, labels=labels, chunk_size=5) + cross_entropy_loss(
        student, labels
    )
    assert_close(grads(chunked, [student])[0], grads(full, [student])[0], tol=1e-6)


def test_chunked_without_grad_and_single_backward(logits):
    student, teacher, labels = logits
    with torch.no_grad():
        value = chunked_kd_loss(student, teacher, labels=labels, chunk_size=3)
    assert_close(value, forward_kl(student, teacher, labels=labels).detach(), tol=1e-6)
    loss = chunked_kd_loss(student, teacher, labels=labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


def test_low_precision_inputs_computed_in_float32(logits):
    student, teacher, labels = logits
    s16, t16 = student.detach().bfloat16(), teacher.detach().bfloat16()
    loss = forward_kl(s16, t16, labels=labels)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, forward_kl(s16.float(), t16.float(), labels=labels))
    chunked = chunked_kd_loss(s16, t16, labels=labels, chunk_size=4)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, loss, rtol=1e-6, atol=1e-7)


def test_bad_chunk_size_raises(logits):
    student, teacher, _ = logits
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_kd_loss(student, teacher, chunk_size=0)
