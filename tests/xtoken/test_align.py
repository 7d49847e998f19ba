"""Alignment chunks cover both tokenizations in order and spell the same bytes (hypothesis properties)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemocompress.xtoken.align import align_pieces, align_spans
from nemocompress.xtoken.vocab import TokenBytes

# random Unicode (letters, marks, symbols, CJK, emoji), whitespace runs and digit runs
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(" \t\n\r  0123456789"),
    ),
    max_size=60,
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _pieces(tokenizer, text: str) -> list[bytes]:
    vocab = TokenBytes.of(tokenizer)
    return [vocab.pieces[i] for i in tokenizer.encode(text, add_special_tokens=False)]


def _check_chunks(alignment, a, b, all_of_a=True, all_of_b=True):
    """Chunks in order, contiguous where asked, each spelling the same bytes on both sides."""
    for side, pieces, whole in ((alignment.student, a, all_of_a), (alignment.teacher, b, all_of_b)):
        assert all(start < end for start, end in side)
        assert all(side[k][1] <= side[k + 1][0] for k in range(len(side) - 1))
        if whole:
            covered = [i for start, end in side for i in range(start, end)]
            assert covered == [i for i, p in enumerate(pieces) if p]
    for (s0, s1), (t0, t1) in zip(alignment.student, alignment.teacher):
        assert b"".join(a[s0:s1]) == b"".join(b[t0:t1]) != b""


@FAST
@given(text=TEXT)
def test_chunks_cover_both_sequences_and_spell_the_same_text(text, student_tok, teacher_tok):
    a, b = _pieces(student_tok, text), _pieces(teacher_tok, text)
    assert b"".join(a) == b"".join(b) == text.encode()  # byte-level BPE is lossless
    _check_chunks(align_pieces(a, b), a, b)


@FAST
@given(text=TEXT.filter(lambda t: len(t.strip()) > 2), extra=st.sampled_from([b"<s>", b"</s>", b"\xff"]))
def test_fallback_survives_a_token_on_one_side_only(text, extra, student_tok, teacher_tok):
    a = _pieces(student_tok, text)
    b = [extra, *_pieces(teacher_tok, text), extra]  # BOS/EOS asymmetry: bytes no longer agree
    alignment = align_pieces(a, b)
    _check_chunks(alignment, a, b, all_of_b=False)
    covered_b = {i for start, end in alignment.teacher for i in range(start, end)}
    assert 0 not in covered_b and len(b) - 1 not in covered_b


def test_walk_groups_split_digits():
    # student " 1905" vs teacher " ", "1", "9", "0", "5"
    a = [b"In", b" 1905", b"."]
    b = [b"In", b" ", b"1", b"9", b"0", b"5", b"."]
    alignment = align_pieces(a, b)
    assert alignment.student == [(0, 1), (1, 2), (2, 3)]
    assert alignment.teacher == [(0, 1), (1, 6), (6, 7)]


def test_walk_skips_zero_width_tokens():
    # a BOS of zero width on the student side joins no chunk
    alignment = align_spans([0, 2, 5], [2, 3, 5])
    assert alignment.student == [(1, 2), (2, 3)] and alignment.teacher == [(0, 1), (1, 3)]


def test_needleman_wunsch_matches_blocks_across_a_mismatch():
    a = [b"ab", b"c", b"X", b"de", b"f"]
    b = [b"a", b"bc", b"Y", b"Z", b"d", b"ef"]
    alignment = align_pieces(a, b)
    assert alignment.student == [(0, 2), (3, 5)] and alignment.teacher == [(0, 2), (4, 6)]


def test_long_sequences_use_anchors():
    words = [f" w{i}".encode() for i in range(400)]
    a = [b"<bos>", *words]
    b = [w for word in words for w in (word[:2], word[2:])]  # every word split in two, no BOS
    alignment = align_pieces(a, b)
    assert len(alignment) == 400
    assert alignment.student[0] == (1, 2) and alignment.teacher[-1] == (798, 800)
