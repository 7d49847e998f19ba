"""P-KL and H-KL equal forward KL for identical tokenizers; ULD and GOLD match TRL's algorithm."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from nemocompress.distill.losses import forward_kl
from nemocompress.xtoken.align import align_pieces
from nemocompress.xtoken.losses import (
    chunks_from_alignments,
    common_pairs,
    gold_loss,
    hkl_loss,
    pkl_loss,
    string_pairs,
    uld_loss,
)
from nemocompress.xtoken.projection import build_projection
from nemocompress.xtoken.vocab import TokenBytes

TEXTS = ["In 1905 there were 4321 ships.", "The king said: 77 men, 12.5% of them"]


def _batch(tokenizer, texts, pad_id=0):
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, ids))
    valid = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], dtype=torch.bool)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in ids]), valid


def _chunks(student_tok, teacher_tok, texts=TEXTS):
    s_ids, _ = _batch(student_tok, texts)
    t_ids, t_valid = _batch(teacher_tok, texts)
    sv, tv = TokenBytes.of(student_tok), TokenBytes.of(teacher_tok)
    alignments = []
    for b, text in enumerate(texts):
        n_s = len(student_tok.encode(text, add_special_tokens=False))
        n_t = int(t_valid[b].sum())
        alignments.append(
            align_pieces(
                [sv.pieces[i] for i in s_ids[b, :n_s].tolist()],
                [tv.pieces[i] for i in t_ids[b, :n_t].tolist()],
            )
        )
    return chunks_from_alignments(alignments, s_ids, t_ids, t_valid), s_ids, t_ids


def _logits(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def test_identical_tokenizers_pkl_and_hkl_equal_forward_kl(student_tok):
    texts = ["In 1905 there were 4321 ships and", "The king said: 77 men, 12.5% of them"]
    chunks, ids, _ = _chunks(student_tok, student_tok, texts)
    lengths = [len(student_tok.encode(t, add_special_tokens=False)) for t in texts]
    assert chunks.num_chunks == sum(n - 1 for n in lengths)
    v = len(student_tok)
    s, t = _logits((2, ids.shape[1] - 1, v), 0), _logits((2, ids.shape[1] - 1, v), 1)
    mask = torch.tensor([[k < n - 1 for k in range(ids.shape[1] - 1)] for n in lengths])
    expected = forward_kl(s, t, mask=mask, temperature=2.0)
    w = build_projection(student_tok, student_tok).matrix
    w = type(w)(w.crow, w.col, w.values.double(), w.shape)
    torch.testing.assert_close(pkl_loss(s, t, chunks, w, top_k=v, temperature=2.0), expected)
    common = common_pairs(build_projection(student_tok, student_tok))
    assert len(common.student) == v
    torch.testing.assert_close(hkl_loss(s, t, chunks, common, temperature=2.0), expected)
    assert uld_loss(s, s, chunks) == 0
    assert abs(gold_loss(s, s, chunks, string_pairs(student_tok, student_tok))) < 1e-12


def test_pkl_gradients_reach_student_and_projection(student_tok, teacher_tok):
    chunks, s_ids, t_ids = _chunks(student_tok, teacher_tok)
    assert chunks.num_chunks > 10
    w = build_projection(student_tok, teacher_tok).matrix
    s = _logits((2, s_ids.shape[1] - 1, len(student_tok)), 2).float().requires_grad_(True)
    t = _logits((2, t_ids.shape[1] - 1, len(teacher_tok)), 3).float()
    values = w.values.clone().requires_grad_(True)
    loss = pkl_loss(s, t, chunks, w, top_k=64, values=values)
    loss.backward()
    assert loss > 0 and s.grad.abs().sum() > 0 and values.grad.abs().sum() > 0
    untouched = torch.ones(s.shape[:2], dtype=torch.bool)
    untouched.view(-1)[chunks.student_pos] = False
    assert untouched.any() and s.grad[untouched].abs().sum() == 0  # positions in no chunk get no gradient


@pytest.mark.parametrize("loss", ["pkl", "hkl", "uld", "gold"])
def test_losses_fall_when_student_moves_to_teacher(loss, student_tok, teacher_tok):
    """Gradient descent on the student logits lowers every loss (the losses pull the right way)."""
    chunks, s_ids, t_ids = _chunks(student_tok, teacher_tok)
    projection = build_projection(student_tok, teacher_tok)
    t = _logits((2, t_ids.shape[1] - 1, len(teacher_tok)), 5).float() * 2
    s = _logits((2, s_ids.shape[1] - 1, len(student_tok)), 6).float().requires_grad_(True)
    fn = {
        "pkl": lambda s: pkl_loss(s, t, chunks, projection.matrix, top_k=256),
        "hkl": lambda s: hkl_loss(s, t, chunks, common_pairs(projection)),
        "uld": lambda s: uld_loss(s, t, chunks),
        "gold": lambda s: gold_loss(s, t, chunks, string_pairs(student_tok, teacher_tok)),
    }[loss]
    optimizer = torch.optim.Adam([s], lr=0.3)
    first = float(fn(s).detach())
    for _ in range(25):
        optimizer.zero_grad()
        fn(s).backward()
        optimizer.step()
    assert float(fn(s).detach()) < 0.6 * first


def _trl_style_uld(s_probs, t_probs, s_groups, t_groups, s_tokens, t_tokens, matched=None, beta=0.5):
    """TRL's ULDLoss per sample, written out as its loops do: merge, sort, pad, L1 (or the hybrid)."""

    def merge(probs, groups, tokens):
        out = []
        for g in groups:
            p = probs[g[0]].clone()
            for idx in g[1:]:
                p = p * probs[idx, tokens[idx]].clamp_min(1e-8)
            out.append(p)
        return torch.stack(out)

    s, t = merge(s_probs, s_groups, s_tokens), merge(t_probs, t_groups, t_tokens)

    def sorted_l1(a, b):
        a, b = a.sort(-1, descending=True).values, b.sort(-1, descending=True).values
        w = max(a.shape[-1], b.shape[-1])
        return F.l1_loss(
            F.pad(a, (0, w - a.shape[-1])), F.pad(b, (0, w - b.shape[-1])), reduction="sum"
        ) / len(s)

    if matched is None:
        return sorted_l1(s, t)
    sm, tm = matched
    ls, lt = s[:, sm].clamp_min(1e-8).log(), t[:, tm].clamp_min(1e-8).log()
    m = torch.logsumexp(
        torch.stack([ls + torch.log1p(torch.tensor(-beta)), lt + torch.log(torch.tensor(beta))]), 0
    )
    jsd = beta * F.kl_div(m, lt, reduction="none", log_target=True) + (1 - beta) * F.kl_div(
        m, ls, reduction="none", log_target=True
    )
    matched_loss = jsd.sum() / len(s)
    keep_s = torch.ones(s.shape[1], dtype=torch.bool)
    keep_t = torch.ones(t.shape[1], dtype=torch.bool)
    keep_s[sm], keep_t[tm] = False, False
    w = len(tm) / t.shape[1]
    return w * matched_loss + (1 - w) * sorted_l1(s[:, keep_s], t[:, keep_t])


def _groups(chunks, side, row, length):
    pos = getattr(chunks, f"{side}_pos")
    chunk = getattr(chunks, f"{side}_chunk")
    ids = [c for c in range(chunks.num_chunks) if chunks.row[c] == row]
    return [[int(p) - row * length for p, k in zip(pos, chunk) if k == c] for c in ids]


@pytest.mark.parametrize("hybrid", [False, True])
def test_uld_and_gold_match_trl_algorithm(hybrid, student_tok, teacher_tok):
    chunks, s_ids, t_ids = _chunks(student_tok, teacher_tok)
    s_len, t_len = s_ids.shape[1] - 1, t_ids.shape[1] - 1
    s = _logits((2, s_len, len(student_tok)), 7)
    t = _logits((2, t_len, len(teacher_tok)), 8)
    pairs = string_pairs(student_tok, teacher_tok)
    ours = gold_loss(s, t, chunks, pairs) if hybrid else uld_loss(s, t, chunks)
    per_sample = []
    for b in range(2):
        sg, tg = _groups(chunks, "student", b, s_len), _groups(chunks, "teacher", b, t_len)
        matched = (pairs.student, pairs.teacher) if hybrid else None
        per_sample.append(
            _trl_style_uld(s[b].softmax(-1), t[b].softmax(-1), sg, tg, s_ids[b, 1:], t_ids[b, 1:], matched)
        )
    torch.testing.assert_close(ours, torch.stack(per_sample).mean())


@pytest.mark.skipif(
    importlib.util.find_spec("trl") is None, reason="trl is not installed beside nemocompress"
)
def test_uld_and_gold_match_trl_itself(student_tok, teacher_tok):
    from types import SimpleNamespace

    from trl.experimental.gold.gold_trainer import ULDLoss

    chunks, s_ids, t_ids = _chunks(student_tok, teacher_tok)
    s_len, t_len = s_ids.shape[1] - 1, t_ids.shape[1] - 1
    s, t = _logits((2, s_len, len(student_tok)), 9).float(), _logits((2, t_len, len(teacher_tok)), 10).float()
    for hybrid in (False, True):
        config = SimpleNamespace(
            uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0,
            uld_teacher_temperature=1.0, uld_skip_student_eos=False, uld_skip_teacher_eos=False,
            use_extended_uld=True, uld_use_hybrid_loss=hybrid, uld_hybrid_matched_weight=None,
            uld_hybrid_unmatched_weight=None, beta=0.5, uld_token_merge_strategy="observed",
        )  # fmt: skip
        trl = ULDLoss(config, student_tok, teacher_tok)
        per_sample = []
        for b in range(2):
            sg, tg = _groups(chunks, "student", b, s_len), _groups(chunks, "teacher", b, t_len)
            sp, tp = s[b].softmax(-1), t[b].softmax(-1)
            ms = trl._merge_probabilities_with_alignment_groups(sp, sg, s_ids[b, 1:].tolist())
            mt = trl._merge_probabilities_with_alignment_groups(tp, tg, t_ids[b, 1:].tolist())
            if hybrid:
                per_sample.append(trl._compute_hybrid_uld_loss(ms, mt))
            else:
                a, c = ms.sort(-1, descending=True).values, mt.sort(-1, descending=True).values
                w = max(a.shape[-1], c.shape[-1])
                l1 = F.l1_loss(
                    F.pad(a, (0, w - a.shape[-1])), F.pad(c, (0, w - c.shape[-1])), reduction="sum"
                )
                per_sample.append(l1 / len(ms))
        ours = (
            gold_loss(s, t, chunks, string_pairs(student_tok, teacher_tok))
            if hybrid
            else uld_loss(s, t, chunks)
        )
        torch.testing.assert_close(ours, torch.stack(per_sample).mean(), rtol=1e-4, atol=1e-6)
