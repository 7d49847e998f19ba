"""`cache-teacher --student S` for a teacher of another tokenizer, then `distill --teacher-cache` with no teacher."""

import json

import pytest
import torch
from helpers import assert_cli_errors, save_model_with_tokenizer

from nemocompress import api, cli
from nemocompress.distill import DistillConfig, DistillError, TeacherCache, distill
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

TINY = dict(seq_len=24, batch_size=2, lr=3e-3, warmup_steps=1, eval_every=0, save_every=0, eval_samples=2, progress=False)  # fmt: skip
CACHE = dict(seq_len=24, eval_samples=2, progress=False)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:the fused LM-head loss is not used"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, student_tok, teacher_tok):
    """A zoo teacher (character tokenizer, 128 ids), a student with a byte-level BPE tokenizer, a second
    student with another BPE tokenizer, text, and a cache of the teacher's whole vocabulary for the student."""
    root = tmp_path_factory.mktemp("xcache")
    save_zoo_checkpoint("llama", root / "teacher")
    save_model_with_tokenizer(student_tok, root / "student", seed=0)
    save_model_with_tokenizer(teacher_tok, root / "other_student", seed=0)
    (root / "data.txt").write_text(zoo_text(num_documents=10, seed=5))
    (root / "other.txt").write_text(zoo_text(num_documents=10, seed=6))
    api.cache_teacher(root / "teacher", root / "data.txt", root / "full", student=root / "student", top_k=128, **CACHE)  # fmt: skip
    return root


def _train(result) -> list[dict]:
    return [r for r in result.records if "loss" in r]


@pytest.mark.parametrize("loss", ["pkl", "hkl"])
def test_a_cache_of_the_whole_vocabulary_equals_the_live_teacher(models, tmp_path, loss):
    cache = TeacherCache(models / "full")
    assert cache.top_k == 128 and cache.student_digest is not None
    ids, valid, values, indices = cache.teacher_topk("train", torch.tensor([0, 3]))
    assert ids.shape == valid.shape and values.shape == indices.shape == (2, ids.shape[1] - 1, 128)
    assert ids.shape[1] > 24  # the teacher's character tokens outnumber the student's BPE tokens
    common = dict(student=models / "student", kd_loss=loss, steps=3, **TINY)
    live = distill(DistillConfig(teacher=models / "teacher", data=models / "data.txt", output_dir=tmp_path / "live", **common))  # fmt: skip
    cached = distill(DistillConfig(teacher_cache=models / "full", output_dir=tmp_path / "cached", **common))
    assert len(_train(cached)) == 3
    for a, b in zip(_train(live), _train(cached)):
        for key in ("loss", "kd", "ce"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    assert cached.evals[-1]["eval/loss"] == pytest.approx(live.evals[-1]["eval/loss"], rel=1e-5)


def test_a_small_top_k_cache_trains_without_the_teacher(models, tmp_path, capsys):
    argv = ["cache-teacher", "--teacher", str(models / "teacher"), "--student", str(models / "student"),
            "--data", str(models / "data.txt"), "-o", str(tmp_path / "k8"), "--top-k", "8", "--seq-len", "24",
            "--eval-samples", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    meta = json.loads((tmp_path / "k8" / "teacher_cache.json").read_text())
    assert meta["top_k"] == 8 and meta["student_tokenizer_digest"]
    config = DistillConfig(
        student=models / "student", teacher_cache=tmp_path / "k8", kd_loss="pkl", output_dir=tmp_path / "out",
        **{**TINY, "steps": 8},
    )  # fmt: skip
    result = distill(config)
    train = _train(result)
    assert all(r["kd"] > 0 for r in train)
    assert sum(r["loss"] for r in train[-3:]) < sum(r["loss"] for r in train[:3])
    assert result.evals[-1]["eval/loss"] < result.evals[0]["eval/loss"]


def test_a_cache_for_another_student_kind_or_data_is_refused(models, tmp_path, capsys):
    base = ["distill", "--teacher-cache", str(models / "full"), "--steps", "1", "--seq-len", "24"]
    same = tmp_path / "same_tokenizer_cache"
    api.cache_teacher(models / "teacher", models / "data.txt", same, top_k=8, **CACHE)
    cases = [
        (["--student", str(models / "other_student"), "--kd-loss", "pkl"], "built for another student tokenizer"),
        (["--student", str(models / "student"), "--kd-loss", "pkl", "--data", str(models / "other.txt")],
         "built from other data"),
        (["--student", str(models / "student"), "--kd-loss", "topk-kl"], "pass --kd-loss pkl"),
        (["--student", str(models / "student"), "--kd-loss", "pkl", "--teacher-cache", str(same)],
         "holds same-tokenizer top-k logits"),
    ]  # fmt: skip
    assert_cli_errors(capsys, base, cases, tmp_path)
    # the same data is accepted (the cache's settings rebuild its tokens)
    ok = DistillConfig(student=models / "student", teacher_cache=models / "full", kd_loss="uld", data=models / "data.txt",
                       output_dir=tmp_path / "ok", **{**TINY, "steps": 1})  # fmt: skip
    assert len(_train(distill(ok))) == 1
    with pytest.raises(DistillError, match="same-tokenizer cache"):
        TeacherCache(same).teacher_topk("train", torch.tensor([0]))
