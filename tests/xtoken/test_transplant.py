"""`xtoken transplant`: a model on a new tokenizer, each new embedding the W mixture of old rows."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress import api, cli
from nemocompress.errors import OutputError
from nemocompress.xtoken import Projection
from nemocompress.xtoken.vocab import TokenBytes
from nemocompress.zoo import save_zoo_checkpoint


@pytest.fixture(scope="module")
def old_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("transplant") / "old"
    save_zoo_checkpoint("mistral", path)  # untied LM head, character tokenizer, 128 logits
    return path


def test_transplant_mixes_old_rows(old_model, tmp_path, student_tok, capsys):
    student_tok.save_pretrained(tmp_path / "tok")
    out = tmp_path / "new"
    assert cli.main(["xtoken", "transplant", "--model", str(old_model), "--tokenizer", str(tmp_path / "tok"), "-o", str(out)]) == 0  # fmt: skip
    assert "mixed from old pieces" in capsys.readouterr().out
    new = AutoModelForCausalLM.from_pretrained(out)
    old = AutoModelForCausalLM.from_pretrained(old_model)
    assert new.config.vocab_size == len(student_tok)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == student_tok.get_vocab()
    w = Projection.load(out / api.TRANSPLANT_PROJECTION).matrix.to_dense()
    old_tok = AutoTokenizer.from_pretrained(old_model)
    new_vocab, old_vocab = TokenBytes.of(student_tok), TokenBytes.of(old_tok)
    single = new_vocab.ids_of[b"e"]
    longer = next(i for i, p in enumerate(new_vocab.pieces) if p and len(p) >= 3 and p.isalpha())
    for name in ("embed", "head"):
        get = "get_input_embeddings" if name == "embed" else "get_output_embeddings"
        e_new, e_old = getattr(new, get)().weight, getattr(old, get)().weight
        torch.testing.assert_close(e_new[single], e_old[old_vocab.ids_of[b"e"]])  # an old token keeps its row
        torch.testing.assert_close(e_new[longer], w[longer] @ e_old[: w.shape[1]])  # a mixture of its pieces
        assert (w[longer] > 0).sum() >= 2
    ids = torch.tensor([student_tok.encode("the king saw 1905 ships")])
    assert torch.isfinite(new(ids).logits).all()
    assert set(load_file(out / "model.safetensors")) == set(load_file(old_model / "model.safetensors"))


def test_transplant_refuses_existing_output_and_missing_tokenizer(old_model, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputError):
        api.xtoken_transplant(old_model, old_model, tmp_path / "taken")
    with pytest.raises(Exception, match="no tokenizer found"):
        api.xtoken_transplant(old_model, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_map_refuses_existing_output_before_work(tmp_path, capsys):
    (tmp_path / "w.safetensors").write_bytes(b"keep")
    rc = cli.main(["xtoken", "map", "--student-tokenizer", str(tmp_path), "--teacher-tokenizer", str(tmp_path), "-o", str(tmp_path / "w.safetensors")])  # fmt: skip
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "w.safetensors").read_bytes() == b"keep"
    rc = cli.main(["xtoken", "map", "--student-tokenizer", str(tmp_path / "none"), "--teacher-tokenizer", str(tmp_path), "-o", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert rc == 2 and "no tokenizer found" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
