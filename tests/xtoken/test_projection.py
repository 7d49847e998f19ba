"""Projection W from two tokenizers: identity for identical ones, rows sum to one, fingerprints enforced."""

import pytest
import torch

from nemocompress.errors import OutputError
from nemocompress.xtoken.projection import Projection, build_projection, piece_weights
from nemocompress.xtoken.vocab import TokenBytes, XTokenError
from nemocompress.zoo import zoo_tokenizer


def test_identical_tokenizers_give_the_identity(student_tok):
    w = build_projection(student_tok, student_tok).matrix.to_dense()
    assert torch.equal(w, torch.eye(len(student_tok)))


def test_rows_sum_to_one_and_top_k_holds(student_tok, teacher_tok):
    p = build_projection(student_tok, teacher_tok, top_k=3)
    assert p.shape == (len(student_tok), len(teacher_tok))
    sums = p.matrix.to_dense().sum(1)
    covered = p.matrix.crow.diff() > 0
    assert covered.float().mean() > 0.99
    torch.testing.assert_close(sums[covered], torch.ones(int(covered.sum())))
    assert int(p.matrix.crow.diff().max()) <= 3
    assert 0.5 < p.stats["exact_share"] < 1.0 and p.stats["mean_pieces"] > 1.0


def test_multi_digit_token_maps_to_digit_pieces(student_tok, teacher_tok):
    student, teacher = TokenBytes.of(student_tok), TokenBytes.of(teacher_tok)
    numbers = [i for i, p in enumerate(student.pieces) if p and p.strip().isdigit() and len(p.strip()) >= 2]
    assert numbers, "the student tokenizer should hold multi-digit tokens"
    dense = build_projection(student_tok, teacher_tok).matrix.to_dense()
    s = numbers[0]
    digits = student.pieces[s]
    row = {teacher.pieces[t]: float(w) for t, w in enumerate(dense[s]) if w > 0}
    first = teacher.ids_of[digits[:1]] if digits[:1] in teacher.ids_of else None
    assert first is not None and row[digits[:1]] == pytest.approx(piece_weights(len(digits))[0], rel=0.05)
    assert all(len(piece) == 1 or piece.strip() == b"" for piece in row)


def _bpe(tokens: list[str], merges: list[tuple[str, str]]):
    """A byte-level BPE tokenizer with exactly these tokens and merges (``Ġ`` is the space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_reverse_pass_adds_the_longer_teacher_token():
    chars = ["Ġ", "k", "i", "n", "g"]
    student = _bpe([*chars, "Ġk", "Ġki", "Ġkin"], [("Ġ", "k"), ("Ġk", "i"), ("Ġki", "n")])
    teacher = _bpe([*chars, "in", "ing", "Ġk", "Ġking"], [("i", "n"), ("in", "g"), ("Ġ", "k"), ("Ġk", "ing")])
    kin = student.convert_tokens_to_ids("Ġkin")
    names = {i: t for t, i in teacher.get_vocab().items()}
    forward = build_projection(student, teacher, reverse=False).matrix.to_dense()[kin]
    both = build_projection(student, teacher).matrix.to_dense()[kin]
    w = piece_weights(2)
    assert {names[int(t)]: float(forward[t]) for t in forward.nonzero()} == pytest.approx(
        {"Ġk": w[0], "in": w[1]}
    )
    # " king" is "Ġkin" + "g" for the student: the reverse pass adds Ġking to the row of Ġkin
    row = {names[int(t)]: float(both[t]) for t in both.nonzero()}
    assert set(row) == {"Ġk", "in", "Ġking"} and row["Ġking"] == pytest.approx(w[0] / (1 + w[0]))


def test_special_tokens_matched_by_similarity(student_tok, teacher_tok):
    dense = build_projection(student_tok, teacher_tok).matrix.to_dense()
    s = student_tok.convert_tokens_to_ids("<|im_start|>")
    t = teacher_tok.convert_tokens_to_ids("<|im_start|>")
    assert dense[s, t] == pytest.approx(1.0)  # the same special token on both sides: pinned


def test_save_load_roundtrip_and_refuses_other_tokenizers(tmp_path, student_tok, teacher_tok):
    p = build_projection(student_tok, teacher_tok)
    path = p.save(tmp_path / "w.safetensors")
    q = Projection.load(path, student_tok, teacher_tok)
    assert torch.equal(q.matrix.to_dense(), p.matrix.to_dense()) and q.stats == p.stats
    assert "exact matches" in q.table()
    with pytest.raises(XTokenError, match="built for other tokenizers"):
        Projection.load(path, teacher_tok, student_tok)
    with pytest.raises(OutputError, match="already exists"):
        p.save(path)
    with pytest.raises(XTokenError, match="does not exist"):
        Projection.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(XTokenError, match="not a readable"):
        Projection.load(tmp_path / "junk.safetensors")


def test_no_overlap_is_refused():
    with pytest.raises(XTokenError, match="share no token"):
        build_projection(zoo_tokenizer(), _letters_only())


def _letters_only():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "\u00e9\u00e9": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_resized_pads_rows_and_columns(student_tok, teacher_tok):
    p = build_projection(student_tok, teacher_tok)
    big = p.resized(len(student_tok) + 5, len(teacher_tok) + 7)
    assert big.shape == (len(student_tok) + 5, len(teacher_tok) + 7)
    dense = big.matrix.to_dense()
    assert torch.equal(dense[: len(student_tok), : len(teacher_tok)], p.matrix.to_dense())
    assert dense[len(student_tok) :].abs().sum() == 0
    with pytest.raises(XTokenError, match="rebuild"):
        p.resized(3, 3)
