"""Several teachers across tokenizers: one with the student's tokenizer, one with its own."""

import pytest
from helpers import save_model_with_tokenizer

from nemocompress.distill import DistillConfig, distill
from nemocompress.xtoken import Projection
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

TINY = dict(seq_len=24, batch_size=2, lr=3e-3, warmup_steps=1, eval_every=0, save_every=0, eval_samples=4, progress=False)  # fmt: skip

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:the fused LM-head loss is not used"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, student_tok):
    """A student with a byte-level BPE tokenizer, a teacher with the same tokenizer and a zoo teacher with
    its character tokenizer."""
    root = tmp_path_factory.mktemp("xteachers")
    save_model_with_tokenizer(student_tok, root / "student", seed=0)
    save_model_with_tokenizer(student_tok, root / "same", seed=1)
    save_zoo_checkpoint("llama", root / "other")
    (root / "data.txt").write_text(zoo_text(num_documents=30, seed=5))
    return root


def test_a_same_and_a_cross_tokenizer_teacher_train_together(models, tmp_path, student_tok):
    teachers = [str(models / "same"), str(models / "other")]
    config = DistillConfig(
        teacher=teachers, student=models / "student", data=models / "data.txt", output_dir=tmp_path / "out",
        kd_loss="pkl", steps=8, teacher_weight=[0.5, 0.5], **TINY,
    )  # fmt: skip
    result = distill(config)
    train = [r for r in result.records if "loss" in r]
    assert all(r["kd"] > 0 for r in train)
    assert sum(r["loss"] for r in train[-3:]) < sum(r["loss"] for r in train[:3])
    assert result.evals[-1]["eval/loss"] < result.evals[0]["eval/loss"]
    # each teacher has its own W, cached beside the output: the identity for the shared tokenizer
    same = Projection.load(tmp_path / "out.projection.safetensors")
    other = Projection.load(tmp_path / "out.projection-1.safetensors")
    assert same.stats["exact_share"] > 0.9
    assert same.student_fingerprint == same.teacher_fingerprint != other.teacher_fingerprint
    # per batch the teacher with the lowest CE per byte: both are random, so per token the character-level
    # teacher (ln 128 nats) beats the BPE one (ln 700), but per byte of text the BPE one (several bytes a
    # token) is far better, and it is picked for every micro-batch
    chosen = distill(
        DistillConfig(**{**config.to_dict(), "teacher_weight": None, "teacher_select": "min-ce", "steps": 2,
                         "output_dir": str(tmp_path / "min")})
    )  # fmt: skip
    picks = [r["teacher_picks"] for r in chosen.records if "loss" in r]
    assert picks == [[1, 0], [1, 0]]
