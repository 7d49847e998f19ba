"""The chunked and fused KD losses on the device: the naive loss's value and gradients, a fraction of its memory."""

import pytest
import torch
import torch.nn.functional as F

from nemocompress.distill.losses import chunked_kd_loss, chunked_kd_loss_from_hidden, kd_loss

pytestmark = pytest.mark.gpu

TEMPERATURE = 2.0


def naive_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """T^2 * mean over tokens of KL(teacher || student) at temperature T, every [tokens, V] tensor in float32."""
    log_s = F.log_softmax(student_logits.float() / TEMPERATURE, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / TEMPERATURE, dim=-1)
    return TEMPERATURE**2 * (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def _logits(device, tokens, vocab, seed=0):
    g = torch.Generator(device).manual_seed(seed)
    student = (torch.randn(tokens, vocab, generator=g, device=device) * 3).bfloat16().requires_grad_()
    teacher = (torch.randn(tokens, vocab, generator=g, device=device) * 3).bfloat16()
    return student, teacher


def _close_grads(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """bf16 gradients: within 2% of the largest entry (each entry is rounded to 8 bits of mantissa)."""
    scale = expected.float().abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0.02, atol=0.02 * scale)


def test_chunked_kd_loss_equals_naive(device):
    student, teacher = _logits(device, 512, 16384)
    expected = naive_forward_kl(student, teacher)
    (expected_grad,) = torch.autograd.grad(expected, student)
    for loss_fn in (kd_loss, chunked_kd_loss):
        loss = loss_fn(student, teacher, temperature=TEMPERATURE)
        (grad,) = torch.autograd.grad(loss, student)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
        _close_grads(grad, expected_grad)
    chunks = chunked_kd_loss(student, teacher, temperature=TEMPERATURE, chunk_size=37)  # a ragged last chunk
    torch.testing.assert_close(chunks, expected, rtol=1e-5, atol=0)


def _hidden_and_heads(device, tokens, vocab, width, seed=0):
    g = torch.Generator(device).manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, device=device) * std).bfloat16()

    student = randn(tokens, width).requires_grad_()
    student_head = randn(vocab, width, std=width**-0.5).requires_grad_()
    return student, student_head, randn(tokens, width), randn(vocab, width, std=width**-0.5)


def test_fused_kd_loss_equals_naive(device):
    student, student_head, teacher, teacher_head = _hidden_and_heads(device, 512, 16384, 256)
    expected = naive_forward_kl(F.linear(student, student_head), F.linear(teacher, teacher_head))
    expected_grads = torch.autograd.grad(expected, (student, student_head))
    loss = chunked_kd_loss_from_hidden(student, student_head, teacher, teacher_head, temperature=TEMPERATURE)
    grads = torch.autograd.grad(loss, (student, student_head))
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=0)  # the head's matmul itself runs in bf16
    for grad, expected_grad in zip(grads, expected_grads):
        _close_grads(grad, expected_grad)


def peak_extra_bytes(step) -> int:
    """Peak CUDA memory ``step()`` allocates above what was allocated before it (gradients included)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


VOCAB, TOKENS = 131072, 8192  # a Nemotron vocabulary, one 8k-token sequence (2 GiB of bf16 logits per model)


def test_chunked_kd_loss_peak_memory_against_naive(cuda):
    student, teacher = _logits(cuda, TOKENS, VOCAB)
    logits_bytes = student.numel() * student.element_size()

    def backward(loss_fn):
        student.grad = None
        loss_fn(student, teacher).backward()

    naive = peak_extra_bytes(lambda: backward(naive_forward_kl))
    chunked = peak_extra_bytes(lambda: backward(lambda s, t: chunked_kd_loss(s, t, temperature=TEMPERATURE)))
    print(f"KD loss peak extra memory at V={VOCAB}, {TOKENS} tokens: naive {naive / 2**30:.2f} GiB, "
          f"chunked {chunked / 2**30:.2f} GiB")  # fmt: skip
    # chunked holds the gradient (the logits' size, which the naive backward also returns) plus ~1 GiB of chunks
    assert chunked <= logits_bytes + 2**30
    assert 4 * chunked < naive


def test_fused_kd_loss_peak_memory_against_naive(cuda):
    student, student_head, teacher, teacher_head = _hidden_and_heads(cuda, TOKENS, VOCAB, 1024)

    def backward(loss_fn):
        student.grad = student_head.grad = None
        loss_fn().backward()

    naive = peak_extra_bytes(
        lambda: backward(
            lambda: naive_forward_kl(F.linear(student, student_head), F.linear(teacher, teacher_head))
        )
    )
    fused = peak_extra_bytes(
        lambda: backward(
            lambda: chunked_kd_loss_from_hidden(
                student, student_head, teacher, teacher_head, temperature=TEMPERATURE
            )
        )
    )
    print(f"fused KD loss peak extra memory at V={VOCAB}, {TOKENS} tokens: naive {naive / 2**30:.2f} GiB, "
          f"fused {fused / 2**30:.2f} GiB")  # fmt: skip
    logits_bytes = TOKENS * VOCAB * 2
    assert fused < logits_bytes  # never one model's full logits
    assert 8 * fused < naive
