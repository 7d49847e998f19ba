"""The search space and its enumeration: every candidate is costed from its config alone, correctly."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, NemotronHConfig

from nemocompress.arch import get_adapter
from nemocompress.errors import PlanError
from nemocompress.prune.budget import Budget
from nemocompress.prune.cost import CostModel, model_cost
from nemocompress.prune.plan import make_plan
from nemocompress.prune.search import SearchOptions, candidate_config, prepare_search
from nemocompress.prune.space import SearchSpace, enumerate_candidates
from nemocompress.report import human
from nemocompress.zoo import ZOO, zoo_config

DATA = Path(__file__).parent / "data"
NANO2_9B_PATTERN = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"


def nano_12b() -> NemotronHConfig:
    fields = json.loads((DATA / "nemotron_nano_12b_v2_base.json").read_text())
    fields = {
        k: v for k, v in fields.items() if not k.startswith("_") and k not in ("model_type", "architectures")
    }
    return NemotronHConfig(**fields)


def nano2_budget() -> Budget:  # 22.06 GiB - 5% - 1.3 GiB = 19.66 GiB at 128k tokens, bf16, batch 1
    return Budget(memory_gib=22.06, reserve_fraction=0.05, reserve_gib=1.3, context_length=131072)


def test_nano2_budget_is_met_by_the_9b_and_not_by_the_12b_parent():
    parent = nano_12b()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(parent)
    built = sum(p.numel() for p in model.parameters())
    assert model_cost(parent).params == built == 12_310_001_152
    budget = nano2_budget()
    nine = NemotronHConfig(
        **{**parent.to_dict(), "hidden_size": 4480, "intermediate_size": 15680, "hybrid_override_pattern": NANO2_9B_PATTERN,
           "num_hidden_layers": 56, "layers_block_type": None}
    )  # fmt: skip
    assert len(nine.layers_block_type) == 56
    costs = {}
    for name, config in (("12b", parent), ("9b", nine)):
        c = model_cost(config, 131072, 1, torch.bfloat16)
        costs[name] = {"params": c.params, "memory": c.memory_bytes}
    assert costs["9b"]["params"] == pytest.approx(8.888e9, rel=1e-3)  # the published 8.89B
    assert budget.missed(costs["12b"]) == ["memory"]
    assert budget.missed(costs["9b"]) == []
    assert costs["9b"]["memory"] / 2**30 == pytest.approx(18.69, abs=0.01)


def test_nano2_search_space_enumerates_and_every_listed_candidate_fits():
    prepared = prepare_search(nano_12b(), nano2_budget(), SearchOptions())
    e = prepared.enumeration
    assert e.total > 1_000_000 and e.fitting > 1000
    budget = nano2_budget()
    for cand in e.candidates[:50]:
        assert budget.missed(cand.metrics()) == []
    memory = [c.memory_bytes for c in e.candidates[:200]]
    assert memory == sorted(memory, reverse=True)  # closest under the budget first
    assert memory[0] <= budget.memory_limit_bytes < memory[0] * 1.01


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_enumerated_candidate_costs_what_its_config_costs(name):
    config = zoo_config(name)
    parent = model_cost(config, 64, 2, torch.float32)
    space = SearchSpace.build(config, 0.5, 0.5, divisors={k: 1 for k in ("hidden_size", "ffn_hidden_size")})
    budget = Budget(params=int(parent.params * 0.9), context_length=64, batch_size=2, dtype="float32")
    found = enumerate_candidates(space, budget)
    assert found.candidates, space.table()
    picks = found.candidates[:: max(1, len(found.candidates) // 6)]
    for cand in picks:
        new = candidate_config(config, cand)
        cost = model_cost(new, 64, 2, torch.float32)
        assert (cost.params, cost.active_params, cost.memory_bytes) == (
            cand.params, cand.active_params, cand.memory_bytes,
        ), cand.name  # fmt: skip
        assert cost.params <= budget.params
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(candidate_config(config, picks[0]))
    tied = {id(p) for p in model.parameters()}
    assert sum(p.numel() for p in model.parameters() if id(p) in tied) == picks[0].params


def test_valid_sizes_agree_with_what_the_config_accepts():
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=256)  # fmt: skip
    adapter = get_adapter(config)
    axes = adapter.axes(config)
    for hidden in (512, 504, 448, 432):
        for heads in (6, 9):
            kept = {"hidden": list(range(hidden))}
            kept.update({a.name: list(range(heads // 3)) + list(range(3, 3 + heads // 3)) + list(range(6, 6 + heads // 3))
                         for a in axes if a.kind == "attention_heads"})  # fmt: skip
            try:
                make_plan(config, kept)
                accepted = True
            except PlanError:
                accepted = False
            assert bool(adapter.valid_sizes(config, {"hidden": hidden, "attention_heads": heads})) == accepted
            assert accepted == (hidden % heads == 0)


def test_small_model_divisors_scale_down_and_say_so():
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True)  # fmt: skip
    space = SearchSpace.build(config)
    assert space.choices["hidden_size"] == [360, 432, 504, 576]  # multiples of the 9 heads only
    assert space.choices["num_attention_heads"] == [6, 9]  # whole KV groups of 3
    assert any(n.startswith("hidden_size divisor 256 -> 8") and "1 choice" in n for n in space.notes)
    assert all(c >= 0.6 * 1536 for c in space.choices["ffn_hidden_size"])


def test_zero_pruning_keeps_the_full_size_without_a_divisor_note():
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True)  # fmt: skip
    width_only = SearchSpace.build(config, 0.4, 0.0)
    assert width_only.num_layers == [30] and not any("num_layers" in n for n in width_only.notes)
    found = prepare_search(config, Budget(params=90_000_000), SearchOptions(max_depth_pruning=0.0))
    assert found.enumeration.candidates and all(
        sum(c.layers.values()) == 30 and c.params <= 90_000_000 for c in found.enumeration.candidates
    )
    depth_only = SearchSpace.build(config, 0.0, 0.5)
    assert depth_only.choices == {} and not any("divisor" in n for n in depth_only.notes)
    assert min(depth_only.num_layers) == 16


def test_depth_is_chosen_per_layer_kind_and_keeps_every_kind():
    space = SearchSpace.build(zoo_config("nemotron_h-hybrid"), 0.4, 0.5)
    assert space.layer_kinds == {"mamba": 2, "attention": 1, "mlp": 2, "moe": 1}
    depth = space.depth_choices()
    assert {"mamba": 1, "attention": 1, "mlp": 1, "moe": 1} in depth
    assert all(d["attention"] == 1 and min(d.values()) >= 1 for d in depth)
    assert all(sum(d.values()) in space.num_layers for d in depth)


@pytest.mark.parametrize(
    "budget, options, match",
    [
        (Budget(params=1000), SearchOptions(), "smallest candidate under --max-width-pruning 0.4 / --max-depth-pruning 0.2 has"),
        (Budget(params=10**9), SearchOptions(), "is not below the model's current"),
        (Budget(params=100_000, active_params=200_000), SearchOptions(), "contradict"),
        (Budget(params=100_000), SearchOptions(hparams_to_skip=("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_layers")), "no size is left"),
        (Budget(params=100_000), SearchOptions(hparams_to_skip=("hidden",)), "not a searchable size"),
        (Budget(params=100_000), SearchOptions(divisors={"hiden_size": 8}), "unknown key"),
    ],
)  # fmt: skip
def test_bad_targets_error_before_any_work(budget, options, match):
    with pytest.raises(PlanError, match=match):
        prepare_search(zoo_config("llama"), budget, options)


def test_the_unreachable_message_names_the_nearest_reachable_value():
    config = zoo_config("llama")
    smallest = min(
        c.params for c in enumerate_candidates(SearchSpace.build(config), Budget(params=10**9)).candidates
    )
    with pytest.raises(PlanError) as e:
        prepare_search(config, Budget(params=smallest - 1), SearchOptions())
    assert f"{human(smallest)} params" in str(e.value) and "--target-params" in str(e.value)
    assert prepare_search(config, Budget(params=smallest), SearchOptions()).enumeration.fitting >= 1


def test_cost_model_broadcasts_over_many_candidates():
    config = zoo_config("nemotron_h-hybrid")
    cm = CostModel(config)
    one = cm({"hidden": 48}, {"mamba": 1})
    many = cm(
        {"hidden": torch.tensor([48, 64]).numpy().reshape(2, 1)},
        {"mamba": torch.tensor([1, 2]).numpy().reshape(1, 2)},
    )
    assert many["params"].shape == (2, 2) and int(many["params"][0, 0]) == int(one["params"])
    assert int(cm()["params"]) == model_cost(config).params == int(many["params"][1, 1])
