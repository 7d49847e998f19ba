"""Layer importance (importance/depth.py): every metric of every window equals the model without it, computed
explicitly; an identity layer scores zero; nmse through the head-input identity equals nmse of logits; sums
add across batches; and the layer-metric registry (validation, the CLI and the default calibration read it)."""

import pytest
import torch
import torch.nn.functional as F

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


def _identity_layer(model, name):
    """Zero the output projections of layer 2, so that the block returns its input."""
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if ".layers.2." in pname and any(k in pname for k in ("down_proj", "o_proj", "out_proj")):
                param.zero_()


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "llama"])
def test_layer_metrics_are_zero_for_an_identity_layer(name):
    model = zoo_model(name)
    _identity_layer(model, name)
    scores = finalize_layer_scores(layer_stats(model, get_adapter(model.config), BATCHES))
    assert set(scores) == set(LAYER_METRICS)
    for metric, values in scores.items():
        assert abs(values[2]) < 1e-6, metric
        assert values.abs().max() > 1e-3, metric


class _SoftCapped(torch.nn.Linear):
    """An LM head whose logits are not a linear map of its input (Gemma-style soft cap)."""

    def forward(self, x):
        return 3.0 * torch.tanh(super().forward(x) / 3.0)


@pytest.mark.parametrize("head", ["linear", "soft-capped"])
def test_nmse_without_logits_equals_nmse_of_logits(head):
    """nmse alone skips the LM head per window (d^T W^T W d); it must equal nmse computed on logits."""
    model = zoo_model("llama")
    adapter = get_adapter(model.config)
    if head == "soft-capped":
        capped = _SoftCapped(model.config.hidden_size, model.config.vocab_size, bias=False)
        capped.weight = model.lm_head.weight
        model.lm_head = capped
    alone = finalize_layer_scores(layer_stats(model, adapter, BATCHES, metrics=("nmse",)))
    assert set(alone) == {"nmse"}
    with torch.no_grad():
        full = torch.cat([model(b, use_cache=False).logits for b in BATCHES])
        for i in range(model.config.num_hidden_layers):
            with bypass_layers(model, adapter, [i]):
                part = torch.cat([model(b, use_cache=False).logits for b in BATCHES])
            expected = (full - part).pow(2).sum() / full.pow(2).sum()
            torch.testing.assert_close(alone["nmse"][i], expected, rtol=1e-4, atol=1e-7)


def test_layer_metrics_subsets_equal_all_metrics():
    model = zoo_model("nemotron_h-hybrid")
    adapter = get_adapter(model.config)
    every = finalize_layer_scores(layer_stats(model, adapter, BATCHES))
    for subset in (("kl",), ("hidden_mse", "cosine"), ("lm_loss", "nmse")):
        some = finalize_layer_scores(layer_stats(model, adapter, BATCHES, metrics=subset))
        assert set(some) == set(subset)
        for metric in subset:
            torch.testing.assert_close(some[metric], every[metric], rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="unknown layer metrics"):
        layer_stats(model, adapter, BATCHES, metrics=("mse",))


def _run(model, adapter, without=()):
    """Over BATCHES with the layers ``without`` bypassed: logits, the LM head's input, and every layer's input
    and output (layer index -> [tokens of all batches, H]), all in float32."""
    layers = model.get_submodule(adapter.layers_prefix)
    head: list[torch.Tensor] = []
    inputs: dict[int, list] = {i: [] for i in range(len(layers))}
    outputs: dict[int, list] = {i: [] for i in range(len(layers))}

    def take_input(i):
        return lambda m, args, kwargs: inputs[i].append(args[0] if args else kwargs["hidden_states"])

    def take_output(i):
        return lambda m, args, out: outputs[i].append(out[0] if isinstance(out, tuple) else out)

    hooks = [adapter.lm_head(model).register_forward_pre_hook(lambda m, args: head.append(args[0]))]
    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(take_input(i), with_kwargs=True))
        hooks.append(layer.register_forward_hook(take_output(i)))
    try:
        with bypass_layers(model, adapter, without), torch.no_grad():
            logits = torch.cat([model(b, use_cache=False).logits for b in BATCHES])
    finally:
        for h in hooks:
            h.remove()
    by_layer = {i: torch.cat(v).float() for i, v in inputs.items()}
    return (
        logits.float(),
        torch.cat(head).float(),
        by_layer,
        {i: torch.cat(v).float() for i, v in outputs.items()},
    )


def _explicit(model, adapter, window, dropped=()):
    """Every metric of the model without ``window`` (and ``dropped``) against the model without ``dropped``."""
    full, full_h, inputs, outputs = _run(model, adapter, dropped)
    part, part_h, _, _ = _run(model, adapter, (*dropped, *window))
    labels = torch.cat(BATCHES)[:, 1:]
    log_full, log_part = full.log_softmax(-1), part.log_softmax(-1)

    def ce(logp):  # next-token cross-entropy per position
        return -logp[:, :-1].gather(-1, labels[..., None])[..., 0]

    cos = F.cosine_similarity(inputs[window[0]], outputs[window[-1]], dim=-1)
    return {
        "nmse": (full - part).pow(2).sum() / full.pow(2).sum(),
        "kl": (log_full.exp() * (log_full - log_part)).sum(-1).mean(),
        "hidden_mse": (full_h - part_h).pow(2).mean(),
        "lm_loss": (ce(log_part) - ce(log_full)).mean(),
        "cosine": (1 - cos).mean(),
    }


def _assert_windows_are_explicit(model, adapter, window: int, dropped=()) -> dict[str, torch.Tensor]:
    """layer_stats' scores of every window of ``window`` remaining layers equal :func:`_explicit`."""
    scores = finalize_layer_scores(layer_stats(model, adapter, BATCHES, window=window, dropped=dropped))
    remaining = [i for i in range(adapter.num_layers(model.config)) if i not in dropped]
    assert set(scores) == set(LAYER_METRICS)
    assert all(len(v) == len(remaining) - window + 1 for v in scores.values())
    for w in range(len(remaining) - window + 1):
        expected = _explicit(model, adapter, remaining[w : w + window], dropped)
        for metric, value in expected.items():
            torch.testing.assert_close(
                scores[metric][w], value.float(), rtol=1e-4, atol=1e-6, msg=f"{metric}[{w}]"
            )
    return scores


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "llama"])
@pytest.mark.parametrize("window", [1, 2])
def test_every_metric_of_every_window_equals_the_model_without_it(name, window):
    model = zoo_model(name)
    scores = _assert_windows_are_explicit(model, get_adapter(model.config), window)
    assert all((scores[m] > 0).all() for m in ("nmse", "kl", "hidden_mse", "cosine")), "no layer is idle"


def test_dropped_layers_are_gone_before_windows_are_scored():
    """Iterative ranking's step: windows span the remaining layers, against the model without the dropped."""
    model = zoo_model("nemotron_h-hybrid")
    scores = _assert_windows_are_explicit(model, get_adapter(model.config), 2, dropped=[2])
    assert all(len(v) == 4 for v in scores.values())  # windows of 2 over layers 0, 1, 3, 4, 5


def test_sums_add_across_batches():
    """What each process of a multi-process calibration returns: sums that add up to the one-process sums."""
    model = zoo_model("qwen3_moe")
    adapter = get_adapter(model.config)
    whole = layer_stats(model, adapter, BATCHES)
    parts = [layer_stats(model, adapter, [b]) for b in BATCHES]
    assert whole.keys() == parts[0].keys()
    for key, value in whole.items():
        torch.testing.assert_close(sum(p[key] for p in parts), value, rtol=1e-10, atol=0, msg=key)
