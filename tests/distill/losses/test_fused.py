"""LM-head-fused losses from hidden states (distill/losses/fused.py) equal the logits ones."""

import pytest
import torch
import torch.nn.functional as F
from distill.losses.reference import B, S, V, assert_close, grads, hidden_inputs

from nemocompress.distill.losses import (
    chunked_distill_loss_from_hidden,
    chunked_kd_loss_from_hidden,
    cross_entropy_loss,
    forward_kl,
    kd_loss,
    reverse_kl,
)


def test_all_masked_hidden_chunked_gives_zero_not_nan():
    hs, ws, ht, wt = hidden_inputs()
    loss = chunked_kd_loss_from_hidden(hs, ws, ht, wt, labels=torch.full((B, S), -100))
    assert loss.item() == 0.0
    assert all((g == 0).all() for g in grads(loss, [hs, ws]))


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("chunk_size", [2, 5, None])
@pytest.mark.parametrize("kind,beta", [("kl", 0.5), ("rkl", 0.5), ("jsd", 0.4), ("tvd", 0.5)])
def test_chunked_from_hidden_equals_unchunked(logits, kind, beta, chunk_size, masked):
    _, _, labels = logits
    hs, ws, ht, wt, bs, bt = hidden_inputs(bias=True)
    kw = {"beta": beta, "temperature": 1.5, "labels": labels if masked else None}
    full = kd_loss(F.linear(hs, ws, bs), F.linear(ht, wt, bt), kind, **kw)
    chunked = chunked_kd_loss_from_hidden(
        hs, ws, ht, wt, kind, student_lm_head_bias=bs, teacher_lm_head_bias=bt, chunk_size=chunk_size, **kw
    )
    assert_close(chunked, full, tol=1e-6)
    params = [hs, ws, ht, wt, bs, bt]
    for got, want in zip(grads(chunked, params), grads(full, params)):
        assert_close(got, want, tol=1e-6)


def test_chunked_from_hidden_frozen_teacher_and_accumulation():
    hs, ws, ht, wt = hidden_inputs()
    ht, wt = ht.detach(), wt.detach()
    labels = torch.randint(0, V, (B, S))
    labels[1, 2:] = -100
    num_items = int((labels != -100).sum())
    big = chunked_kd_loss_from_hidden(hs, ws, ht, wt, labels=labels, chunk_size=3)
    micro = sum(
        chunked_kd_loss_from_hidden(
            hs[i : i + 1], ws, ht[i : i + 1], wt, labels=labels[i : i + 1], num_items=num_items
        )
        for i in range(B)
    )
    full = forward_kl(hs @ ws.T, ht @ wt.T, labels=labels)
    assert_close(big, full, tol=1e-6)
    assert_close(micro, full, tol=1e-6)
    for got, want in zip(grads(micro, [hs, ws]), grads(full, [hs, ws])):
        assert_close(got, want, tol=1e-6)


def test_chunked_from_hidden_head_only_gradients():
    hs, ws, ht, wt, bs, bt = hidden_inputs(bias=True)
    hs, ht, wt, bt = hs.detach(), ht.detach(), wt.detach(), bt.detach()
    full = 0.5 * reverse_kl(F.linear(hs, ws, bs), F.linear(ht, wt, bt), temperature=2.0)
    chunked = 0.5 * chunked_kd_loss_from_hidden(
        hs,
        ws,
        ht,
        wt,
        "rkl",
        student_lm_head_bias=bs,
        teacher_lm_head_bias=bt,
        temperature=2.0,
        chunk_size=3,
    )
    assert_close(chunked, full, tol=1e-6)
    for got, want in zip(grads(chunked, [ws, bs]), grads(full, [ws, bs])):
        assert_close(got, want, tol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("kind,beta", [("kl", 0.5), ("jsd", 0.3)])
def test_distill_loss_kd_plus_ce_equals_logits_with_a_tied_head(logits, kind, beta, temperature):
    _, _, labels = logits
    _, ws, ht, wt, bs, bt = hidden_inputs(bias=True)
    ids = torch.randint(0, V, (B, S), generator=torch.Generator().manual_seed(5))
    kw = {"beta": beta, "temperature": temperature}
    # the student reads its hidden state from the head matrix (a tied embedding); one graph per side
    zs, zt = F.linear(1.5 * ws[ids], ws, bs), F.linear(ht, wt, bt)
    kd = kd_loss(zs, zt, kind, labels=labels, **kw)
    ce = cross_entropy_loss(zs, labels)
    fused = chunked_distill_loss_from_hidden(
        1.5 * ws[ids], ws, ht, wt, kind, student_lm_head_bias=bs, teacher_lm_head_bias=bt, kd_weight=0.7,
        ce_weight=0.4, labels=labels, chunk_size=3, **kw,
    )  # fmt: skip
    assert_close(fused.kd, kd.detach())
    assert_close(fused.ce, ce.detach())
    assert not fused.kd.requires_grad and not fused.ce.requires_grad
    full = 0.7 * kd + 0.4 * ce
    assert_close(fused.loss, full)
    params = [ws, bs, ht, wt, bt]
    for got, want in zip(grads(fused.loss, params), grads(full, params)):
        assert_close(got, want)


def test_distill_loss_ce_only_needs_no_teacher(logits):
    _, _, labels = logits
    hs, ws, _, _ = hidden_inputs()
    fused = chunked_distill_loss_from_hidden(
        hs, ws, kd_weight=0.0, ce_weight=1.0, labels=labels, chunk_size=4
    )
    expected = cross_entropy_loss(hs @ ws.T, labels)
    assert_close(fused.loss, expected)
    assert fused.kd.item() == 0.0
    for got, want in zip(grads(fused.loss, [hs, ws]), grads(expected, [hs, ws])):
        assert_close(got, want)


def test_distill_loss_bad_arguments_raise(logits):
    _, _, labels = logits
    hs, ws, ht, wt = hidden_inputs()
    with pytest.raises(ValueError, match="needs labels"):
        chunked_distill_loss_from_hidden(hs, ws, ht, wt, ce_weight=1.0)
    with pytest.raises(ValueError, match="teacher's hidden states"):
        chunked_distill_loss_from_hidden(hs, ws, labels=labels, ce_weight=1.0)
    with pytest.raises(ValueError, match="not both 0"):
        chunked_distill_loss_from_hidden(hs, ws, ht, wt, kd_weight=0.0)
    with pytest.raises(ValueError, match="top-k"):
        chunked_distill_loss_from_hidden(hs, ws, ht, wt, "topk-kl")


def test_distill_loss_under_autocast_keeps_gradient_dtypes():
    hs, ws, ht, wt = (t.detach().float() for t in hidden_inputs())
    hs.requires_grad_(), ws.requires_grad_()
    labels = torch.randint(0, V, (B, S), generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = chunked_distill_loss_from_hidden(hs, ws, ht, wt, ce_weight=0.5, labels=labels, chunk_size=4)
    fused.loss.backward()
    assert hs.grad.dtype == ws.grad.dtype == torch.float32
    expected = kd_loss(hs @ ws.T, ht @ wt.T) + 0.5 * cross_entropy_loss(hs @ ws.T, labels)
    torch.testing.assert_close(fused.loss, expected, rtol=0.02, atol=0.02)  # bf16 logits
