"""A small NemotronH-style hybrid trained here on real text: the reference model for hybrid experiments.

No pretrained hybrid Mamba model can be downloaded on these machines, so this module trains one:

path = reference_hybrid()       # built once (about 15 minutes on 2 idle CPU cores), then cached
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
summary = json.loads((path / "training.json").read_text())

The recipe (all of it in ``ReferenceRecipe``, whose defaults are the cached model):

1. Data: two domains, Shakespeare (``fetch_text("shakespeare")``, 42 works) and Python code
   (``fetch_text("python-stdlib")``), each split and packed with
   ``build_samples(heldout_fraction=0.1, seed=0)``; the held-out documents are never trained on.
2. Tokenizer: byte-level BPE (GPT-2 pre-tokenization, all 256 bytes in the base alphabet), vocab 4096,
   trained with the ``tokenizers`` library on train documents, the same amount of text from each
   domain (all of Shakespeare, a seeded random part of the code); special tokens
   ``<|endoftext|>`` (eos, also the document separator), ``<|startoftext|>`` (bos, never inserted) and
   ``<|pad|>``. Nothing is added around encoded text.
3. Model: NemotronH, hidden 192, 8 layers of all four block types (Mamba with ``n_groups=2``, attention,
   relu^2 MLP, MoE with 8 routed experts, top-2, and a shared expert), untied embeddings: 3.06M
   params, 1.49M of them outside the embedding and output matrices.
4. Training: a fixed number of steps, 800 of 16 x 256 tokens (3.3M tokens; the count, not wall time,
   ends training, so the weights do not depend on machine speed), of AdamW, linear
   warmup then cosine decay, on batches that take half their samples from each domain (packed
   samples of 256 tokens, reshuffled each epoch of a domain). MoE routers are balanced without an
   auxiliary loss, as in Nemotron 3 / DeepSeek-V3: after each step every router's
   ``e_score_correction_bias`` moves by ``router_bias_rate`` towards under-used experts.
   Runs on CPU with 2 threads and fixed seeds: the same recipe gives bitwise-identical weights.

The result is a stock Hugging Face checkpoint (``config.json``, ``model.safetensors``, tokenizer files)
plus ``training.json``: steps, tokens, train loss curve, held-out loss and bits per byte per domain,
seconds, greedy samples. Changing the recipe means a new cache name: bump ``REFERENCE_NAME``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from nemocompress.assets import _cached, cache_root, fetch_text
from nemocompress.data import build_samples, load_texts, split_texts
from nemocompress.errors import NemocompressError
from nemocompress.evaluate import evaluate, generate_text

__all__ = [
    "REFERENCE_CORPORA",
    "REFERENCE_MODEL",
    "REFERENCE_NAME",
    "ReferenceBuildError",
    "ReferenceRecipe",
    "build_reference_hybrid",
    "reference_hybrid",
    "train_bpe_tokenizer",
]

REFERENCE_NAME = "reference-hybrid-v1"
REFERENCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "training.json")
REFERENCE_CORPORA = ("shakespeare", "python-stdlib")
NUM_THREADS = 2  # the thread count is part of the recipe: float sums differ with it

EOS_TOKEN, BOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|startoftext|>", "<|pad|>"

REFERENCE_MODEL = dict(
    hidden_size=192,
    layers_block_type=["mamba", "mlp", "mamba", "attention", "mamba", "moe", "mamba", "mlp"],
    mamba_num_heads=8, mamba_head_dim=24, n_groups=2, ssm_state_size=16, chunk_size=64, conv_kernel=4,
    num_attention_heads=6, num_key_value_heads=2, head_dim=32,
    intermediate_size=512,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
    n_shared_experts=1, moe_shared_expert_intermediate_size=256,
    max_position_embeddings=4096, tie_word_embeddings=False,
)  # fmt: skip

SAMPLE_PROMPTS = {"shakespeare": "Romeo.\nO, ", "python-stdlib": "def read_config(path):\n"}


class ReferenceBuildError(NemocompressError):
    """The reference model could not be built; the message names the fix."""


@dataclass(frozen=True)
class ReferenceRecipe:
    """Everything that determines the reference model; the defaults are the cached ``REFERENCE_NAME``.

    ``model`` holds NemotronH config fields except ``vocab_size`` (from ``vocab_size`` here) and the
    special token ids (from the tokenizer). ``batch_size`` samples of ``seq_len`` tokens make one step, split evenly across the
    domains. ``eval_samples`` held-out samples per domain give the final loss; ``sample_tokens`` greedy
    tokens per domain prompt go into the summary.
    """

    model: Mapping = field(default_factory=lambda: dict(REFERENCE_MODEL))
    vocab_size: int = 4096
    steps: int = 800
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    router_bias_rate: float = 1e-3
    heldout_fraction: float = 0.1
    eval_samples: int = 64
    sample_tokens: int = 48
    seed: int = 0

    def __post_init__(self):
        positive = ("vocab_size", "steps", "batch_size", "seq_len", "eval_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ReferenceBuildError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 259:
            raise ReferenceBuildError(
                f"vocab_size must hold the 256 bytes and 3 special tokens, got {self.vocab_size}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ReferenceBuildError(
                f"warmup_steps must lie in [0, steps={self.steps}), got {self.warmup_steps}"
            )
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise ReferenceBuildError(
                f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}"
            )
        if "vocab_size" in self.model:
            raise ReferenceBuildError("set the vocabulary with ReferenceRecipe.vocab_size, not in model")


def reference_hybrid(
    cache_dir: str | os.PathLike | None = None, max_minutes: float | None = None, progress: bool = True
) -> Path:
    """Return the folder of the reference NemotronH hybrid, training it first if it is not cached.

    The first call loads Shakespeare and the Python standard library (``fetch_text``) and trains for
    ``ReferenceRecipe().steps`` steps (about 15 minutes on 2 idle CPU cores); later calls return at
    once.
    The folder, ``cache_root(cache_dir) / "models" / REFERENCE_NAME``, holds a stock checkpoint that
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load, and
    ``training.json`` (see ``build_reference_hybrid``).

    ``max_minutes`` stops training after that much wall time (for quick trials). Such a model depends
    on machine speed, so it is cached apart, under ``f"{REFERENCE_NAME}-max{max_minutes:g}min"``.
    """
    name = REFERENCE_NAME if max_minutes is None else f"{REFERENCE_NAME}-max{max_minutes:g}min"
    target = cache_root(cache_dir) / "models" / name

    def build(staging: Path, scratch: Path) -> None:
        corpora = {c: load_texts(fetch_text(c, cache_dir)) for c in REFERENCE_CORPORA}
        build_reference_hybrid(
            staging, corpora, ReferenceRecipe(), max_minutes=max_minutes, progress=progress
        )

    return _cached(target, REFERENCE_FILES, build)


def build_reference_hybrid(
    out_dir: str | os.PathLike,
    corpora: Mapping[str, Sequence[str]],
    recipe: ReferenceRecipe | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
) -> dict:
    """Train a tokenizer and a NemotronH model on ``corpora`` and save both into ``out_dir``.

    ``corpora`` maps a domain name to its documents (e.g. ``load_texts(fetch_text("shakespeare"))``);
    each domain is split into train and held-out documents. ``recipe`` defaults to ``ReferenceRecipe()``;
    its ``batch_size`` must be a multiple of the number of domains. Writes the checkpoint, the tokenizer
    and ``training.json``, and returns the same summary as a dict: ``steps``, ``complete``, ``tokens``,
    ``seconds``, ``tokens_per_second``, ``params``, ``first_train_loss``, ``final_train_loss`` (mean of
    the last 20 steps), ``train_loss_curve`` (``[step, loss]`` pairs), ``corpora`` (documents, tokens and
    epochs per domain), ``heldout`` (``{domain: {"loss", "bits_per_byte", "tokens"}}``), ``heldout_loss``
    and ``bits_per_byte`` (means over domains), ``samples`` (greedy continuations,
    ``{domain: {"prompt", "text"}}``), ``recipe`` and ``versions``.

    Runs on CPU with ``NUM_THREADS`` threads (restored afterwards). ``max_minutes`` stops training
    early; the learning-rate schedule still spans ``recipe.steps``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    recipe = ReferenceRecipe() if recipe is None else recipe
    out_dir = Path(out_dir)
    if not corpora or recipe.batch_size % len(corpora):
        raise ReferenceBuildError(
            f"batch_size={recipe.batch_size} must be a positive multiple of the {len(corpora)} domains"
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(NUM_THREADS)
    try:
        splits = {
            name: split_texts(texts, recipe.heldout_fraction, seed=recipe.seed)
            for name, texts in corpora.items()
        }
        tokenizer = train_bpe_tokenizer(
            _balanced_documents([train for train, _ in splits.values()], recipe.seed),
            recipe.vocab_size,
            recipe.seq_len,
        )
        built = {  # the same split as ``splits`` (same rule, fraction and seed), packed
            name: build_samples(
                tokenizer,
                texts,
                recipe.seq_len,
                None,
                recipe.eval_samples,
                recipe.heldout_fraction,
                recipe.seed,
            )
            for name, texts in corpora.items()
        }
        train_samples = {name: b.train for name, b in built.items()}
        heldout_samples = {name: b.heldout for name, b in built.items()}

        config = AutoConfig.for_model(
            "nemotron_h",
            **recipe.model,
            vocab_size=recipe.vocab_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(recipe.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        summary = _train(model, train_samples, recipe, max_minutes, progress)
        summary["params"] = sum(p.numel() for p in model.parameters())
        summary["corpora"] = {
            name: {
                "train_documents": len(train),
                "heldout_documents": len(heldout),
                "train_tokens": train_samples[name].numel(),
                "epochs": summary["steps"] * recipe.batch_size // len(corpora) / len(train_samples[name]),
            }
            for name, (train, heldout) in splits.items()
        }
        summary |= _evaluate(model, tokenizer, heldout_samples, recipe.sample_tokens, progress)
        summary["recipe"] = asdict(recipe)
        summary["versions"] = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }

        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        if progress:
            print(_summary_line(summary))
    finally:
        torch.set_num_threads(previous_threads)
    return summary


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, model_max_length: int = 4096):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``vocab_size`` entries (fewer if the text is short).

    GPT-2 pre-tokenization and byte alphabet (any text encodes, nothing is unknown); the first three
    ids are ``<|endoftext|>`` (eos), ``<|startoftext|>`` (bos) and ``<|pad|>``. No special tokens are
    added when encoding. Deterministic for given texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, BOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )


def _balanced_documents(domains: Sequence[Sequence[str]], seed: int) -> list[str]:
    """The same number of characters from each domain: seeded random documents of the larger domains.

    Documents are drawn (whole) in a seeded random order until the smallest domain's size is reached.
    """
    budget = min(sum(map(len, docs)) for docs in domains)
    picked = []
    for i, docs in enumerate(domains):
        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed + i)).tolist()
        size = 0
        for j in order:
            if size >= budget:
                break
            picked.append(docs[j])
            size += len(docs[j])
    return picked


def _lr_lambda(recipe: ReferenceRecipe):
    def factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return recipe.min_lr_ratio + (1.0 - recipe.min_lr_ratio) * cosine

    return factor


def _batch_order(num_samples: int, num_needed: int, seed: int) -> torch.Tensor:
    """``num_needed`` sample indices: consecutive seeded permutations of ``range(num_samples)``."""
    epochs = math.ceil(num_needed / num_samples)
    perms = [
        torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + e)) for e in range(epochs)
    ]
    return torch.cat(perms)[:num_needed]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (and fused expert tensors) only; not on norms, biases, A_log, D, dt_bias."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _RouterBalancer:
    """Aux-loss-free MoE balancing: count each router's expert choices, then nudge its bias.

    After a step, ``bias += rate * sign(mean_load - load)`` for every router, so under-used experts
    score higher next time (DeepSeek-V3, Nemotron 3).
    """

    def __init__(self, model: torch.nn.Module, rate: float):
        self.rate = rate
        self.routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
        self.loads = [torch.zeros_like(r.e_score_correction_bias) for r in self.routers]
        self.handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, index: int):
        def count(module, args, output):
            topk_indices = output[2]
            self.loads[index] += torch.bincount(
                topk_indices.flatten(), minlength=len(self.loads[index])
            ).float()

        return count

    @torch.no_grad()
    def step(self) -> None:
        for router, load in zip(self.routers, self.loads):
            router.e_score_correction_bias.add_(self.rate * torch.sign(load.mean() - load))
            load.zero_()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _train(
    model: torch.nn.Module,
    train_samples: Mapping[str, torch.Tensor],
    recipe: ReferenceRecipe,
    max_minutes: float | None,
    progress: bool,
) -> dict:
    """The training loop; returns the training part of the summary."""
    per_domain = recipe.batch_size // len(train_samples)
    orders = {
        name: _batch_order(len(samples), recipe.steps * per_domain, recipe.seed + 1000 * i)
        for i, (name, samples) in enumerate(train_samples.items())
    }
    optimizer = torch.optim.AdamW(
        _param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas, eps=1e-8
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe))
    balancer = _RouterBalancer(model, recipe.router_bias_rate)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="train reference hybrid", disable=not progress, mininterval=5)
    try:
        for step in bar:
            rows = slice(step * per_domain, (step + 1) * per_domain)
            batch = torch.cat([train_samples[name][order[rows]] for name, order in orders.items()])
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            balancer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise ReferenceBuildError(
                    f"the training loss became {losses[-1]} at step {step}: lower the lr"
                )
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                break
    finally:
        bar.close()
        balancer.remove()
    seconds = time.perf_counter() - start
    tokens = len(losses) * recipe.batch_size * recipe.seq_len
    every = max(1, len(losses) // 100)
    return {
        "steps": len(losses),
        "complete": len(losses) == recipe.steps,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
        "first_train_loss": losses[0],
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "train_loss_curve": [[i, losses[i]] for i in range(0, len(losses), every)]
        + [[len(losses) - 1, losses[-1]]],
    }


def _summary_line(summary: dict) -> str:
    per_domain = ", ".join(
        f"{name} {h['loss']:.3f} nats/token {h['bits_per_byte']:.3f} bits/byte"
        for name, h in summary["heldout"].items()
    )
    return (
        f"reference hybrid: {summary['steps']} steps, {summary['tokens']} tokens in {summary['seconds']:.0f} s "
        f"({summary['tokens_per_second']:.0f} tokens/s); train loss {summary['final_train_loss']:.3f}; "
        f"held-out: {per_domain}"
    )


def _evaluate(
    model, tokenizer, heldout_samples: Mapping[str, torch.Tensor], sample_tokens: int, progress: bool
) -> dict:
    """Held-out loss and bits per byte per domain and averaged over domains, plus greedy samples."""
    heldout = {}
    for name, input_ids in heldout_samples.items():
        report = evaluate(model, input_ids, tokenizer, batch_size=8, progress=progress)
        heldout[name] = {
            "loss": report.loss,
            "bits_per_byte": report.bits_per_byte,
            "tokens": report.num_targets,
        }
    samples = {}
    for name in heldout_samples:
        prompt = SAMPLE_PROMPTS.get(name, "The ")
        samples[name] = {"prompt": prompt, "text": generate_text(model, tokenizer, prompt, sample_tokens)}
    return {
        "heldout": heldout,
        "heldout_loss": sum(h["loss"] for h in heldout.values()) / len(heldout),
        "bits_per_byte": sum(h["bits_per_byte"] for h in heldout.values()) / len(heldout),
        "samples": samples,
    }
