"""Alternative score sites: the choices and their defaults are adapter data, importance/ only reads them."""

import pytest
import torch

from nemocompress.arch import SCORE_CHOICES, ScoreSite, Segment, get_adapter
from nemocompress.errors import NemocompressError
from nemocompress.importance.activation import ActivationCollector
from nemocompress.importance.options import ImportanceOptions
from nemocompress.importance.scoring import activation_scores
from nemocompress.zoo import zoo_config, zoo_model

BATCHES = [torch.randint(2, 98, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]


def _sites_and_stats():
    """Two alternative sites of a made-up group ``g`` (variants b, a: b is the default) over one axis."""
    seg = (Segment(3, outer="axis"),)
    sites = [
        ScoreSite("m", "output", seg, start=0, choice=("g", "b"), variants=("b", "a")),
        ScoreSite("m", "output", seg, start=3, choice=("g", "a"), variants=("b", "a")),
    ]
    stats = {
        sites[0].key: {"sum_a2": torch.tensor([1.0, 4, 9]), "sum_a": torch.zeros(3), "n": torch.tensor(1.0)},
        sites[1].key: {"sum_a2": torch.tensor([16.0, 0, 1]), "sum_a": torch.zeros(3), "n": torch.tensor(1.0)},
    }
    return sites, stats


def test_the_default_variant_comes_from_the_sites():
    sites, stats = _sites_and_stats()
    assert torch.equal(activation_scores(sites, stats)["axis"], torch.tensor([1.0, 2, 3]))
    assert torch.equal(activation_scores(sites, stats, choices={"g": "a"})["axis"], torch.tensor([4.0, 0, 1]))
    reordered = [ScoreSite(s.module, s.where, s.segments, s.start, s.choice, ("a", "b")) for s in sites]
    assert torch.equal(activation_scores(reordered, stats)["axis"], torch.tensor([4.0, 0, 1]))


def test_a_site_refuses_a_variant_outside_its_group():
    with pytest.raises(ValueError, match="not one of"):
        ScoreSite("m", "output", (Segment(3, outer="axis"),), choice=("g", "c"), variants=("b", "a"))


def test_unset_sources_score_like_the_default_and_unlike_another_variant():
    model = zoo_model("nemotron_h-hybrid")
    adapter = get_adapter(model.config)
    stats = ActivationCollector(model, adapter).collect(BATCHES)
    sites = adapter.score_sites(model.config)
    default, other = SCORE_CHOICES["mamba"][:2]
    unset = activation_scores(sites, stats)
    named = activation_scores(sites, stats, choices={"mamba": default})
    changed = activation_scores(sites, stats, choices={"mamba": other})
    assert unset.keys() == named.keys() == changed.keys()
    for key in unset:
        assert torch.equal(unset[key], named[key])
    assert not torch.equal(unset["layers.0.mamba_heads"], changed["layers.0.mamba_heads"])
    assert torch.equal(unset["layers.2.mlp"], changed["layers.2.mlp"])  # other sites do not move


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({"mamba": "y"}, r"sources\['mamba'\] must be one of x, z, out_proj"),
        ({"ssm": "x"}, "choose from mamba"),
    ],
)
def test_options_refuse_unknown_sources(sources, message):
    with pytest.raises(NemocompressError, match=message):
        ImportanceOptions(sources=sources)


def test_chosen_sources_fill_defaults_and_refuse_groups_the_model_lacks():
    hybrid, llama = zoo_config("nemotron_h-hybrid"), zoo_config("llama")
    options = ImportanceOptions()
    assert options.sources == {}
    assert options.chosen_sources(get_adapter(hybrid), hybrid) == {"mamba": "x"}
    assert ImportanceOptions(sources={"mamba": "z"}).chosen_sources(get_adapter(hybrid), hybrid) == {
        "mamba": "z"
    }
    assert options.chosen_sources(get_adapter(llama), llama) == {}
    with pytest.raises(
        NemocompressError, match="llama model has no 'mamba' score sites.*leave 'mamba' unset"
    ):
        ImportanceOptions(sources={"mamba": "z"}).chosen_sources(get_adapter(llama), llama)


def test_options_copy_the_sources_they_are_given():
    given = {"mamba": "z"}
    options = ImportanceOptions(sources=given)
    given["mamba"] = "x"
    assert options.sources == {"mamba": "z"} and options.to_dict()["sources"] == {"mamba": "z"}
