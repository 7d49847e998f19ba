"""Layer selection: which layers a depth target keeps, individually, as one contiguous block, iteratively."""

import pytest
import torch
from helpers import write_calibration

from nemocompress import api
from nemocompress.arch import get_adapter
from nemocompress.cli import main
from nemocompress.errors import PlanError
from nemocompress.importance.calibrate import load_model_and_samples
from nemocompress.importance.selection import (
    iterative_layer_ranking,
    iterative_ranking,
    layer_ranking,
    windows_to_score,
)
from nemocompress.prune.minitron import top_units
from nemocompress.zoo import save_zoo_checkpoint, zoo_config, zoo_model

BATCHES = [torch.randint(2, 98, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("select"))


def test_windows_to_score():
    assert windows_to_score(6, None, "individual") == ()
    assert windows_to_score(6, 4, "individual") == (1,)
    assert windows_to_score(6, 4, "contiguous") == (1, 2)
    assert windows_to_score(6, 5, "contiguous") == (1,)
    assert windows_to_score(6, 4, "iterative") == ()


def test_contiguous_ranking_drops_the_weakest_window():
    scores = {1: {"nmse": torch.tensor([5.0, 1, 4, 3, 6, 2])}, 2: {"nmse": torch.tensor([9.0, 5, 0.5, 8, 7])}}
    individual = layer_ranking(scores.__getitem__, 6, 4, "nmse", "individual")
    assert top_units(individual, 4) == [0, 2, 3, 4]  # drops 1 and 5, which are not adjacent
    contiguous = layer_ranking(scores.__getitem__, 6, 4, "nmse", "contiguous")
    assert top_units(contiguous, 4) == [0, 1, 4, 5]  # the window 2..3 scores lowest
    with pytest.raises(PlanError, match="pass --data, not --scores"):
        layer_ranking(scores.__getitem__, 6, 4, "nmse", "iterative")


def test_iterative_ranking_marks_the_survivors():
    model = zoo_model("nemotron_h-hybrid")
    adapter = get_adapter(model.config)
    kept = iterative_layer_ranking(model, adapter, BATCHES, 4)
    ranking = iterative_ranking(model, adapter, BATCHES, 4)
    assert len(kept) == 4 and top_units(ranking, 4) == kept and ranking.sum() == 4


def test_contiguous_selection_from_scores_and_from_data(calibrated, tmp_path):
    """`--layer-selection contiguous` drops the lowest-scored window of 2, from saved scores or data."""
    model, data, flags = tmp_path / "llama", calibrated / "text.txt", ["--samples", "4", "--seq-len", "16"]
    save_zoo_checkpoint("llama", model)
    num_layers, scores = zoo_config("llama").num_hidden_layers, tmp_path / "s"
    windows = ["--block-size", "1", "2"]
    assert main(["importance", str(model), "--data", str(data), *flags, *windows, "-o", str(scores)]) == 0
    options = api.ImportanceOptions(samples=4, seq_len=16, layer_selection="contiguous")
    start = int(api.load_importance(scores, model, options).layer_scores(2)["nmse"].argmin())
    expected = [i for i in range(num_layers) if i not in (start, start + 1)]
    keep = {"num_layers": num_layers - 2}
    saved = api.prune(model, tmp_path / "a", keep, options, scores=scores, progress=False)
    now = api.prune(model, tmp_path / "b", keep, options, data=data, progress=False)
    assert saved.plan.kept["layers"] == now.plan.kept["layers"] == expected


def test_iterative_layer_selection_drops_one_at_a_time(calibrated, tmp_path, capsys):
    options = api.ImportanceOptions(samples=4, seq_len=16, layer_selection="iterative")
    model_dir, data = calibrated / "model", calibrated / "text.txt"
    result = api.prune(model_dir, tmp_path / "o", {"num_layers": 4}, options, data=data, progress=False)
    kept = result.plan.kept["layers"]
    assert len(kept) == 4
    model, samples = load_model_and_samples(model_dir, data, options)
    batches = list(samples.split(options.batch_size))
    assert kept == iterative_layer_ranking(model, get_adapter(model.config), batches, 4)
    scores = tmp_path / "s"
    assert (
        main(
            [
                "importance",
                str(model_dir),
                "--data",
                str(data),
                "--samples",
                "4",
                "--seq-len",
                "16",
                "-o",
                str(scores),
            ]
        )
        == 0
    )
    prune = ["prune", str(model_dir), "--scores", str(scores), "--layer-selection", "iterative"]
    assert main([*prune, "--export-config", '{"num_layers": 4}', "-o", str(tmp_path / "x")]) == 2
    assert "pass --data, not --scores" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
