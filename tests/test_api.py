"""nemocompress.api wires the floors: width-only scores without layers, rankings scored as the planner
expects, and outer units re-scored on the kept inner units."""

import pytest
import torch
from helpers import write_calibration

from nemocompress import api
from nemocompress.arch import get_adapter
from nemocompress.cli import main
from nemocompress.importance.artifact import ScoresError
from nemocompress.importance.scoring import activation_scores
from nemocompress.importance.weights import checkpoint_magnitude_scores, random_scores
from nemocompress.prune.minitron import plan_from_targets
from nemocompress.zoo import zoo_config

FLAGS = ["--samples", "4", "--seq-len", "16"]
OPTIONS = api.ImportanceOptions(samples=4, seq_len=16)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("api"))


def test_no_layers_scores_hold_no_layer_scores_and_refuse_depth(calibrated, tmp_path):
    model, data = calibrated / "model", calibrated / "text.txt"
    found = api.importance(model, data, tmp_path / "s", OPTIONS, layers=False, progress=False)
    assert found.artifact.layers == {} and found.artifact.meta["settings"]["block_sizes"] == []
    assert all(not p.name.startswith("layers_") for p in found.plots) and found.plots
    assert "rank (nmse)" not in found.table() and "mamba_heads" in found.table()
    loaded = api.load_importance(tmp_path / "s", model)
    assert loaded.artifact.layers == {}
    with pytest.raises(
        ScoresError, match="--no-layers.*`nemocompress importance MODEL --data PATH -o SCORES`"
    ):
        api.prune(model, tmp_path / "o", {"num_layers": 4}, OPTIONS, scores=tmp_path / "s", progress=False)
    assert not (tmp_path / "o").exists()
    width = api.prune(
        model, tmp_path / "w", {"ffn_hidden_size": 48}, OPTIONS, scores=tmp_path / "s", progress=False
    )
    full = api.importance(model, data, None, OPTIONS, progress=False)
    assert full.artifact.layers and width.plan.kept["layers.2.mlp"] == sorted(
        full.unit_scores()["layers.2.mlp"].topk(48).indices.tolist()
    )
    for key, value in full.unit_scores().items():  # the same width scores, with or without layers
        torch.testing.assert_close(loaded.unit_scores()[key], value)


def test_no_layers_flag(calibrated, tmp_path, capsys):
    model, data = str(calibrated / "model"), str(calibrated / "text.txt")
    assert main(["importance", model, "--data", data, *FLAGS, "--no-layers", "-o", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "mamba_heads" in out and "rank (nmse)" not in out and "layers_nmse.png" not in out
    prune = ["prune", model, "--scores", str(tmp_path / "s"), "-o", str(tmp_path / "o")]
    assert main([*prune, "--export-config", '{"num_layers": 5}']) == 2
    err = capsys.readouterr().err
    assert "--no-layers" in err and "nemocompress importance MODEL --data PATH -o SCORES" in err
    assert main([*prune, "--export-config", '{"hidden_size": 48}']) == 0


@pytest.mark.parametrize("ranking", ["magnitude", "random"])
def test_weight_and_random_rankings_plan_from_their_own_scores(calibrated, tmp_path, ranking):
    """Rankings without data score every axis, layers included, from the checkpoint or the seed."""
    model, config = calibrated / "model", zoo_config("nemotron_h-hybrid")
    targets = {"hidden_size": 48, "mamba_num_heads": 4, "num_layers": 5}
    options = api.ImportanceOptions(ranking=ranking, seed=3)
    result = api.prune(model, tmp_path / "o", targets, options, progress=False)
    axes = [(a.name, a.size) for a in get_adapter(config).axes(config)]
    scores = checkpoint_magnitude_scores(model, False) if ranking == "magnitude" else random_scores(axes, 3)
    assert result.plan.kept == plan_from_targets(config, targets, scores).kept


def test_outer_units_are_rescored_on_the_kept_inner_units(calibrated, tmp_path):
    """Activation ranking: Mamba heads are ranked on the head channels the plan keeps, not on all of them."""
    model, data = calibrated / "model", calibrated / "text.txt"
    targets = {"mamba_num_heads": 4, "mamba_head_dim": 3}
    result = api.prune(model, tmp_path / "o", targets, OPTIONS, data=data, progress=False)
    found = api.importance(model, data, None, OPTIONS, layers=False, progress=False)
    config = found.config
    sites = get_adapter(config).score_sites(config)
    first = plan_from_targets(config, targets, activation_scores(sites, found.artifact.stats))
    rescored = activation_scores(sites, found.artifact.stats, restrict=first.kept_tensors())
    heads = rescored["layers.0.mamba_heads"]
    assert (
        result.plan.kept["layers.0.mamba_heads"]
        == plan_from_targets(config, targets, rescored).kept["layers.0.mamba_heads"]
    )
    assert not torch.equal(heads, activation_scores(sites, found.artifact.stats)["layers.0.mamba_heads"])
