"""Masking and reduction (distill/losses/reduction.py), shared by every loss."""

import pytest
import torch
from distill.losses.reference import DIVERGENCES, F64, B, S, V, assert_close, call, grads, ref_loss

from nemocompress.distill.losses import (
    chunked_kd_loss,
    cosine_hidden_loss,
    cross_entropy_loss,
    forward_kl,
    kd_loss,
    mse_hidden_loss,
    topk_forward_kl,
)


@pytest.mark.parametrize("kind,beta", DIVERGENCES)
def test_ignored_tokens_do_not_matter_even_if_nan(logits, kind, beta):
    student, teacher, labels = logits
    ignored = labels == -100
    clean = call(kind, beta, student, teacher, labels=labels)
    poisoned_s = torch.where(ignored[..., None], torch.nan, student.detach()).requires_grad_()
    poisoned_t = torch.where(ignored[..., None], torch.nan, teacher.detach())
    poisoned = call(kind, beta, poisoned_s, poisoned_t, labels=labels)
    assert_close(poisoned, clean)
    g = grads(poisoned, [poisoned_s])[0]
    assert torch.isfinite(g).all() and (g[ignored] == 0).all()


def test_mask_and_labels_combine(logits):
    student, teacher, labels = logits
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, -1] = False
    both = forward_kl(student, teacher, labels=labels, mask=mask)
    assert_close(both, ref_loss(student, teacher, "kl", valid=(labels != -100) & mask))
    assert_close(
        forward_kl(student, teacher, mask=labels != -100), forward_kl(student, teacher, labels=labels)
    )


def test_custom_ignore_index(logits):
    student, teacher, labels = logits
    relabeled = torch.where(labels == -100, -1, labels)
    assert_close(
        forward_kl(student, teacher, labels=relabeled, ignore_index=-1),
        forward_kl(student, teacher, labels=labels),
    )


ALL_MASKED = [
    lambda s, t, m: kd_loss(s, t, "jsd", mask=m),
    lambda s, t, m: chunked_kd_loss(s, t, "rkl", mask=m, chunk_size=3),
    lambda s, t, m: topk_forward_kl(s, *t.topk(4, dim=-1), mask=m),
    lambda s, t, m: cross_entropy_loss(s, torch.full(m.shape, -100)),
    lambda s, t, m: cosine_hidden_loss(s, t, mask=m),
    lambda s, t, m: mse_hidden_loss(s, t, mask=m),
]


@pytest.mark.parametrize("loss_fn", ALL_MASKED)
def test_all_masked_gives_zero_not_nan(logits, loss_fn):
    student, teacher, _ = logits
    nothing = torch.zeros(B, S, dtype=torch.bool)
    loss = loss_fn(student, teacher.detach(), nothing)
    assert loss.item() == 0.0
    assert (grads(loss, [student])[0] == 0).all()


def test_accumulation_with_num_items_equals_one_big_batch():
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(4, 5, V, generator=gen, dtype=F64, requires_grad=True)
    teacher = torch.randn(4, 5, V, generator=gen, dtype=F64)
    labels = torch.randint(0, V, (4, 5), generator=gen)
    labels[0, :2] = -100
    labels[2, :4] = -100
    labels[3, :] = -100  # a micro-batch with nothing to count
    num_items = int((labels != -100).sum())
    for loss_fn in [
        lambda s, t, lab, **kw: kd_loss(s, t, "jsd", labels=lab, temperature=2.0, **kw),
        lambda s, t, lab, **kw: chunked_kd_loss(s, t, labels=lab, chunk_size=2, **kw),
        lambda s, t, lab, **kw: cross_entropy_loss(s, lab, **kw),
    ]:
        big = loss_fn(student, teacher, labels)
        micro = sum(
            loss_fn(student[i : i + 1], teacher[i : i + 1], labels[i : i + 1], num_items=num_items)
            for i in range(4)
        )
        assert_close(micro, big)
        assert_close(grads(micro, [student])[0], grads(big, [student])[0])


def test_num_items_as_tensor(logits):
    student, teacher, labels = logits
    count = (labels != -100).sum()
    assert_close(
        forward_kl(student, teacher, labels=labels, num_items=count),
        forward_kl(student, teacher, labels=labels),
    )
    assert_close(forward_kl(student, teacher, num_items=2 * B * S), 0.5 * forward_kl(student, teacher))
