"""Evaluation: held-out next-token loss, bits per byte, greedy generation.

input_ids = pack_tokens(tokenizer, heldout_texts, seq_len=512, num_samples=32)  # [32, 512]
loss = heldout_loss(model, input_ids)                  # nats per token
bpb = bits_per_byte(model, tokenizer, input_ids)       # comparable across tokenizers
print(generate_text(model, tokenizer, "The capital of France is"))
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["bits_per_byte", "bits_per_byte_from_nats", "generate_text", "heldout_loss", "token_losses"]


@torch.no_grad()
def token_losses(
    model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 4, progress: bool = True
) -> torch.Tensor:
    """Next-token cross-entropy of every position: a float32 CPU tensor ``[N, S - 1]`` in nats.

    ``input_ids`` is a ``LongTensor [N, S]`` of packed samples (no padding); entry ``[i, t]`` is the loss
    of predicting ``input_ids[i, t + 1]`` from ``input_ids[i, : t + 1]``. Runs in eval mode on the
    model's device in batches of ``batch_size`` samples, with logits upcast to float32; the model's
    training mode is restored afterwards. ``progress`` shows a tqdm bar (only on a terminal).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [N, S] with S >= 2, got shape {tuple(input_ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = []
    try:
        starts = range(0, input_ids.shape[0], batch_size)
        for start in tqdm(starts, desc="heldout loss", disable=None if progress else True):
            batch = input_ids[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
            losses.append(loss.view(batch.shape[0], -1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(losses)


def heldout_loss(
    model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 4, progress: bool = True
) -> float:
    """Mean next-token cross-entropy (nats per token) over all ``N * (S - 1)`` predictions.

    ``input_ids``: ``LongTensor [N, S]``, e.g. from ``nemocompress.data.pack_tokens``. Every target
    counts, including the eos tokens that separate documents.
    """
    return token_losses(model, input_ids, batch_size, progress).mean().item()


def bits_per_byte_from_nats(total_nats: float, num_bytes: int) -> float:
    """Convert a summed loss in nats over a text of ``num_bytes`` UTF-8 bytes to bits per byte."""
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be positive, got {num_bytes}")
    return total_nats / (math.log(2) * num_bytes)


def bits_per_byte(
    model: torch.nn.Module,
    tokenizer: Any,
    input_ids: torch.Tensor,
    batch_size: int = 4,
    progress: bool = True,
) -> float:
    """Bits per UTF-8 byte of the predicted text: a loss comparable across tokenizers.

    ``input_ids``: ``LongTensor [N, S]``. The loss is summed over the targets ``input_ids[:, 1:]``
    that are not special tokens (document separators carry no bytes) and divided by the byte length of
    those targets decoded with ``skip_special_tokens=True``. Decoding each sample on its own may split a
    multi-byte character at a sample edge; the error is a few bytes per sample.
    """
    losses = token_losses(model, input_ids, batch_size, progress)
    targets = input_ids[:, 1:].cpu()
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=targets.dtype)
    total_nats = losses[~torch.isin(targets, special)].double().sum().item()
    num_bytes = sum(len(tokenizer.decode(row, skip_special_tokens=True).encode("utf-8")) for row in targets)
    return bits_per_byte_from_nats(total_nats, num_bytes)


@torch.no_grad()
def generate_text(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of ``prompt``: the decoded new tokens only (special tokens skipped).

    Generation stops after ``max_new_tokens`` tokens or at the model's eos token. The model's training
    mode is restored afterwards.
    """
    device = next(model.parameters()).device
    encoded = tokenizer(prompt, return_tensors="pt")
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded.get("attention_mask", torch.ones_like(encoded["input_ids"])).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
