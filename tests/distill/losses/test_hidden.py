"""Intermediate (hidden-state) losses, the projection and the dynamic alpha (distill/losses/hidden.py)."""

import pytest
import torch
import torch.nn.functional as F
from distill.losses.reference import F64, B, S, assert_close, grads, hidden_inputs

from nemocompress.distill.losses import (
    HiddenStateProjection,
    cosine_hidden_loss,
    dynamic_alpha,
    mapped_hidden_loss,
    mse_hidden_loss,
)


@pytest.mark.parametrize("loss_fn", [cosine_hidden_loss, mse_hidden_loss])
def test_hidden_losses_zero_for_identical_states(loss_fn):
    h = torch.randn(B, S, 8, dtype=F64, requires_grad=True)
    loss = loss_fn(h, h.detach().clone())
    assert abs(loss.item()) < 1e-12
    assert grads(loss, [h])[0].abs().max().item() < 1e-7


def test_hidden_losses_match_reference(logits):
    _, _, labels = logits
    hs, _, ht, _ = hidden_inputs(ds=6, dt=6)
    valid = (labels != -100).to(F64)
    cos = (hs * ht).sum(-1) / (hs.norm(dim=-1) * ht.norm(dim=-1))
    expected_cos = ((1 - cos) * valid).sum() / valid.sum()
    expected_mse = (((hs - ht) ** 2).mean(-1) * valid).sum() / valid.sum()
    for loss, expected in [
        (cosine_hidden_loss(hs, ht, labels=labels), expected_cos),
        (mse_hidden_loss(hs, ht, labels=labels), expected_mse),
    ]:
        assert_close(loss, expected)
        for got, want in zip(grads(loss, [hs, ht]), grads(expected, [hs, ht])):
            assert_close(got, want)
    assert_close(mse_hidden_loss(hs, ht), F.mse_loss(hs, ht))
    assert 0.0 <= cosine_hidden_loss(hs, -hs).item() <= 2.0 + 1e-12


def test_projection_identity_when_widths_match_and_linear_otherwise():
    same = HiddenStateProjection(8, 8)
    assert same.is_identity and not list(same.parameters())
    h = torch.randn(B, S, 8)
    assert same(h) is h
    wide = HiddenStateProjection(8, 12)
    assert not wide.is_identity
    assert wide(h).shape == (B, S, 12)
    assert wide.proj.weight.shape == (12, 8) and wide.proj.bias is None
    assert HiddenStateProjection(8, 12, bias=True).proj.bias.shape == (12,)


def test_mapped_hidden_loss_trains_projection():
    torch.manual_seed(4)
    student_states = [torch.randn(B, S, 6) for _ in range(3)]
    teacher_states = [torch.randn(B, S, 10) for _ in range(5)]
    projection = HiddenStateProjection(6, 10)
    layer_map = [(0, 1), (2, 4)]
    loss = mapped_hidden_loss(student_states, teacher_states, layer_map, kind="mse", projection=projection)
    expected = 0.5 * sum(
        mse_hidden_loss(projection(student_states[s]), teacher_states[t]) for s, t in layer_map
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert projection.proj.weight.grad is not None and projection.proj.weight.grad.abs().sum() > 0
    same = mapped_hidden_loss(teacher_states, teacher_states, [(0, 0), (3, 3)])
    assert abs(same.item()) < 1e-6


def test_dynamic_alpha_is_detached_ratio_with_zero_guard():
    logit = torch.tensor(3.0, requires_grad=True)
    inter = torch.tensor(0.5, requires_grad=True)
    alpha = dynamic_alpha(logit, inter)
    assert alpha.item() == pytest.approx(6.0) and not alpha.requires_grad
    total = logit + alpha * inter
    total.backward()
    assert inter.grad.item() == pytest.approx(6.0) and logit.grad.item() == 1.0
    assert dynamic_alpha(logit, torch.tensor(0.0)).item() == 0.0
