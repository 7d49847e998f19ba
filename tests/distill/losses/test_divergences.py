"""Per-token divergences (distill/losses/divergences.py) against independent float64 references."""

import math

import pytest
import torch
from distill.losses.reference import DIVERGENCES, F64, B, S, V, assert_close, call, grads, ref_loss

from nemocompress.distill.losses import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    total_variation,
)


@pytest.mark.parametrize("kind,beta", DIVERGENCES)
def test_zero_for_identical_distributions(kind, beta):
    z = torch.randn(B, S, V, dtype=F64, requires_grad=True)
    loss = call(kind, beta, z, z.detach().clone(), temperature=1.5)
    assert abs(loss.item()) < 1e-12
    assert grads(loss, [z])[0].abs().max().item() < 1e-12


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind,beta", DIVERGENCES)
def test_matches_reference_values_and_grads(logits, kind, beta, temperature):
    student, teacher, labels = logits
    loss = call(kind, beta, student, teacher, labels=labels, temperature=temperature)
    expected = ref_loss(student, teacher, kind, beta, temperature, valid=labels != -100)
    assert_close(loss, expected)
    for got, want in zip(grads(loss, [student, teacher]), grads(expected, [student, teacher])):
        assert_close(got, want)


def test_jsd_end_points_are_forward_and_reverse_kl(logits):
    student, teacher, _ = logits
    assert_close(generalized_jsd(student, teacher, beta=0.0), forward_kl(student, teacher))
    assert_close(generalized_jsd(student, teacher, beta=1.0), reverse_kl(student, teacher))


def test_jsd_is_symmetric_and_bounded_at_half(logits):
    student, teacher, _ = logits
    a = generalized_jsd(student, teacher, beta=0.5)
    assert_close(a, generalized_jsd(teacher, student, beta=0.5))
    assert 0.0 < a.item() <= math.log(2)


def test_tvd_bounded_in_unit_interval():
    gen = torch.Generator().manual_seed(1)
    student = 30 * torch.randn(64, V, generator=gen, dtype=F64)
    teacher = 30 * torch.randn(64, V, generator=gen, dtype=F64)
    per_token = [total_variation(s[None], t[None]).item() for s, t in zip(student, teacher)]
    assert all(0.0 <= d <= 1.0 + 1e-12 for d in per_token)  # up to float rounding
    assert max(per_token) > 0.99  # sharp, different distributions approach the bound
    disjoint = total_variation(
        torch.tensor([[50.0, -50.0]], dtype=F64), torch.tensor([[-50.0, 50.0]], dtype=F64)
    )
    assert 0.999 < disjoint.item() <= 1.0


@pytest.mark.parametrize("kind,beta", DIVERGENCES)
def test_temperature_scales_logits_and_multiplies_by_t_squared(logits, kind, beta):
    student, teacher, labels = logits
    hot = call(kind, beta, student, teacher, labels=labels, temperature=3.0)
    cold = call(kind, beta, student / 3.0, teacher / 3.0, labels=labels)
    assert_close(hot, 9.0 * cold)
    assert not torch.isclose(hot, call(kind, beta, student, teacher, labels=labels))


def test_minus_inf_logits_are_supported(logits):
    student, teacher, labels = logits
    banned = torch.zeros(V, dtype=torch.bool)
    banned[[2, 5]] = True
    s = student.detach().masked_fill(banned, -math.inf).requires_grad_()
    t = teacher.detach().masked_fill(banned, -math.inf)
    keep = ~banned
    for kind, beta in DIVERGENCES:
        loss = call(kind, beta, s, t, labels=labels)
        expected = ref_loss(s[..., keep], t[..., keep], kind, beta, valid=labels != -100)
        assert_close(loss, expected)
        assert torch.isfinite(grads(loss, [s])[0]).all()
