"""Budget-controlled generation (Star Elastic): a small submodel thinks, a large one answers.

result = generate_text("run", ["What is 17 + 25?"], think_budget="0.5", answer_budget="1.0")
print(result.table()); print(result.outputs[0].answer)

One model is loaded and masked in place (no second copy): the think phase runs at ``think_budget`` until the
model closes its reasoning (the tokenizer's ``</think>`` token, or end of text, or ``max_think_tokens``
tokens, after which ``</think>`` is forced); then the masks switch to ``answer_budget`` and the whole context
(prompt, reasoning, ``</think>``) is prefilled again at that budget, with a fresh cache, before the answer is
written (at most ``max_new_tokens`` tokens, until end of text); with one budget for both phases the answer
continues from the think phase's cache instead. Decoding is greedy. A model without a
thinking format has one phase, the answer. A plain checkpoint has one budget, the model itself.

The prompt goes through the tokenizer's chat template when it has one; with a thinking format, ``<think>``
is appended when the template does not open the reasoning itself.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..distill.models import load_causal_lm, load_tokenizer
from ..reasoning import THINK_END, THINK_START, prompt_text
from ..report import format_table
from .slice import RunMasks, budget_choice
from .train import ELASTIC_DIR, ElasticError

__all__ = ["GenerateResult", "Phase", "generate_text", "read_prompts", "THINK_END", "THINK_START"]


@dataclass
class Phase:
    """One phase of one prompt: ``budget`` (None: the model as loaded), tokens written, prefill seconds (the
    context's forward pass) and decode seconds (one forward per further token)."""

    name: str
    budget: str | None
    tokens: int
    prefill_tokens: int
    prefill_s: float
    decode_s: float
    forced_end: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def latency_s(self) -> float:
        return self.prefill_s + self.decode_s


@dataclass
class Output:
    prompt: str
    thinking: str | None
    answer: str
    phases: list[Phase] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        phases = [
            {**asdict(p), "tokens_per_s": p.tokens_per_s, "latency_s": p.latency_s} for p in self.phases
        ]
        return {"prompt": self.prompt, "thinking": self.thinking, "answer": self.answer, "phases": phases}


@dataclass
class GenerateResult:
    outputs: list[Output]

    def table(self) -> str:
        rows = []
        for i, o in enumerate(self.outputs):
            for p in o.phases:
                rows.append([
                    i, p.name, p.budget or "model", p.tokens, p.prefill_tokens, f"{p.prefill_s * 1e3:.1f}",
                    f"{p.tokens_per_s:.1f}", f"{p.latency_s:.3f}", "forced" if p.forced_end else "",
                ])  # fmt: skip
        return format_table(
            rows,
            [
                "prompt",
                "phase",
                "budget",
                "tokens",
                "prefill tokens",
                "prefill ms",
                "tokens/s",
                "latency s",
                "end",
            ],
        )

    def to_dict(self) -> dict:
        return {"outputs": [o.to_dict() for o in self.outputs]}


def _checked(model_dir: Path, budget: str | None, flag: str):
    """The choice of a RUN's trained ``budget`` (None for None); refused for a plain model or an untrained
    budget, before any work."""
    if budget is None:
        return None
    if not (model_dir / ELASTIC_DIR).is_dir():
        raise ElasticError(
            f"{model_dir} is not an elastic RUN, so it has one budget: drop {flag} (or give a RUN from "
            "`nemocompress elastic train`)"
        )
    return budget_choice(model_dir, budget)[1]


class _Budgets:
    """Switches one loaded model between a RUN's budgets by label (a plain model: one budget, no masks)."""

    def __init__(self, model_dir: Path, model, choices: dict) -> None:
        self.masks = RunMasks(model_dir, model) if (model_dir / ELASTIC_DIR).is_dir() else None
        self.choices = choices

    def set(self, budget: str | None) -> None:
        if self.masks is not None:
            self.masks.set(None if budget is None else self.choices[budget])


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a ``.jsonl`` file (``prompt`` or ``text`` per line)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ElasticError(f"prompts file {path} does not exist")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts.append(str(row["prompt"] if "prompt" in row else row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ElasticError(
                f"{path} line {n}: expected a JSON object with a 'prompt' (or 'text') string"
            ) from None
    return prompts


def _token_id(tokenizer, token: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def _prompt_ids(tokenizer, prompt: str, thinking: bool) -> list[int]:
    text = prompt_text(tokenizer, prompt, thinking)
    return tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"]


@torch.no_grad()
def _greedy(model, context: list[int], max_new: int, stop: set[int], cache=None):
    """Greedy tokens after ``context`` (prefilled into a fresh cache, or appended to ``cache``): until a
    ``stop`` token (kept, not yet fed) or ``max_new``. Returns the tokens, the prefill and decode seconds and
    the cache (holding ``context`` and every token but the last)."""
    device = next(model.parameters()).device
    # transformers >= 5.24 names the cache `cache` (argument and output); earlier, `past_key_values`
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    began = time.perf_counter()
    given = {} if cache is None else {key: cache}
    out = model(torch.tensor([context], device=device), use_cache=True, **given)
    prefill = time.perf_counter() - began
    tokens: list[int] = []
    began = time.perf_counter()
    while len(tokens) < max_new:
        nxt = int(out.logits[0, -1].argmax())
        tokens.append(nxt)
        if nxt in stop or len(tokens) == max_new:
            break
        out = model(torch.tensor([[nxt]], device=device), use_cache=True, **{key: _cache(out)})
    return tokens, prefill, time.perf_counter() - began, _cache(out)


def _cache(out):
    return out.get("cache", out.get("past_key_values"))


def generate_text(
    model_dir: str | Path,
    prompts: Sequence[str],
    think_budget: str | None = None,
    answer_budget: str | None = None,
    max_think_tokens: int = 256,
    max_new_tokens: int = 128,
) -> GenerateResult:
    """Generate an answer to each prompt (module docstring). Budgets are labels or values as given to
    ``elastic train`` (None: the model as loaded, i.e. the full parent of a RUN)."""
    model_dir = Path(model_dir)
    if not prompts:
        raise ElasticError("give --prompt TEXT or --prompts FILE.jsonl")
    if max_think_tokens < 1 or max_new_tokens < 1:
        raise ElasticError("--max-think-tokens and --max-new-tokens must be positive")
    tokenizer = load_tokenizer(model_dir)
    think_end = _token_id(tokenizer, THINK_END)
    if think_budget is not None and think_end is None:
        raise ElasticError(
            f"{model_dir} has no thinking format (its tokenizer has no {THINK_END} token): drop --think-budget"
        )
    choices = {flag: _checked(model_dir, b, flag) for flag, b in (("--think-budget", think_budget),
               ("--answer-budget", answer_budget))}  # fmt: skip
    model = load_causal_lm(model_dir).eval()
    budgets = _Budgets(
        model_dir, model, {b: c for b, c in zip((think_budget, answer_budget), choices.values())}
    )
    eos = {tokenizer.eos_token_id} - {None}
    outputs = []
    for prompt in prompts:
        context = _prompt_ids(tokenizer, prompt, think_end is not None)
        phases, thinking, cache, fed = [], None, None, context
        if think_end is not None:
            budgets.set(think_budget)
            tokens, prefill, decode, cache = _greedy(model, context, max_think_tokens, {think_end} | eos)
            forced = not tokens or tokens[-1] != think_end
            thought = [t for t in tokens if t != think_end and t not in eos]
            thinking = tokenizer.decode(thought, skip_special_tokens=False)
            phases.append(Phase("think", think_budget, len(tokens), len(context), prefill, decode, forced))
            # the cache holds every think-phase token but the last (a stop token, or the max_think_tokens-th)
            fed = (
                [tokens[-1], think_end] if tokens[-1] != think_end and tokens[-1] not in eos else [think_end]
            )
            context = context + thought + [think_end]
        if think_end is None or think_budget != answer_budget:
            budgets.set(answer_budget)  # the switch: the whole context is prefilled again at this budget
            cache, fed = None, context
        tokens, prefill, decode, _ = _greedy(model, fed, max_new_tokens, eos, cache)
        phases.append(Phase("answer", answer_budget, len(tokens), len(fed), prefill, decode))
        answer = tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        outputs.append(Output(prompt, thinking, answer, phases, context + tokens))
    budgets.set(None)
    return GenerateResult(outputs)
