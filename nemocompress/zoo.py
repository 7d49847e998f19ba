"""Named tiny configs, one or more per adapter, for tests and CI regression over fixed model sizes."""

from __future__ import annotations

import random

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

__all__ = ["ZOO", "save_zoo_checkpoint", "zoo_config", "zoo_model", "zoo_text", "zoo_tokenizer"]

_ATTN = dict(num_attention_heads=4, num_key_value_heads=2)

ZOO: dict[str, tuple[str, dict]] = {
    "nemotron_h-hybrid": (
        "nemotron_h",
        dict(
            vocab_size=128, hidden_size=64, head_dim=16, intermediate_size=96,
            layers_block_type=["mamba", "attention", "mlp", "mamba", "moe", "mlp"],
            mamba_num_heads=8, mamba_head_dim=8, n_groups=2, ssm_state_size=16, chunk_size=16,
            n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            moe_shared_expert_intermediate_size=48, n_shared_experts=1, tie_word_embeddings=False, **_ATTN,
        ),
    ),
    "nemotron_h-latent-moe": (
        "nemotron_h",
        dict(
            vocab_size=128, hidden_size=64, head_dim=16, intermediate_size=96,
            layers_block_type=["mamba", "moe", "attention", "moe"],
            mamba_num_heads=4, mamba_head_dim=16, n_groups=2, ssm_state_size=8, chunk_size=16,
            n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, moe_latent_size=24,
            moe_shared_expert_intermediate_size=32, n_shared_experts=1, tie_word_embeddings=True, **_ATTN,
        ),
    ),
    "mamba2": (
        "mamba2",
        dict(
            vocab_size=128, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16, n_groups=2,
            state_size=16, expand=2, chunk_size=16, tie_word_embeddings=False,
        ),
    ),
    "llama": ("llama", dict(vocab_size=128, hidden_size=64, num_hidden_layers=3, intermediate_size=96, tie_word_embeddings=True, **_ATTN)),
    "mistral": ("mistral", dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, intermediate_size=96, head_dim=16, **_ATTN)),
    "qwen2": ("qwen2", dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, intermediate_size=96, **_ATTN)),
    "qwen3": ("qwen3", dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, intermediate_size=96, head_dim=16, **_ATTN)),
    "qwen3_moe": (
        "qwen3_moe",
        dict(
            vocab_size=128, hidden_size=64, num_hidden_layers=3, intermediate_size=96, head_dim=16,
            moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1], **_ATTN,
        ),
    ),
    "mixtral": (
        "mixtral",
        dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, **_ATTN),
    ),
}  # fmt: skip


def zoo_config(name: str) -> PretrainedConfig:
    """The config of a named tiny model; see :data:`ZOO`."""
    model_type, kwargs = ZOO[name]
    return AutoConfig.for_model(model_type, **kwargs)


def zoo_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model with seeded random weights (float32, eval mode).

    Norm weights and the few parameters that initialize to constants are perturbed so that every tensor
    carries information (a slicing bug cannot hide behind a weight of all ones).
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(zoo_config(name), dtype=torch.float32).eval()
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if p.ndim == 1 or "gate" in name_ or "experts" in name_:
                p.add_(torch.randn_like(p) * 0.1)
        for name_, b in model.named_buffers():
            if name_.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.01)
    return model


def zoo_tokenizer():
    """Character-level tokenizer over printable ASCII and newline: 98 ids (fits every zoo vocab), eos = 1."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<eos>",
        pad_token="<eos>",
        clean_up_tokenization_spaces=False,
    )


def save_zoo_checkpoint(name: str, path, seed: int = 0, **save_kwargs):
    """Write a zoo model and the zoo tokenizer as a stock checkpoint directory; returns the path."""
    zoo_model(name, seed).save_pretrained(path, **save_kwargs)
    zoo_tokenizer().save_pretrained(path)
    return path


_WORDS = (
    "the a of and to in is was it for on with as by at from that this which be are were had has not but "
    "or all one two three old new small great little long first last good high other many some time day "
    "year man woman child king queen house ship river city field road stone tree light night morning "
    "water fire wind rain snow gold iron bread word song letter story book voice hand eye heart mind "
    "came went saw said took gave made found kept left heard knew thought told asked turned walked ran "
    "slowly quickly softly together again always never often here there before after under over near"
).split()


def zoo_text(num_documents: int = 40, seed: int = 0) -> str:
    """A deterministic English-like corpus in the zoo tokenizer's alphabet, for offline tests and CI.

    ``num_documents`` documents of about 1,500 characters (sentences of seeded random words from a fixed
    list), separated by blank lines; the same ``seed`` gives the same text on every machine and Python 3.
    Save it as a ``.txt`` and it is one document; as lines of a ``.jsonl`` it would be many.
    """
    rng = random.Random(seed)
    documents = []
    for _ in range(num_documents):
        sentences, size = [], 0
        while size < 1500:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 14))]
            sentence = " ".join(words).capitalize() + rng.choice(".....?!;")
            sentences.append(sentence)
            size += len(sentence) + 1
        documents.append(" ".join(sentences))
    return "\n\n".join(documents) + "\n"
