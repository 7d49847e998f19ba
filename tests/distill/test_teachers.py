"""Several teachers on tiny zoo models: a weighted sum of their KD terms, or per batch the lowest-CE one."""

import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_cli_errors
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from nemocompress.distill import DistillConfig, DistillError, distill
from nemocompress.distill.trainer import CHECKPOINTS, FINAL
from nemocompress.zoo import save_zoo_checkpoint, zoo_config, zoo_model, zoo_text, zoo_tokenizer

TINY = dict(seq_len=24, batch_size=2, lr=3e-3, warmup_steps=1, eval_every=0, save_every=0, eval_samples=2, progress=False)  # fmt: skip

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:the fused LM-head loss is not used"),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A zoo llama teacher, a copy of it, a clearly worse teacher (its logits made 40x sharper, so its CE
    is far above the near-uniform ln V of the others), a student and text."""
    root = tmp_path_factory.mktemp("teachers")
    save_zoo_checkpoint("llama", root / "teacher")
    shutil.copytree(root / "teacher", root / "twin")
    worse = zoo_model("llama", seed=3)
    with torch.no_grad():
        worse.get_output_embeddings().weight.mul_(40.0)  # tied: also the embeddings, still a valid model
    worse.save_pretrained(root / "worse")
    zoo_tokenizer().save_pretrained(root / "worse")
    save_zoo_checkpoint("llama", root / "student", seed=1)
    (root / "data.txt").write_text(zoo_text(num_documents=30, seed=5))
    return root


def _config(assets, out, teacher, **kw) -> DistillConfig:
    return DistillConfig(
        teacher=teacher,
        student=assets / "student",
        data=assets / "data.txt",
        output_dir=out,
        **{**TINY, **kw},
    )


def _trajectory(result) -> list[tuple]:
    return [(r["step"], r["loss"], r["kd"]) for r in result.records if "loss" in r]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _teacher_ce(assets, name: str) -> float:
    model = AutoModelForCausalLM.from_pretrained(assets / name)
    ids = torch.tensor([zoo_tokenizer().encode(zoo_text(num_documents=2, seed=5))[:64]])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_two_identical_teachers_at_half_weight_equal_one_teacher(assets, tmp_path):
    one = distill(_config(assets, tmp_path / "one", str(assets / "teacher"), steps=3, fused_head=False))
    with pytest.warns(UserWarning, match="several teachers are mixed on their logits"):
        two = distill(
            _config(assets, tmp_path / "two", [str(assets / "teacher"), str(assets / "twin")], steps=3,
                    teacher_weight=[0.5, 0.5])
        )  # fmt: skip
    assert _trajectory(two) == _trajectory(one) and all(r[2] > 0 for r in _trajectory(one))
    assert _same_weights(one.final_dir, two.final_dir)
    # the same directory twice is loaded once and gives the same run; equal weights are the default
    same = distill(_config(assets, tmp_path / "same", [str(assets / "teacher")] * 2, steps=3))
    assert _trajectory(same) == _trajectory(one)


def test_weights_one_and_zero_equal_the_first_teacher_alone(assets, tmp_path):
    alone = distill(_config(assets, tmp_path / "alone", str(assets / "teacher"), steps=3, fused_head=False))
    pair = [str(assets / "teacher"), str(assets / "worse")]
    weighted = distill(_config(assets, tmp_path / "w", pair, steps=3, teacher_weight=[1.0, 0.0]))
    assert _trajectory(weighted) == _trajectory(alone)
    assert _same_weights(alone.final_dir, weighted.final_dir)
    mixed = distill(_config(assets, tmp_path / "mixed", pair, steps=3, teacher_weight=[3.0, 1.0]))
    assert _trajectory(mixed) != _trajectory(alone)  # the worse teacher does count at weight 1/4
    assert DistillConfig(
        **{**_config(assets, "o", pair).to_dict(), "teacher_weight": [3, 1]}
    ).teacher_weights == [
        0.75,
        0.25,
    ]


def test_min_ce_picks_the_teacher_with_the_lower_ce(assets, tmp_path):
    assert _teacher_ce(assets, "worse") > _teacher_ce(assets, "teacher") + 5  # clearly worse
    best = distill(_config(assets, tmp_path / "best", str(assets / "teacher"), steps=2, grad_accum=2, fused_head=False))  # fmt: skip
    pair = [str(assets / "worse"), str(assets / "teacher")]
    chosen = distill(
        _config(assets, tmp_path / "chosen", pair, steps=2, grad_accum=2, teacher_select="min-ce")
    )
    picks = [r["teacher_picks"] for r in chosen.records if "loss" in r]
    assert picks == [[0, 2], [0, 2]]  # every micro-batch taught by the better teacher, the second one
    assert "teacher picks (min-ce)" in chosen.table() and "0 / 4" in chosen.table()
    assert _trajectory(chosen) == _trajectory(best) and _same_weights(best.final_dir, chosen.final_dir)


def test_resume_with_several_teachers_equals_not_stopping_bitwise(assets, tmp_path):
    pair = [str(assets / "worse"), str(assets / "teacher")]
    kw = dict(steps=4, save_every=2, keep_checkpoints=2, eval_every=2, teacher_select="min-ce")
    whole = distill(_config(assets, tmp_path / "run", pair, **kw))
    shutil.copytree(whole.final_dir, tmp_path / "whole")
    shutil.rmtree(tmp_path / "run" / CHECKPOINTS / "step-00000004")  # as if stopped after step 2's save
    shutil.rmtree(tmp_path / "run" / FINAL)
    resumed = distill(_config(assets, tmp_path / "run", pair, resume=True, **kw))
    assert resumed.resumed_from == 2
    assert _same_weights(tmp_path / "whole", resumed.final_dir)
    keys = [(x["step"], x.get("loss"), x.get("teacher_picks"), x.get("eval/loss")) for x in whole.records]
    assert [
        (x["step"], x.get("loss"), x.get("teacher_picks"), x.get("eval/loss")) for x in resumed.records
    ] == keys


def _other_vocab_teacher(path: Path) -> Path:
    config = zoo_config("llama")
    config.vocab_size = 100
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_bad_teacher_settings_are_one_line_errors_and_write_nothing(assets, tmp_path, capsys):
    teacher, worse = str(assets / "teacher"), str(assets / "worse")
    base = ["distill", "--student", str(assets / "student"), "--data", str(assets / "data.txt"), "--steps", "1",
            "--seq-len", "24"]  # fmt: skip
    cases = [
        (["--teacher", teacher, "--teacher", worse, "--teacher-weight", "0.5"], "1 --teacher-weight for 2 teachers"),
        (["--teacher", teacher, "--teacher", worse, "--teacher-weight", "1", "--teacher-weight", "-0.5"], ">= 0"),
        (["--teacher", teacher, "--teacher-weight", "0.5"], "repeat --teacher, or drop --teacher-weight"),
        (["--teacher", teacher, "--teacher-select", "min-ce"], "repeat --teacher, or drop --teacher-select"),
        (
            ["--teacher", teacher, "--teacher", worse, "--teacher-select", "min-ce", "--teacher-weight", "1",
             "--teacher-weight", "1"],
            "drop one",
        ),
        (["--teacher", teacher, "--teacher", str(_other_vocab_teacher(tmp_path / "v100"))], "--kd-loss pkl"),
        (["--teacher", teacher, "--teacher", worse, "--intermediate", "cosine"], "drop --intermediate"),
    ]  # fmt: skip
    assert_cli_errors(capsys, base, cases, tmp_path)
    with pytest.raises(DistillError, match="one per teacher"):
        _config(assets, "o", [teacher, worse], projection=["w.safetensors"], kd_loss="pkl")
