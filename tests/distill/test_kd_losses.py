"""Tests for nemocompress.distill.losses against independent float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F

from nemocompress.distill.losses import (
    HiddenStateProjection,
    chunked_kd_loss,
    chunked_kd_loss_from_hidden,
    cosine_hidden_loss,
    cross_entropy_loss,
    dynamic_alpha,
    forward_kl,
    generalized_jsd,
    kd_loss,
    mapped_hidden_loss,
    mse_hidden_loss,
    reverse_kl,
    topk_forward_kl,
    total_variation,
)

F64 = torch.float64
B, S, V = 2, 7, 13
DIVERGENCES = [
    ("forward_kl", 0.5),
    ("reverse_kl", 0.5),
    ("jsd", 0.0),
    ("jsd", 0.3),
    ("jsd", 0.5),
    ("jsd", 1.0),
    ("tvd", 0.5),
]


# --------------------------------------------------------------------------- independent references


def ref_divergence(student_logits, teacher_logits, kind, beta=0.5, temperature=1.0):
    """Per-token divergence from explicit probabilities: [..., V] -> [...]."""
    p_s = torch.softmax(student_logits / temperature, dim=-1)
    p_t = torch.softmax(teacher_logits / temperature, dim=-1)

    def kl(p, q):
        return (p * (torch.log(p) - torch.log(q))).sum(-1)

    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return kl(p_t, p_s)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return kl(p_s, p_t)
    if kind == "jsd":
        m = beta * p_t + (1 - beta) * p_s
        return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    return 0.5 * (p_t - p_s).abs().sum(-1)


def ref_loss(student_logits, teacher_logits, kind, beta=0.5, temperature=1.0, valid=None):
    per_token = ref_divergence(student_logits, teacher_logits, kind, beta, temperature)
    valid = torch.ones_like(per_token) if valid is None else valid.to(per_token.dtype)
    return temperature**2 * (per_token * valid).sum() / valid.sum()


def call(kind, beta, student, teacher, **kwargs):
    return kd_loss(student, teacher, kind, beta=beta, **kwargs)


def grads(value, tensors):
    return torch.autograd.grad(value, tensors)


def assert_close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(0)
    student = (2 * torch.randn(B, S, V, generator=gen, dtype=F64)).requires_grad_()
    teacher = (2 * torch.randn(B, S, V, generator=gen, dtype=F64)).requires_grad_()
    labels = torch.randint(0, V, (B, S), generator=gen)
    labels[0, 1] = -100
    labels[1, :3] = -100
    return student, teacher, labels


# --------------------------------------------------------------------------- logit losses


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


def test_named_wrappers_match_kd_loss(logits):
    student, teacher, labels = logits
    kw = {"labels": labels, "temperature": 1.7}
    assert_close(forward_kl(student, teacher, **kw), kd_loss(student, teacher, "forward_kl", **kw))
    assert_close(reverse_kl(student, teacher, **kw), kd_loss(student, teacher, "reverse_kl", **kw))
    assert_close(
        generalized_jsd(student, teacher, beta=0.2, **kw), kd_loss(student, teacher, "jsd", beta=0.2, **kw)
    )
    assert_close(total_variation(student, teacher, **kw), kd_loss(student, teacher, "tvd", **kw))


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
    assert_close(both, ref_loss(student, teacher, "forward_kl", valid=(labels != -100) & mask))
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
    lambda s, t, m: chunked_kd_loss(s, t, "reverse_kl", mask=m, chunk_size=3),
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


def test_all_masked_hidden_chunked_gives_zero_not_nan():
    hs, ws, ht, wt = _hidden_inputs()
    loss = chunked_kd_loss_from_hidden(hs, ws, ht, wt, labels=torch.full((B, S), -100))
    assert loss.item() == 0.0
    assert all((g == 0).all() for g in grads(loss, [hs, ws]))


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


def test_low_precision_inputs_computed_in_float32(logits):
    student, teacher, labels = logits
    s16, t16 = student.detach().bfloat16(), teacher.detach().bfloat16()
    loss = forward_kl(s16, t16, labels=labels)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, forward_kl(s16.float(), t16.float(), labels=labels))
    chunked = chunked_kd_loss(s16, t16, labels=labels, chunk_size=4)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, loss, rtol=1e-6, atol=1e-7)


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


# --------------------------------------------------------------------------- top-k


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


# --------------------------------------------------------------------------- chunked


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


def _hidden_inputs(ds=5, dt=6, bias=False):
    gen = torch.Generator().manual_seed(3)
    hs = torch.randn(B, S, ds, generator=gen, dtype=F64, requires_grad=True)
    ws = torch.randn(V, ds, generator=gen, dtype=F64, requires_grad=True)
    ht = torch.randn(B, S, dt, generator=gen, dtype=F64, requires_grad=True)
    wt = torch.randn(V, dt, generator=gen, dtype=F64, requires_grad=True)
    if not bias:
        return hs, ws, ht, wt
    bs = torch.randn(V, generator=gen, dtype=F64, requires_grad=True)
    bt = torch.randn(V, generator=gen, dtype=F64, requires_grad=True)
    return hs, ws, ht, wt, bs, bt


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("chunk_size", [2, 5, None])
@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.4), ("tvd", 0.5)])
def test_chunked_from_hidden_equals_unchunked(logits, kind, beta, chunk_size, masked):
    _, _, labels = logits
    hs, ws, ht, wt, bs, bt = _hidden_inputs(bias=True)
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
    hs, ws, ht, wt = _hidden_inputs()
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
    hs, ws, ht, wt, bs, bt = _hidden_inputs(bias=True)
    hs, ht, wt, bt = hs.detach(), ht.detach(), wt.detach(), bt.detach()
    full = 0.5 * reverse_kl(F.linear(hs, ws, bs), F.linear(ht, wt, bt), temperature=2.0)
    chunked = 0.5 * chunked_kd_loss_from_hidden(
        hs,
        ws,
        ht,
        wt,
        "reverse_kl",
        student_lm_head_bias=bs,
        teacher_lm_head_bias=bt,
        temperature=2.0,
        chunk_size=3,
    )
    assert_close(chunked, full, tol=1e-6)
    for got, want in zip(grads(chunked, [ws, bs]), grads(full, [ws, bs])):
        assert_close(got, want, tol=1e-6)


def test_bad_arguments_raise(logits):
    student, teacher, labels = logits
    with pytest.raises(ValueError, match="same shape"):
        forward_kl(student, teacher[..., :-1])
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, beta=1.5)
    with pytest.raises(ValueError, match="token shape"):
        forward_kl(student, teacher, labels=labels[:, :-1])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_kd_loss(student, teacher, chunk_size=0)
    with pytest.raises(ValueError, match="divergence"):
        kd_loss(student, teacher, "nope")


# --------------------------------------------------------------------------- CE and intermediate losses


def test_cross_entropy_matches_torch(logits):
    student, _, labels = logits
    loss = cross_entropy_loss(student, labels)
    expected = F.cross_entropy(student.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    assert_close(loss, expected)
    assert_close(grads(loss, [student])[0], grads(expected, [student])[0])


@pytest.mark.parametrize("loss_fn", [cosine_hidden_loss, mse_hidden_loss])
def test_hidden_losses_zero_for_identical_states(loss_fn):
    h = torch.randn(B, S, 8, dtype=F64, requires_grad=True)
    loss = loss_fn(h, h.detach().clone())
    assert abs(loss.item()) < 1e-12
    assert grads(loss, [h])[0].abs().max().item() < 1e-7


def test_hidden_losses_match_reference(logits):
    _, _, labels = logits
    hs, _, ht, _ = _hidden_inputs(ds=6, dt=6)
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
