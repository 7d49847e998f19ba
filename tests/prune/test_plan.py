"""Plans are validated data: JSON round trip, group and uniformity rules, refused on another model."""

import pytest
from helpers import random_kept

from nemocompress.errors import PlanError
from nemocompress.prune.plan import Plan, make_plan
from nemocompress.zoo import zoo_config, zoo_model


def test_plan_json_round_trip(tmp_path):
    model = zoo_model("nemotron_h-hybrid")
    plan = make_plan(model.config, random_kept(model, drop_layer=0))
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == plan
    assert loaded.apply_config(model.config).to_dict() == plan.apply_config(model.config).to_dict()


def test_plan_refused_on_a_model_of_other_sizes():
    plan = make_plan(zoo_config("llama"), {"hidden": list(range(32))})
    other = zoo_config("llama")
    other.intermediate_size = 80
    with pytest.raises(PlanError, match="other sizes"):
        plan.apply_config(other)
    with pytest.raises(PlanError, match="model_type"):
        plan.apply_config(zoo_config("qwen3"))


def test_unsupported_plan_version(tmp_path):
    with pytest.raises(PlanError, match="version"):
        Plan.from_dict({"version": 99, "model_type": "llama", "kept": {}, "config_updates": {}})


@pytest.mark.parametrize(
    "kept,match",
    [
        ({"layers.1.attention_heads": [0, 1, 2]}, "same count"),  # 2 from group 0, 1 from group 1
        ({"layers.0.mamba_heads": [0, 1, 4]}, "same count"),
        ({"layers.0.mamba_heads": [1, 0, 4, 5]}, "sorted"),
        ({"layers.0.mamba_heads": []}, "keeps no unit"),
        ({"layers.0.mamba_heads": [0, 99]}, r"\[0, 8\)"),
        ({"layers.2.mlp": list(range(40))}, "widths differ"),  # layer 5 keeps 96
        ({"layers.4.experts": [0]}, "routed to 2"),
        ({"layers": [0, 2, 3, 4, 5]}, "every attention layer"),
        ({"nope": [0]}, "unknown axes"),
    ],
)
def test_bad_plans_are_refused(kept, match):
    with pytest.raises(PlanError, match=match):
        make_plan(zoo_config("nemotron_h-hybrid"), kept)


def test_mamba2_needs_integer_expand():
    with pytest.raises(PlanError, match="integer expand"):
        make_plan(zoo_config("mamba2"), {"hidden": list(range(48))})
