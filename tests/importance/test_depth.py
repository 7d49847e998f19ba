"""The layer-metric registry: validation, the CLI and the default calibration read it."""

import pytest
import torch

from nemocompress.arch import get_adapter
from nemocompress.arch.masking import bypass_layers
from nemocompress.cli import build_parser
from nemocompress.errors import NemocompressError
from nemocompress.importance.depth import (
    LAYER_METRICS,
    default_layer_metrics,
    finalize_layer_scores,
    layer_stats,
    register_layer_metric,
)
from nemocompress.importance.options import ImportanceOptions
from nemocompress.zoo import zoo_model

BATCHES = [torch.randint(2, 98, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]


@pytest.fixture
def toy_metrics():
    """``hidden_l1`` (mean |change| of the last hidden state) and ``top1`` (changed argmax, LM head per layer)."""

    @register_layer_metric("hidden_l1", lambda full: torch.tensor(full.hidden.numel()))
    def hidden_l1(w):
        return w.hidden_change.abs().sum()

    @register_layer_metric("top1", lambda full: torch.tensor(full.labels.numel()), head_per_layer=True)
    def top1(w):
        return (w.logits[:, :-1].argmax(-1) != w.full.logits[:, :-1].argmax(-1)).sum()

    yield
    del LAYER_METRICS["hidden_l1"], LAYER_METRICS["top1"]


def test_head_metrics_are_named_by_the_registry():
    assert list(LAYER_METRICS) == ["nmse", "kl", "hidden_mse", "cosine", "lm_loss"]
    assert [m for m, v in LAYER_METRICS.items() if v.head_per_layer] == ["kl", "lm_loss"]
    assert default_layer_metrics() == ("nmse", "hidden_mse", "cosine")
    assert default_layer_metrics("kl") == ("nmse", "hidden_mse", "cosine", "kl")
    assert default_layer_metrics("nmse") == default_layer_metrics()


def test_a_registered_metric_is_computed_validated_and_offered(toy_metrics):
    model = zoo_model("llama")
    adapter = get_adapter(model.config)
    assert default_layer_metrics() == ("nmse", "hidden_mse", "cosine", "hidden_l1")
    scores = finalize_layer_scores(
        layer_stats(model, adapter, BATCHES, metrics=("hidden_l1", "top1", "nmse"))
    )
    assert set(scores) == {"hidden_l1", "top1", "nmse"}
    with torch.no_grad():
        full = torch.cat([model(b, use_cache=False).logits[:, :-1].argmax(-1) for b in BATCHES])
        for i in range(model.config.num_hidden_layers):
            with bypass_layers(model, adapter, [i]):
                part = torch.cat([model(b, use_cache=False).logits[:, :-1].argmax(-1) for b in BATCHES])
            assert scores["top1"][i] == (part != full).float().mean()
    assert (scores["hidden_l1"] > 0).all()
    ImportanceOptions(layer_metric="top1")
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    (flag,) = [a for a in sub.choices["importance"]._actions if "--layer-metric" in a.option_strings]
    assert "top1" in flag.choices and "hidden-l1" in flag.metavar
    with pytest.raises(ValueError, match="already registered"):
        register_layer_metric("top1", lambda full: full.logits.sum())(lambda w: w.logits.sum())


def test_unregistered_metric_is_refused():
    with pytest.raises(
        NemocompressError, match="layer_metric must be one of nmse, kl, hidden_mse, cosine, lm_loss"
    ):
        ImportanceOptions(layer_metric="top1")
