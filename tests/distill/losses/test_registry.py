"""The KD and intermediate loss registries (distill/losses/registry.py): one name, read everywhere."""

import pytest
import torch
from distill.losses.reference import F64, V, assert_close, grads, hidden_inputs

from nemocompress import cli
from nemocompress.distill import DistillConfig, DistillError
from nemocompress.distill.losses import (
    KDLossSpec,
    chunked_distill_loss_from_hidden,
    chunked_kd_loss,
    intermediate_loss_names,
    kd_loss,
    kd_loss_names,
    kd_loss_spec,
    mapped_hidden_loss,
    register_intermediate_loss,
    register_kd_loss,
    registry,
)
from nemocompress.distill.trainer import _fused_head
from nemocompress.zoo import zoo_model

BASE = dict(teacher="t", student="s", data="d", output_dir="o")


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test vanish after it."""
    for name in ("_KD_LOSSES", "_KD_ALIASES", "_INTERMEDIATE"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))


def _choices(flag):
    parser = cli.build_parser()
    distill = next(a for a in parser._subparsers._actions if a.choices and "distill" in a.choices)
    return next(a for a in distill.choices["distill"]._actions if flag in a.option_strings).choices


def test_built_in_names_are_the_cli_and_config_spellings():
    # the same-tokenizer losses, then the cross-tokenizer ones (registered by nemocompress.xtoken, which cli loads)
    assert kd_loss_names() == ("kl", "rkl", "jsd", "tvd", "topk-kl", "pkl", "hkl", "uld", "gold")
    assert intermediate_loss_names() == ("cosine", "mse")
    assert tuple(_choices("--kd-loss")) == kd_loss_names()
    assert tuple(_choices("--intermediate")) == intermediate_loss_names()
    for name in kd_loss_names():
        assert DistillConfig(**BASE, kd_loss=name).kd_loss == name
    with pytest.raises(
        DistillError,
        match="kd_loss must be one of kl, rkl, jsd, tvd, topk-kl, pkl, hkl, uld, gold; got 'hinge'",
    ):
        DistillConfig(**BASE, kd_loss="hinge")
    assert kd_loss_spec("jsd").settings(DistillConfig(**BASE, jsd_beta=0.2)) == {"beta": 0.2}
    assert kd_loss_spec("topk-kl").teacher == "topk" and kd_loss_spec("topk-kl").per_token is None


def test_an_undeclared_hyperparameter_is_refused(logits):
    student, teacher, _ = logits
    with pytest.raises(ValueError, match=r"divergence 'kl' takes no gamma \(its hyper-parameters: none\)"):
        kd_loss(student, teacher, "kl", gamma=2.0)
    with pytest.raises(ValueError, match="its hyper-parameters: beta"):
        chunked_kd_loss(student, teacher, "jsd", gamma=2.0)


def test_older_spellings_are_aliases(logits):
    student, teacher, _ = logits
    assert kd_loss_spec("forward_kl") is kd_loss_spec("kl") and kd_loss_spec("reverse_kl").name == "rkl"
    assert_close(kd_loss(student, teacher, "forward_kl"), kd_loss(student, teacher, "kl"))
    assert DistillConfig(**BASE, kd_loss="reverse_kl").kd_loss == "rkl"


def test_a_taken_name_or_alias_is_refused(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_kd_loss(KDLossSpec("kl", lambda s, t: s.sum(-1)))
    with pytest.raises(ValueError, match="already registered"):
        register_kd_loss(KDLossSpec("new", lambda s, t: s.sum(-1), aliases=("forward_kl",)))
    with pytest.raises(ValueError, match="needs a per_token function"):
        register_kd_loss(KDLossSpec("nothing", None))
    with pytest.raises(ValueError, match="already registered"):
        register_intermediate_loss("mse")(lambda s, t, **kw: s.sum())


def _hellinger(log_s, log_t, *, weight=1.0):
    return weight * 0.5 * ((0.5 * log_s).exp() - (0.5 * log_t).exp()).pow(2).sum(-1)


def test_a_registered_loss_works_in_every_path(scratch_registry, logits):
    register_kd_loss(KDLossSpec("hellinger", _hellinger, hyperparameters={"weight": "kd_weight"}))
    student, teacher, labels = logits
    p_s, p_t = torch.softmax(student / 2, -1), torch.softmax(teacher / 2, -1)
    per_token = 0.5 * (p_s.sqrt() - p_t.sqrt()).pow(2).sum(-1)
    valid = (labels != -100).to(F64)
    expected = 4 * (per_token * valid).sum() / valid.sum()
    assert_close(kd_loss(student, teacher, "hellinger", labels=labels, temperature=2.0), expected)
    chunked = chunked_kd_loss(student, teacher, "hellinger", labels=labels, temperature=2.0, chunk_size=3)
    assert_close(chunked, expected)
    for got, want in zip(grads(chunked, [student]), grads(expected, [student])):
        assert_close(got, want)

    hs, ws, ht, wt = hidden_inputs()
    fused = chunked_distill_loss_from_hidden(hs, ws, ht, wt, "hellinger", chunk_size=4, weight=3.0)
    assert_close(fused.loss, 3.0 * kd_loss(hs @ ws.T, ht @ wt.T, "hellinger"))

    config = DistillConfig(**BASE, kd_loss="hellinger", kd_weight=0.5)
    assert kd_loss_spec(config.kd_loss).settings(config) == {"weight": 0.5}
    assert "hellinger" in _choices("--kd-loss")
    model = zoo_model("llama")
    assert _fused_head(config, model, model, fsdp=False)[0] is not None  # the trainer fuses it too


def test_a_registered_intermediate_loss_is_accepted(scratch_registry):
    @register_intermediate_loss("l1")
    def l1(student, teacher, *, labels=None, mask=None, ignore_index=-100, num_items=None):
        return (student - teacher).abs().mean()

    states = [torch.randn(2, 3, V), torch.randn(2, 3, V)]
    assert (
        mapped_hidden_loss(states, states[::-1], [(0, 0)], kind="l1") == (states[0] - states[1]).abs().mean()
    )
    assert DistillConfig(**BASE, intermediate="l1").intermediate == "l1"
    assert "l1" in _choices("--intermediate")
    with pytest.raises(ValueError, match="choose one of cosine, mse, l1"):
        mapped_hidden_loss(states, states, [(0, 0)], kind="l2")
