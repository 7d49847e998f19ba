"""Activation importance: planted weak units rank last, groups are respected, results are reproducible."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from nemocompress import api
from nemocompress.arch import get_adapter
from nemocompress.cli import main
from nemocompress.importance.activation import ActivationCollector
from nemocompress.importance.options import ImportanceOptions
from nemocompress.importance.scoring import activation_scores, flap_scores
from nemocompress.prune.minitron import plan_from_targets, top_units
from nemocompress.prune.plan import Plan
from nemocompress.prune.slice import slice_model
from nemocompress.zoo import save_zoo_checkpoint, zoo_model

BATCHES = [torch.randint(2, 98, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _scores(model, **kwargs):
    adapter = get_adapter(model.config)
    stats = ActivationCollector(model, adapter).collect(BATCHES)
    return activation_scores(adapter.score_sites(model.config), stats, **kwargs), stats


def test_planted_weak_units_rank_last():
    model = zoo_model("nemotron_h-hybrid")
    p = model.config.mamba_head_dim
    inner = model.config.mamba_num_heads * p
    with torch.no_grad():
        model.model.layers[0].mixer.in_proj.weight[inner + 6 * p : inner + 7 * p] *= 1e-4  # x of Mamba head 6
        model.model.layers[3].mixer.in_proj.weight[inner + 2 :: p][:8] *= 1e-4  # channel 2 of every x head
        model.model.layers[2].mixer.up_proj.weight[40] *= 1e-4  # MLP neuron 40
        model.model.layers[4].mixer.experts.down_proj[1] *= 1e-4  # expert 1's output
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") and param.shape == (64,):
                param[11] *= 1e-4  # hidden channel 11 at every norm
    scores, _ = _scores(model)
    assert scores["layers.0.mamba_heads"].argmin() == 6
    assert scores["layers.3.mamba_head_dim"].argmin() == 2
    assert scores["layers.2.mlp"].argmin() == 40
    assert scores["layers.4.experts"].argmin() == 1
    assert scores["hidden"].argmin() == 11


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "nemotron_h-latent-moe", "qwen3_moe", "mixtral"])
def test_expert_statistics_come_from_the_forward_without_changing_it(name):
    """Collection computes the experts once and takes REAP and the neuron moments on the way: the logits
    stay those of the plain model and the statistics equal a per-expert recomputation."""
    model = zoo_model(name)
    adapter = get_adapter(model.config)
    (site,) = [s for s in adapter.score_sites(model.config) if s.how == "experts"][:1]
    experts = model.get_submodule(site.module)
    routed = []
    hook = experts.register_forward_pre_hook(lambda m, args: routed.append(args))
    with torch.no_grad():
        plain = [model(b, use_cache=False).logits for b in BATCHES]
    hook.remove()
    with ActivationCollector(model, adapter) as collector, torch.no_grad():
        for b, expected in zip(BATCHES, plain, strict=True):
            torch.testing.assert_close(model(b, use_cache=False).logits, expected, rtol=1e-5, atol=1e-5)
    up, down = getattr(experts, site.experts.up), getattr(experts, site.experts.down)
    reap, neurons = torch.zeros(up.shape[0]), torch.zeros(down.shape[-1])
    with torch.no_grad():
        for hidden, index, weights in routed:
            for token, e in (index < up.shape[0]).nonzero().tolist():
                expert = int(index[token, e])
                h = F.linear(hidden[token], up[expert])
                h = (
                    experts._apply_gate(h[None])[0] if site.experts.gated else experts.act_fn(h)
                )  # transformers
                reap[expert] += weights[token, e] * F.linear(h, down[expert]).norm()
                neurons += h.abs()
    stats = collector.stats[site.key]
    torch.testing.assert_close(stats["reap"].float(), reap, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats["sum_a"].float(), neurons, rtol=1e-4, atol=1e-5)
    assert stats["routed"].sum() == sum(r[1].numel() for r in routed) == stats["n"]


class _OtherExperts(torch.nn.Module):
    """Fused SwiGLU experts with their own names: forward(x, experts, probs), weights w_in / w_out, act."""

    def __init__(self, num_experts=3, d=4, width=5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w_in = torch.nn.Parameter(torch.randn(num_experts, 2 * width, d, generator=g))
        self.w_out = torch.nn.Parameter(torch.randn(num_experts, d, width, generator=g))
        self.act = torch.nn.functional.gelu

    def forward(self, x, experts, probs):
        out = torch.zeros_like(x)
        for token, slot in torch.cartesian_prod(torch.arange(x.shape[0]), torch.arange(experts.shape[1])):
            e = int(experts[token, slot])
            gate, up = F.linear(x[token], self.w_in[e]).chunk(2)
            out[token] += probs[token, slot] * F.linear(self.act(gate) * up, self.w_out[e])
        return out


def test_experts_are_run_as_their_call_describes():
    """Names, argument order, activation and gating all come from the site: another layout works too."""
    from nemocompress.arch import Adapter, ExpertsCall, ScoreSite, Segment

    class Model(torch.nn.Module):
        config = None

        def __init__(self):
            super().__init__()
            self.experts = _OtherExperts()

    call = ExpertsCall(args=("x", "experts", "probs"), up="w_in", down="w_out", activation="act")
    site = ScoreSite(
        "experts", "input", (Segment(3, outer="e"), Segment(5, outer="f")), how="experts", experts=call
    )

    class OneSite(Adapter):
        def score_sites(self, config):
            return [site]

    model, g = Model(), torch.Generator().manual_seed(1)
    x, probs = torch.randn(6, 4, generator=g), torch.rand(6, 2, generator=g)
    experts = torch.tensor([[0, 2], [2, 0], [0, 2], [0, 2], [2, 0], [0, 2]])
    with torch.no_grad():
        expected = model.experts(x, experts, probs)
        with ActivationCollector(model, OneSite()) as collector:
            torch.testing.assert_close(model.experts(x, experts, probs), expected)
            torch.testing.assert_close(model.experts(x, experts=experts, probs=probs), expected)
    stats = collector.stats[site.key]
    assert stats["routed"].tolist() == [12, 0, 12] and stats["n"] == 24
    assert (stats["reap"][[0, 2]] > 0).all() and stats["reap"][1] == 0


@pytest.mark.parametrize("width", [8, 5])  # 5 floats a row: torch's grouped kernel refuses it, the loop runs
def test_per_expert_linear_equals_one_matmul_per_expert(width):
    from nemocompress.importance.activation import _per_expert_linear

    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(20, width, generator=g), torch.randn(3, 6, width, generator=g)
    counts = torch.tensor([5, 0, 15])
    expected = torch.cat([x[:5] @ weight[0].T, x[5:] @ weight[2].T])
    torch.testing.assert_close(_per_expert_linear(x, weight, counts), expected)


def test_mamba_heads_are_kept_per_group_and_never_move():
    """Real scores whose global top 4 Mamba heads all lie in group 0 (their x rows made 10x stronger): the plan
    still keeps the best 2 of each group of 4."""
    model = zoo_model("nemotron_h-hybrid")
    p, inner = model.config.mamba_head_dim, model.config.mamba_num_heads * model.config.mamba_head_dim
    with torch.no_grad():
        model.model.layers[0].mixer.in_proj.weight[inner : inner + 4 * p] *= 10  # x of heads 0-3 (group 0)
    scores, _ = _scores(model)
    heads = scores["layers.0.mamba_heads"]
    assert sorted(heads.topk(4).indices.tolist()) == [0, 1, 2, 3], "the planted heads must lead globally"
    plan = plan_from_targets(model.config, {"mamba_num_heads": 4}, scores)
    group0, group1 = heads[:4].topk(2).indices.tolist(), (heads[4:].topk(2).indices + 4).tolist()
    assert plan.kept["layers.0.mamba_heads"] == sorted(group0 + group1)
    naive = plan_from_targets(model.config, {"mamba_num_heads": 4}, scores, group_aware=False)
    assert naive.kept["layers.0.mamba_heads"] == [0, 1, 2, 3]


def test_scores_are_deterministic():
    model = zoo_model("qwen3_moe")
    a, stats_a = _scores(model)
    b, stats_b = _scores(model)
    for key in stats_a:
        for name in stats_a[key]:
            assert torch.equal(stats_a[key][name], stats_b[key][name])


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "mamba2", "qwen3_moe", "mixtral", "llama"])
def test_every_axis_gets_a_score_from_every_method(name):
    model = zoo_model(name)
    adapter = get_adapter(model.config)
    stats = ActivationCollector(model, adapter, token_moments=True).collect(BATCHES)
    width_axes = {a.name: a.size for a in adapter.axes(model.config) if a.kind != "depth"}
    for scores in (
        activation_scores(adapter.score_sites(model.config), stats),
        activation_scores(adapter.score_sites(model.config), stats, batch_agg="var", choices={"mamba": "z"}),
        flap_scores(adapter.score_sites(model.config), stats),
    ):
        assert {k: len(v) for k, v in scores.items()} == width_axes


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    save_zoo_checkpoint("nemotron_h-hybrid", root / "model")
    data = root / "text.txt"
    data.write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(400))
    )
    return root


def _importance(calibrated, out, *flags, data=None) -> int:
    """``nemocompress importance`` of the calibrated model into ``out`` (exit code)."""
    data = data or calibrated / "text.txt"
    return main(["importance", str(calibrated / "model"), "--data", str(data), "-o", str(out), *flags])


def test_cached_scores_give_the_same_plan(calibrated, tmp_path):
    """prune --scores and prune --data make the same plan; that plan keeps the top units of the saved scores,
    and the checkpoint written equals slicing the loaded parent with it in memory."""
    model, data = calibrated / "model", calibrated / "text.txt"
    export = {
        "hidden_size": 48,
        "mamba_num_heads": 4,
        "mamba_head_dim": 6,
        "ffn_hidden_size": 64,
        "num_layers": 5,
    }
    flags = ["--samples", "6", "--seq-len", "32"]
    assert _importance(calibrated, tmp_path / "scores", *flags) == 0
    assert (tmp_path / "scores" / "plots" / "layers_nmse.png").is_file()
    export_json = json.dumps(export)
    assert (
        main(
            [
                "prune",
                str(model),
                "-o",
                str(tmp_path / "a"),
                "--scores",
                str(tmp_path / "scores"),
                "--export-config",
                export_json,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                str(model),
                "-o",
                str(tmp_path / "b"),
                "--data",
                str(data),
                *flags,
                "--export-config",
                export_json,
            ]
        )
        == 0
    )
    plan_a = json.loads((tmp_path / "a" / "nemocompress_plan.json").read_text())
    plan_b = json.loads((tmp_path / "b" / "nemocompress_plan.json").read_text())
    assert plan_a == plan_b
    plan = Plan.from_dict(plan_a)
    found = api.load_importance(tmp_path / "scores", model)
    units, layers = found.unit_scores(), found.layer_scores()["nmse"]
    assert plan.kept["hidden"] == top_units(units["hidden"], 48)  # axes not re-scored: the saved ranking
    assert plan.kept["layers.2.mlp"] == top_units(units["layers.2.mlp"], 64)
    assert plan.kept["layers"] == top_units(layers, 5)
    parent = AutoModelForCausalLM.from_pretrained(model).eval()
    expected = slice_model(parent, plan).state_dict()
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(written[key], value), key


def test_head_metrics_are_computed_only_when_chosen(calibrated, tmp_path, capsys):
    """kl and lm_loss run the LM head per layer: scores have them only when asked, and say so when not."""
    model = calibrated / "model"
    flags = ["--samples", "4", "--seq-len", "16"]
    prune = ["prune", str(model), "--export-config", '{"num_layers": 5}', "--layer-metric", "kl", "--scores"]
    assert _importance(calibrated, tmp_path / "cheap", *flags) == 0
    assert main([*prune, str(tmp_path / "cheap"), "-o", str(tmp_path / "a")]) == 2
    assert "recompute them with `--layer-metric kl`" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    scores = tmp_path / "with-kl"
    assert _importance(calibrated, scores, "--layer-metric", "kl", *flags) == 0
    assert set(api.load_importance(scores, model).layer_scores(1)) == {"nmse", "hidden_mse", "cosine", "kl"}
    assert main([*prune, str(scores), "-o", str(tmp_path / "b")]) == 0
    # the spelling: --batch-size for the calibration batch, hyphenated metric names
    spelled = ["--layer-metric", "lm-loss", "--batch-size", "2"]
    assert _importance(calibrated, tmp_path / "lm", *spelled, *flags) == 0
    loaded = api.load_importance(tmp_path / "lm", model, ImportanceOptions(layer_metric="lm_loss"))
    assert "lm_loss" in loaded.layer_scores(1)
    assert loaded.artifact.meta["settings"]["batch_size"] == 2


def test_scores_for_another_model_are_refused(calibrated, tmp_path, capsys):
    save_zoo_checkpoint("llama", tmp_path / "other")
    assert _importance(calibrated, tmp_path / "s", "--samples", "4", "--seq-len", "16") == 0
    code = main(
        [
            "prune",
            str(tmp_path / "other"),
            "-o",
            str(tmp_path / "o"),
            "--scores",
            str(tmp_path / "s"),
            "--export-config",
            '{"hidden_size": 32}',
        ]
    )
    assert code == 2
    assert "another model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content,message",
    [(None, "no text files"), ("", "empty"), ("short", "fewer than one sample")],
)
def test_bad_calibration_data(calibrated, tmp_path, capsys, content, message):
    data = tmp_path / "data"
    data.mkdir()
    if content is not None:
        (data / "a.txt").write_text(content)
    assert _importance(calibrated, tmp_path / "s", "--seq-len", "64", data=data) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_activation_needs_data_or_scores(calibrated, tmp_path, capsys):
    code = main(
        [
            "prune",
            str(calibrated / "model"),
            "-o",
            str(tmp_path / "o"),
            "--importance",
            "activation",
            "--export-config",
            '{"hidden_size": 32}',
        ]
    )
    assert code == 2
    assert "--scores" in capsys.readouterr().err


def test_api_importance_without_output_returns_scores(calibrated):
    options = api.ImportanceOptions(samples=4, seq_len=16)
    result = api.importance(calibrated / "model", calibrated / "text.txt", options=options, progress=False)
    assert "hidden" in result.unit_scores()
    assert "nmse" in result.layer_scores()


def _top_half_overlap(scores: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of the reference's top half (the units a 50% prune keeps) that ``scores`` also ranks there."""
    k = max(1, len(reference) // 2)
    kept = set(scores.topk(k).indices.tolist()) & set(reference.topk(k).indices.tolist())
    return len(kept) / k


# bfloat16 keeps 8 mantissa bits: per-unit scores move by up to ~13% on this model, but pruning needs the
# ranking. Thresholds, with what was measured (nemotron_h-hybrid, 8 x 32 tokens): every axis keeps at least
# 90% of float32's top half (worst measured 47/48 = 0.979, layers.5.mlp); every layer metric keeps at least
# 2 of float32's 3 most important layers (measured 3 of 3) and drops the same least important layer first.
BF16_UNIT_OVERLAP, BF16_LAYER_OVERLAP = 0.9, 2 / 3


def test_half_precision_calibration_stays_close_to_float32(calibrated, tmp_path, capsys):
    """--dtype runs the model in half precision (statistics still summed in float32/float64): float16 stays
    within 2% per unit, bfloat16 ranks units and layers as float32 does (top-half overlap, above)."""
    model = calibrated / "model"
    flags = ["--samples", "8", "--seq-len", "32"]
    found = {}
    for dtype in ("float32", "bfloat16", "float16"):
        assert _importance(calibrated, tmp_path / dtype, *flags, "--dtype", dtype) == 0
        found[dtype] = api.load_importance(tmp_path / dtype, model)
        assert found[dtype].artifact.meta["settings"]["dtype"] == dtype
    exact_units, exact_layers = found["float32"].unit_scores(), found["float32"].layer_scores()
    for dtype in ("bfloat16", "float16"):
        units = found[dtype].unit_scores()
        error = max(((units[k] - v).abs() / v.abs().clamp_min(1e-6)).max() for k, v in exact_units.items())
        assert error > 0, dtype  # it did run in half precision
    units, layers = found["float16"].unit_scores(), found["float16"].layer_scores()
    for k, v in exact_units.items():
        assert ((units[k] - v).abs() / v.abs().clamp_min(1e-6)).max() < 0.02, ("float16", k)
    for metric, v in exact_layers.items():
        assert ((layers[metric] - v).abs() / v.abs()).max() < 0.02, ("float16", metric)
    units, layers = found["bfloat16"].unit_scores(), found["bfloat16"].layer_scores()
    for k, v in exact_units.items():
        assert _top_half_overlap(units[k], v) >= BF16_UNIT_OVERLAP, ("bfloat16", k)
    for metric, v in exact_layers.items():
        assert _top_half_overlap(layers[metric], v) >= BF16_LAYER_OVERLAP, ("bfloat16", metric)
        assert layers[metric].argmin() == v.argmin(), ("bfloat16", metric)
    assert _importance(calibrated, tmp_path / "bad", *flags, "--device", "gpu0") == 2
    assert "device must be a torch device" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_mamba_source_flag_is_recorded_as_the_chosen_source(calibrated, tmp_path, capsys):
    """Unset and the default name the same run (so --resume matches them); another source changes the
    Mamba scores only; a model without Mamba refuses the flag."""
    model, flags = calibrated / "model", ["--samples", "4", "--seq-len", "16"]
    assert _importance(calibrated, tmp_path / "unset", *flags) == 0
    assert _importance(calibrated, tmp_path / "x", "--mamba-source", "x", *flags) == 0
    assert _importance(calibrated, tmp_path / "z", "--mamba-source", "z", *flags) == 0
    settings = {
        name: api.load_importance(tmp_path / name, model).artifact.meta["settings"]
        for name in ("unset", "x", "z")
    }
    assert settings["unset"] == settings["x"] and settings["x"]["sources"] == {"mamba": "x"}
    assert settings["z"]["sources"] == {"mamba": "z"}
    default = api.load_importance(tmp_path / "z", model).unit_scores()
    z = api.load_importance(tmp_path / "z", model, ImportanceOptions(sources={"mamba": "z"})).unit_scores()
    assert not torch.equal(default["layers.0.mamba_heads"], z["layers.0.mamba_heads"])
    assert torch.equal(default["layers.2.mlp"], z["layers.2.mlp"])
    meta_file = tmp_path / "z" / "meta.json"  # scores saved before sources: settings said mamba_source
    meta = json.loads(meta_file.read_text())
    meta["settings"] = {k: v for k, v in meta["settings"].items() if k != "sources"} | {"mamba_source": "z"}
    meta_file.write_text(json.dumps(meta))
    old = api.load_importance(tmp_path / "z", model).unit_scores()
    assert all(torch.equal(old[k], default[k]) for k in default)
    save_zoo_checkpoint("llama", tmp_path / "llama")
    args = ["importance", str(tmp_path / "llama"), "--data", str(calibrated / "text.txt"), *flags]
    assert main([*args, "--mamba-source", "z", "-o", str(tmp_path / "l")]) == 2
    assert "llama model has no 'mamba' score sites" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()
