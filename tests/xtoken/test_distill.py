"""`distill --kd-loss pkl|hkl|uld|gold` with a teacher of another tokenizer, on tiny models."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from nemocompress import cli
from nemocompress.distill import DistillConfig, DistillError, distill
from nemocompress.xtoken import Projection
from nemocompress.zoo import save_zoo_checkpoint, zoo_config, zoo_text

TINY = dict(seq_len=24, batch_size=2, steps=2, lr=3e-3, warmup_steps=1, eval_every=0, save_every=0, eval_samples=2, progress=False)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory, student_tok):
    """A zoo llama teacher (character tokenizer) and a llama student with a byte-level BPE tokenizer."""
    root = tmp_path_factory.mktemp("xdistill")
    save_zoo_checkpoint("llama", root / "teacher")
    config = zoo_config("llama")
    config.vocab_size = len(student_tok)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "student")
    student_tok.save_pretrained(root / "student")
    (root / "data.txt").write_text(zoo_text(num_documents=30, seed=5))
    return root


def _config(models, out, **kw):
    return DistillConfig(
        teacher=models / "teacher", student=models / "student", data=models / "data.txt", output_dir=out,
        **{**TINY, **kw},
    )  # fmt: skip


@pytest.mark.parametrize("loss", ["pkl", "hkl", "uld", "gold"])
def test_cross_tokenizer_losses_train(loss, models, tmp_path):
    with pytest.warns(UserWarning, match="chunk by chunk"):
        result = distill(_config(models, tmp_path / "out", kd_loss=loss))
    train = [r for r in result.records if "loss" in r]
    assert len(train) == 2 and all(r["kd"] > 0 and r["ce"] > 0 for r in train)
    # dynamic CE scaling: the loss is sg(ce/kd) * kd + ce, whose value is 2 * ce
    assert train[0]["loss"] == pytest.approx(2 * train[0]["ce"], rel=1e-4)
    evals = result.evals
    assert "eval/bpb" in evals[-1] and "eval/kl" not in evals[-1]
    assert (result.final_dir / "model.safetensors").is_file()
    cached = tmp_path / "out.projection.safetensors"
    assert cached.is_file() == (loss in ("pkl", "hkl"))


@pytest.mark.filterwarnings("ignore:the fused LM-head loss is not used")
def test_fixed_mix_and_a_given_projection(models, tmp_path, student_tok):
    from transformers import AutoTokenizer

    rc = cli.main([
        "xtoken", "map", "--student-tokenizer", str(models / "student"), "--teacher-tokenizer",
        str(models / "teacher"), "-o", str(tmp_path / "w.safetensors"), "--top-k", "2",
    ])  # fmt: skip
    assert rc == 0
    projection = Projection.load(tmp_path / "w.safetensors")
    assert projection.top_k == 2 and int(projection.matrix.crow.diff().max()) <= 2
    config = _config(models, tmp_path / "out", kd_loss="pkl", projection=tmp_path / "w.safetensors", ce_mix="fixed", ce_weight=0.5)  # fmt: skip
    result = distill(config)
    r = [r for r in result.records if "loss" in r][0]
    assert r["loss"] == pytest.approx(r["kd"] + 0.5 * r["ce"], rel=1e-4)
    assert not (tmp_path / "out.projection.safetensors").exists()
    # a W built for other tokenizers is refused before anything is written
    other = Projection.load(tmp_path / "w.safetensors")
    swapped = Projection(other.matrix, other.teacher_fingerprint, other.student_fingerprint, 2)
    swapped.save(tmp_path / "swapped.safetensors")
    bad = _config(models, tmp_path / "bad", kd_loss="pkl", projection=tmp_path / "swapped.safetensors")
    with pytest.raises(Exception, match="built for other tokenizers"):
        distill(bad)
    assert not (tmp_path / "bad").exists()
    assert AutoTokenizer.from_pretrained(result.final_dir).get_vocab() == student_tok.get_vocab()


def test_same_tokenizer_kl_refuses_and_names_pkl(models, tmp_path):
    with pytest.raises(DistillError, match="--kd-loss pkl"):
        distill(_config(models, tmp_path / "out", kd_loss="kl"))
    assert not (tmp_path / "out").exists()


def test_settings_are_checked(models, tmp_path):
    with pytest.raises(DistillError, match="drop --intermediate"):
        _config(models, tmp_path / "o", kd_loss="pkl", intermediate="cosine")
    with pytest.raises(DistillError, match="--projection is for"):
        _config(models, tmp_path / "o", kd_loss="kl", projection="w.safetensors")
    with pytest.raises(DistillError, match="ce_mix"):
        _config(models, tmp_path / "o", kd_loss="pkl", ce_mix="sometimes")


def test_missing_teacher_tokenizer_is_refused(models, tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for f in (models / "teacher").iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            (teacher / f.name).write_bytes(f.read_bytes())
    config = _config(models, tmp_path / "out", kd_loss="pkl")
    config.teacher = str(teacher)
    with pytest.raises(DistillError, match="no tokenizer found"):
        distill(config)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.projection.safetensors").exists()
    assert json.loads((teacher / "config.json").read_text())["vocab_size"] == 128
    assert Path(teacher).is_dir()
