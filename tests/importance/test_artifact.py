"""Scores on disk (importance/artifact.py): save -> load gives back every statistic and the metadata; scores
for another model, another format version or a directory that holds none are refused in one line."""

import json

import pytest
import torch

from nemocompress.errors import OutputError
from nemocompress.importance.artifact import SCORES_VERSION, ImportanceArtifact, ScoresError, describe_run
from nemocompress.zoo import zoo_config


def _artifact(config) -> ImportanceArtifact:
    g = torch.Generator().manual_seed(0)
    stats = {
        "model.layers.0.mlp.down_proj:input:0": {
            "sum_a": torch.rand(96, generator=g, dtype=torch.float64),
            "sum_a2": torch.rand(96, generator=g, dtype=torch.float64),
            "n": torch.tensor(8.0, dtype=torch.float64),
        },
        "model.norm:output:0": {"sum_a": torch.rand(64, generator=g), "n": torch.tensor(8.0)},
    }
    layers = {
        1: {"nmse_num": torch.rand(3, dtype=torch.float64, generator=g), "nmse_den": torch.full((3,), 2.0)},
        2: {"nmse_num": torch.rand(2, dtype=torch.float64, generator=g), "nmse_den": torch.full((2,), 2.0)},
    }
    return ImportanceArtifact(stats, layers, describe_run(config, "text.txt", {"samples": 8}))


def _assert_same(a: ImportanceArtifact, b: ImportanceArtifact) -> None:
    assert a.stats.keys() == b.stats.keys() and a.layers.keys() == b.layers.keys()
    for key, stats in a.stats.items():
        assert stats.keys() == b.stats[key].keys()
        for name, value in stats.items():
            assert b.stats[key][name].dtype == value.dtype and torch.equal(b.stats[key][name], value)
    for window, stats in a.layers.items():
        for name, value in stats.items():
            assert torch.equal(b.layers[window][name], value)


def test_save_load_round_trip(tmp_path):
    config = zoo_config("llama")
    saved = _artifact(config)
    saved.save(tmp_path / "scores")
    loaded = ImportanceArtifact.load(tmp_path / "scores", config)
    _assert_same(saved, loaded)
    assert loaded.meta == {**saved.meta, "version": SCORES_VERSION}
    assert loaded.meta["fingerprint"]["axes"]["layers.0.mlp"] == 96
    _assert_same(saved, ImportanceArtifact.from_tensors(saved.tensors()))
    assert "site/model.norm:output:0/sum_a" in saved.tensors() and "layers/2/nmse_num" in saved.tensors()


def test_save_refuses_to_replace_without_overwrite_and_adds_files(tmp_path):
    config = zoo_config("llama")
    _artifact(config).save(tmp_path / "scores")
    with pytest.raises(OutputError):
        _artifact(config).save(tmp_path / "scores")
    empty = ImportanceArtifact({}, {1: {"nmse_num": torch.zeros(3), "nmse_den": torch.ones(3)}}, {})
    empty.save(tmp_path / "scores", overwrite=True, also=lambda tmp: (tmp / "plots").mkdir())
    loaded = ImportanceArtifact.load(tmp_path / "scores")
    assert loaded.stats == {} and (tmp_path / "scores" / "plots").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["scores"], "no temporary directory left beside"


def _llama(**changes):
    config = zoo_config("llama")
    return type(config).from_dict({**config.to_dict(), **changes})


@pytest.mark.parametrize(
    "other",
    [zoo_config("qwen3"), _llama(intermediate_size=80), _llama(num_hidden_layers=2)],
    ids=["family", "mlp-size", "depth"],
)
def test_scores_for_another_model_are_refused(tmp_path, other):
    config = zoo_config("llama")
    _artifact(config).save(tmp_path / "scores")
    with pytest.raises(ScoresError, match="was computed for another model .* recompute the scores") as e:
        ImportanceArtifact.load(tmp_path / "scores", other)
    assert "\n" not in str(e.value)
    ImportanceArtifact.load(tmp_path / "scores", config)  # the model it was made for loads


def test_other_format_version_and_non_scores_directory_are_refused(tmp_path):
    _artifact(zoo_config("llama")).save(tmp_path / "scores")
    meta = tmp_path / "scores" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": SCORES_VERSION + 1}))
    with pytest.raises(ScoresError, match=f"scores format {SCORES_VERSION + 1} is not {SCORES_VERSION}"):
        ImportanceArtifact.load(tmp_path / "scores")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoresError, match="is not a scores directory"):
        ImportanceArtifact.load(tmp_path / "empty")
