"""The reference hybrid builder: a tiny build on a synthetic two-domain corpus, and the real one (slow)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress.reference import (
    REFERENCE_FILES,
    REFERENCE_MODEL,
    REFERENCE_NAME,
    ReferenceBuildError,
    ReferenceRecipe,
    _balanced_documents,
    _batch_order,
    build_reference_hybrid,
    reference_hybrid,
    train_bpe_tokenizer,
)

TINY_MODEL = dict(REFERENCE_MODEL) | dict(
    hidden_size=32,
    layers_block_type=["mamba", "attention", "mlp", "moe"],
    mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8, chunk_size=16,
    num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    intermediate_size=64,
    n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=32,
)  # fmt: skip
TINY_RECIPE = ReferenceRecipe(
    model=TINY_MODEL,
    vocab_size=320,
    steps=4,
    batch_size=4,
    seq_len=32,
    lr=3e-3,
    warmup_steps=1,
    eval_samples=2,
    sample_tokens=4,
)
WORDS = "thou art the king of love and night my lord good sweet fair death heart come hence".split()


def tiny_corpora() -> dict[str, list[str]]:
    """Two small domains of 12 documents each: verse-like prose and Python-like code."""
    rng = random.Random(0)
    prose = [
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "." for _ in range(40))
        for _ in range(12)
    ]
    code = [
        "\n".join(
            f"def f{i}_{j}(x):\n    return x * {rng.randint(0, 99)} + {rng.choice(WORDS)!r}\n"
            for j in range(20)
        )
        for i in range(12)
    ]
    return {"prose": prose, "code": code}


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The same tiny recipe built twice into separate folders."""
    corpora = tiny_corpora()
    outs = [tmp_path_factory.mktemp(f"build{i}") for i in range(2)]
    summaries = [build_reference_hybrid(out, corpora, TINY_RECIPE, progress=False) for out in outs]
    return outs, summaries


def test_tiny_build_loads_as_a_stock_hybrid_checkpoint(two_builds):
    (out, _), (summary, _) = two_builds
    for name in REFERENCE_FILES:
        assert (out / name).is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = model.config
    assert config.model_type == "nemotron_h"
    assert set(config.layers_block_type) == {
        "linear_attention",
        "full_attention",
        "mlp",
        "moe",
    }  # Mamba, attention
    assert config.n_groups > 1
    assert config.vocab_size == TINY_RECIPE.vocab_size >= len(tokenizer)
    assert (config.eos_token_id, config.bos_token_id, config.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
    )
    ids = tokenizer("Good night, sweet prince", return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], config.vocab_size) and torch.isfinite(logits).all()
    assert json.loads((out / "training.json").read_text()) == json.loads(json.dumps(summary))


def test_tiny_build_trains(two_builds):
    _, (summary, _) = two_builds
    assert summary["steps"] == TINY_RECIPE.steps and summary["complete"]
    assert summary["tokens"] == TINY_RECIPE.steps * TINY_RECIPE.batch_size * TINY_RECIPE.seq_len
    losses = [loss for _, loss in summary["train_loss_curve"]]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    for domain in ("prose", "code"):
        heldout = summary["heldout"][domain]
        assert math.isfinite(heldout["loss"]) and heldout["bits_per_byte"] > 0
    assert summary["params"] > 0 and set(summary["samples"]) == {"prose", "code"}


def test_same_recipe_gives_bitwise_identical_weights(two_builds):
    (first, second), _ = two_builds
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()


def test_moe_router_bias_is_balanced(two_builds):
    (out, _), _ = two_builds
    biases = [
        v for k, v in load_file(out / "model.safetensors").items() if k.endswith("e_score_correction_bias")
    ]
    assert biases and all(b.abs().sum() > 0 for b in biases)  # moved away from the zero init


def test_tokenizer_round_trips_any_text():
    tokenizer = train_bpe_tokenizer(tiny_corpora()["prose"], vocab_size=300)
    text = "Thou art — naïve 🙂\n\tdef x(): pass"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|startoftext|>", "<|pad|>"]


def test_batch_order_is_whole_seeded_epochs():
    order = _batch_order(5, 12, seed=3)
    assert sorted(order[:5].tolist()) == sorted(order[5:10].tolist()) == list(range(5))
    assert torch.equal(order, _batch_order(5, 12, seed=3))


def test_balanced_documents_take_about_the_same_text_from_each_domain():
    small, large = ["a" * 10] * 3, ["b" * 10] * 30
    picked = _balanced_documents([small, large], seed=0)
    assert picked.count("a" * 10) == 3 and picked.count("b" * 10) == 3


@pytest.mark.parametrize(
    "kwargs",
    [dict(steps=0), dict(vocab_size=100), dict(warmup_steps=5, steps=5), dict(model={"vocab_size": 9})],
)
def test_recipe_rejects_bad_values(kwargs):
    with pytest.raises(ReferenceBuildError):
        ReferenceRecipe(**kwargs)


def test_batch_size_must_split_across_domains(tmp_path):
    recipe = ReferenceRecipe(model=TINY_MODEL, batch_size=3, steps=2, warmup_steps=0)
    with pytest.raises(ReferenceBuildError, match="multiple"):
        build_reference_hybrid(tmp_path, tiny_corpora(), recipe, progress=False)


def test_reference_hybrid_returns_a_cached_build_without_training(tmp_path):
    target = tmp_path / "models" / REFERENCE_NAME
    target.mkdir(parents=True)
    for name in REFERENCE_FILES:
        (target / name).write_text("{}")
    assert reference_hybrid(cache_dir=tmp_path) == target


@pytest.mark.slow
def test_real_reference_hybrid():
    """The real build (about 15 minutes on 2 CPU cores the first time) learns both domains."""
    path = reference_hybrid()
    summary = json.loads((path / "training.json").read_text())
    assert summary["complete"] and summary["steps"] == ReferenceRecipe().steps
    assert summary["final_train_loss"] < summary["first_train_loss"] - 3
    for domain in ("shakespeare", "python-stdlib"):
        assert summary["heldout"][domain]["bits_per_byte"] < 3.0
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.n_groups == 2 and len(model.config.layers_block_type) == 8
