"""Synthetic multi-step arithmetic with worked reasoning, in a ``<think>...</think>`` chat format.

problems = arithmetic_problems(200, split="train", seed=0)     # seeded; train and held-out never overlap
problems[0].prompt    # 'Start with 7. Add 12. Multiply by 3. What is the result?'
problems[0].thinking  # '7 + 12 = 19. 19 * 3 = 57.'
problems[0].answer    # '57'
write_problems(tokenizer, problems, "train.jsonl")          # {"text", "prompt", "answer"} per line

A problem belongs to the held-out split when a hash of its text says so (``heldout_fraction`` of all
problems), whatever seed or count produced it, so no held-out problem is ever trained on. The training text
is exactly what ``nemocompress generate`` feeds the model (:func:`prompt_text`), then the reasoning,
``</think>``, the answer and the end of text.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["THINK_END", "THINK_START", "Problem", "add_thinking_tokens", "arithmetic_problems", "prompt_text",
           "write_problems"]  # fmt: skip

THINK_START, THINK_END = "<think>", "</think>"
_OPS = (
    ("Add", "+", lambda a, b: a + b),
    ("Subtract", "-", lambda a, b: a - b),
    ("Multiply by", "*", lambda a, b: a * b),
)


@dataclass(frozen=True)
class Problem:
    prompt: str
    thinking: str
    answer: str


def _heldout(prompt: str, fraction: float) -> bool:
    digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def arithmetic_problems(
    count: int,
    split: str = "train",
    seed: int = 0,
    steps: tuple[int, int] = (2, 3),
    heldout_fraction: float = 0.2,
) -> list[Problem]:
    """``count`` distinct problems of ``split`` (``train`` or ``heldout``): a start number (1-20) and
    ``steps`` operations (add / subtract 1-20, multiply by 2-5), worked one step per sentence."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    rng = random.Random(seed)
    out, seen = [], set()
    for _ in range(count * 1000):
        if len(out) == count:
            break
        value = rng.randint(1, 20)
        sentences, work = [f"Start with {value}."], []
        for _ in range(rng.randint(*steps)):
            name, sign, fn = rng.choice(_OPS)
            operand = rng.randint(2, 5) if sign == "*" else rng.randint(1, 20)
            sentences.append(f"{name} {operand}.")
            new = fn(value, operand)
            work.append(f"{value} {sign} {operand} = {new}.")
            value = new
        prompt = " ".join(sentences) + " What is the result?"
        if prompt in seen or _heldout(prompt, heldout_fraction) != (split == "heldout"):
            continue
        seen.add(prompt)
        out.append(Problem(prompt, " ".join(work), str(value)))
    if len(out) < count:
        raise ValueError(f"only {len(out)} distinct {split} problems of this kind exist; ask for fewer")
    return out


def prompt_text(tokenizer, prompt: str, thinking: bool) -> str:
    """The text a model is prompted with: the chat template's user turn and generation prompt when the
    tokenizer has a template, else the prompt; with ``thinking``, ``<think>`` and a newline after it unless
    the template opens the reasoning itself."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    if thinking and not text.rstrip().endswith(THINK_START):
        text = text + THINK_START + "\n"
    return text


def add_thinking_tokens(tokenizer) -> bool:
    """Give ``tokenizer`` the ``<think>`` / ``</think>`` special tokens if it lacks them; whether it did (the
    model's embeddings then need ``resize_token_embeddings(len(tokenizer))``)."""
    missing = [t for t in (THINK_START, THINK_END) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return bool(missing)


def write_problems(tokenizer, problems: list[Problem], path: str | Path) -> Path:
    """One JSON line per problem: ``text`` (prompt, reasoning, ``</think>``, answer, end of text: the training
    document), ``prompt`` and ``answer``."""
    eos = tokenizer.eos_token or ""
    lines = []
    for p in problems:
        text = prompt_text(tokenizer, p.prompt, True) + f"{p.thinking}\n{THINK_END}\n{p.answer}{eos}"
        lines.append(json.dumps({"text": text, **asdict(p)}))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
