"""The ranking registry: names, validation and the CLI read it; a new ranking is one registered function;
one default calibration serves every built-in ranking; scores saved without token moments still work."""

import json

import pytest
import safetensors.torch
import torch
from helpers import write_calibration

from nemocompress import api
from nemocompress.arch import get_adapter
from nemocompress.cli import build_parser, main
from nemocompress.errors import NemocompressError
from nemocompress.importance.activation import ActivationCollector
from nemocompress.importance.options import ImportanceOptions
from nemocompress.importance.rankings import RANKINGS, register_ranking
from nemocompress.importance.scoring import activation_scores
from nemocompress.zoo import zoo_model

BATCHES = [torch.randint(2, 98, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(3)]
FLAGS = ["--samples", "4", "--seq-len", "16"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = write_calibration(tmp_path_factory.mktemp("rank"))
    assert (
        main(
            [
                "importance",
                str(root / "model"),
                "--data",
                str(root / "text.txt"),
                "-o",
                str(root / "s"),
                *FLAGS,
            ]
        )
        == 0
    )
    return root


@pytest.fixture
def toy_ranking():
    """``toy``: the mean activation of each unit, registered for one test and removed after it."""

    @register_ranking("toy", needs=("activations",))
    def toy(inputs, options, restrict=None):
        return activation_scores(inputs.sites, inputs.stats, "mean", inputs.choices, options.expert_metric)

    yield RANKINGS["toy"]
    del RANKINGS["toy"]


def test_registry_round_trip(toy_ranking):
    assert list(RANKINGS)[:4] == ["activation", "flap", "magnitude", "random"]
    assert toy_ranking.needs == ("activations",) and toy_ranking.needs_data and not toy_ranking.restricts
    assert RANKINGS["activation"].restricts and not RANKINGS["flap"].restricts
    assert [r for r in RANKINGS if not RANKINGS[r].needs_data] == ["magnitude", "random"]
    assert ImportanceOptions(ranking="toy").ranking_entry is toy_ranking
    for command in ("prune", "importance"):
        (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
        (flag,) = [a for a in sub.choices[command]._actions if "--importance" in a.option_strings]
        assert list(flag.choices) == list(RANKINGS)
    with pytest.raises(ValueError, match="already registered"):
        register_ranking("toy")(lambda inputs, options, restrict=None: {})
    with pytest.raises(ValueError, match="unknown statistics"):
        register_ranking("other", needs=("gradients",))


def test_removed_ranking_is_refused_by_the_options(toy_ranking):
    del RANKINGS["toy"]
    try:
        with pytest.raises(
            NemocompressError, match="ranking must be one of activation, flap, magnitude, random"
        ):
            ImportanceOptions(ranking="toy")
    finally:
        RANKINGS["toy"] = toy_ranking


def test_a_registered_ranking_prunes_through_the_api(calibrated, tmp_path, toy_ranking):
    """The toy ranking is used by name, from saved scores: its plan is the top units of its own scores."""
    model, export = calibrated / "model", {"ffn_hidden_size": 40, "hidden_size": 48}
    options = ImportanceOptions(ranking="toy")
    result = api.prune(model, tmp_path / "o", export, options, scores=calibrated / "s", progress=False)
    scores = api.load_importance(calibrated / "s", model, options).unit_scores()
    assert result.plan.kept["layers.2.mlp"] == sorted(scores["layers.2.mlp"].topk(40).indices.tolist())
    assert result.plan.kept["hidden"] == sorted(scores["hidden"].topk(48).indices.tolist())
    default = api.prune(model, tmp_path / "a", export, scores=calibrated / "s", progress=False)
    assert default.plan.kept["layers.2.mlp"] != result.plan.kept["layers.2.mlp"]  # mean is not l2 here


@pytest.mark.parametrize("which", ["a slice of a wider output", "an output projection's input"])
def test_default_collection_has_exact_token_moments(which):
    """The hooks' token moments (summed per sample, fused) equal moments taken over the captured tokens."""
    model = zoo_model("nemotron_h-hybrid")
    adapter = get_adapter(model.config)
    sites = adapter.score_sites(model.config)
    site = next(s for s in sites if (s.start > 0 if which.startswith("a slice") else s.weight is not None))
    captured = []
    module = model.get_submodule(site.module)
    hook = module.register_forward_hook(
        lambda m, args, out: captured.append(out if site.where == "output" else args[0])
    )
    stats = ActivationCollector(model, adapter).collect(BATCHES)[site.key]
    hook.remove()
    tokens = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured]).double()
    tokens = tokens[:, site.start : site.start + site.width]
    assert stats["n_tok"] == len(tokens)
    torch.testing.assert_close(stats["tok_sum"], tokens.sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["tok_sumsq"], tokens.pow(2).sum(0), rtol=1e-5, atol=1e-5)
    plain = ActivationCollector(model, adapter, token_moments=False).collect(BATCHES)[site.key]
    assert "n_tok" not in plain
    for name in ("sum_a", "sum_a2", "n"):
        torch.testing.assert_close(stats[name], plain[name], rtol=1e-6, atol=1e-8)
    l2 = ActivationCollector(model, adapter, seq_agg="l2").collect(BATCHES)[site.key]
    per_sample = torch.cat(
        [x[..., site.start : site.start + site.width].double().pow(2).mean(1) for x in captured]
    )
    torch.testing.assert_close(l2["sum_a2"], per_sample.sum(0), rtol=1e-5, atol=1e-6)


def _plan(path):
    return json.loads((path / "nemocompress_plan.json").read_text())["kept"]


def test_flap_from_default_scores_equals_flap_calibrated_for_it(calibrated, tmp_path):
    """`prune --importance flap --scores S` on a plain `importance` run = calibrating with flap chosen."""
    model, data = calibrated / "model", calibrated / "text.txt"
    prune = [
        "prune",
        str(model),
        "--importance",
        "flap",
        "--export-config",
        '{"hidden_size": 48, "ffn_hidden_size": 40}',
    ]
    assert main([*prune, "--scores", str(calibrated / "s"), "-o", str(tmp_path / "a")]) == 0
    assert main([*prune, "--data", str(data), *FLAGS, "-o", str(tmp_path / "b")]) == 0
    assert _plan(tmp_path / "a") == _plan(tmp_path / "b")
    assert (
        main(
            [
                "importance",
                str(model),
                "--data",
                str(data),
                *FLAGS,
                "--importance",
                "flap",
                "-o",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
    flap = ImportanceOptions(ranking="flap")
    for key, value in api.load_importance(tmp_path / "f", model, flap).unit_scores().items():
        assert torch.equal(api.load_importance(calibrated / "s", model, flap).unit_scores()[key], value)


def test_scores_without_token_moments_rank_by_activation_and_name_the_command_for_flap(
    calibrated, tmp_path, capsys
):
    """Scores saved before token moments were collected by default: activation ranks as before, FLAP says
    which command adds them."""
    model, old = calibrated / "model", tmp_path / "old"
    old.mkdir()
    tensors = safetensors.torch.load_file(str(calibrated / "s" / "scores.safetensors"))
    kept = {k: v for k, v in tensors.items() if k.rsplit("/", 1)[1] not in ("tok_sum", "tok_sumsq", "n_tok")}
    assert len(kept) < len(tensors)
    safetensors.torch.save_file(kept, str(old / "scores.safetensors"))
    (old / "meta.json").write_text((calibrated / "s" / "meta.json").read_text())
    new, before = api.load_importance(calibrated / "s", model), api.load_importance(old, model)
    for key, value in new.unit_scores().items():
        assert torch.equal(before.unit_scores()[key], value)
    export = ["--export-config", '{"hidden_size": 48}']
    assert main(["prune", str(model), "--scores", str(old), *export, "-o", str(tmp_path / "a")]) == 0
    flap = [
        "prune",
        str(model),
        "--scores",
        str(old),
        "--importance",
        "flap",
        *export,
        "-o",
        str(tmp_path / "b"),
    ]
    assert main(flap) == 2
    err = capsys.readouterr().err
    assert "no token moments" in err and "`nemocompress importance MODEL --data PATH -o SCORES`" in err
    assert not (tmp_path / "b").exists()
