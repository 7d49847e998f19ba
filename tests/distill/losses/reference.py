"""Independent float64 references and small helpers shared by the loss tests."""

import torch

from nemocompress.distill.losses import kd_loss

F64 = torch.float64


B, S, V = 2, 7, 13


DIVERGENCES = [
    ("kl", 0.5),
    ("rkl", 0.5),
    ("jsd", 0.0),
    ("jsd", 0.3),
    ("jsd", 0.5),
    ("jsd", 1.0),
    ("tvd", 0.5),
]


def ref_divergence(student_logits, teacher_logits, kind, beta=0.5, temperature=1.0):
    """Per-token divergence from explicit probabilities: [..., V] -> [...]."""
    p_s = torch.softmax(student_logits / temperature, dim=-1)
    p_t = torch.softmax(teacher_logits / temperature, dim=-1)

    def kl(p, q):
        return (p * (torch.log(p) - torch.log(q))).sum(-1)

    if kind == "kl" or (kind == "jsd" and beta == 0.0):
        return kl(p_t, p_s)
    if kind == "rkl" or (kind == "jsd" and beta == 1.0):
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


def hidden_inputs(ds=5, dt=6, bias=False):
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
