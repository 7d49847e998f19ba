"""Minitron targets -> plan (prune/minitron.py): top units per group, one-line refusals of bad targets, and the
nested-plans invariant that elastic models rely on: from the same scores, a smaller target keeps a subset of
a larger target's units on every axis, for every adapter and every kind of scores."""

import pytest
import torch
from helpers import ZOO_NAMES

from nemocompress import api
from nemocompress.arch import get_adapter
from nemocompress.errors import PlanError
from nemocompress.importance.scoring import activation_scores
from nemocompress.importance.weights import magnitude_scores, random_scores
from nemocompress.prune.minitron import plan_from_targets, top_units
from nemocompress.zoo import zoo_config, zoo_model, zoo_text, zoo_tokenizer

# ---------------------------------------------------------------------- top_units


def test_top_units_keeps_equal_counts_per_group_and_never_moves_units():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.8, 0.3, 0.4])
    assert top_units(scores, 4, groups=2) == [1, 3, 5, 7]
    assert top_units(scores, 2, groups=1) == [1, 5]
    assert top_units(scores, 8, groups=2) == list(range(8))
    assert top_units(scores, 2, groups=2) == [1, 5]  # best of 0..3 and best of 4..7


def test_top_units_ranks_half_precision_scores_and_returns_sorted_ints():
    scores = torch.tensor([3.0, 1.0, 2.0, 0.5], dtype=torch.bfloat16)
    kept = top_units(scores, 2)
    assert kept == [0, 2] and all(type(i) is int for i in kept)


def test_targets_map_to_every_layer_of_a_kind():
    config = zoo_config("nemotron_h-hybrid")
    axes = get_adapter(config).axes(config)
    scores = {a.name: torch.arange(a.size, dtype=torch.float) for a in axes}
    plan = plan_from_targets(config, {"ffn_hidden_size": 64, "mamba_num_heads": 4, "num_layers": 5}, scores)
    assert plan.kept["layers.2.mlp"] == list(range(32, 96))
    assert plan.kept["layers.5.mlp"] == list(range(32, 96))
    assert plan.kept["layers.0.mamba_heads"] == [2, 3, 6, 7]  # best two inside each group of four
    assert plan.kept["layers"] == [1, 2, 3, 4, 5]
    new = plan.apply_config(config)
    assert (new.intermediate_size, new.mamba_num_heads, len(new.layers_block_type)) == (64, 4, 5)


def test_group_unaware_ranking_lets_units_change_group():
    """The naive ablation baseline: the global top-4 Mamba heads all lie in group 0."""
    config = zoo_config("nemotron_h-hybrid")
    scores = {"layers.0.mamba_heads": torch.tensor([9.0, 8, 7, 6, 0, 0, 0, 1])}
    scores["layers.3.mamba_heads"] = scores["layers.0.mamba_heads"]
    aware = plan_from_targets(config, {"mamba_num_heads": 4}, scores)
    naive = plan_from_targets(config, {"mamba_num_heads": 4}, scores, group_aware=False)
    assert aware.kept["layers.0.mamba_heads"] == [0, 1, 6, 7]
    assert naive.kept["layers.0.mamba_heads"] == [0, 1, 2, 3]


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("name", "targets", "message"),
    [
        ("llama", {"hidden_sizes": 48}, "unknown export_config keys for llama: hidden_sizes; valid keys: "),
        ("llama", {"mamba_num_heads": 4}, "unknown export_config keys"),
        ("qwen3_moe", {"moe_shared_expert_intermediate_size": 8}, "unknown export_config keys"),
        ("llama", {"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ("llama", {"hidden_size": 48.0}, "hidden_size must be a positive integer, got 48.0"),
        ("llama", {"num_layers": True}, "num_layers must be a positive integer, got True"),
        (
            "llama",
            {"hidden_size": 65},
            "hidden_size=65 is larger than the current size 64; pruning only shrinks",
        ),
        ("mixtral", {"num_moe_experts": 1}, "routed to 2; keep at least 2"),
    ],
)
def test_bad_targets_are_refused_with_one_line(name, targets, message):
    config = zoo_config(name)
    with pytest.raises(PlanError) as e:
        plan_from_targets(
            config, targets, random_scores((a.name, a.size) for a in get_adapter(config).axes(config))
        )
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_key_without_its_axis_says_remove_it():
    """qwen3_moe with only MoE layers has no dense MLP to prune."""
    config = zoo_config("qwen3_moe")
    config.mlp_only_layers = []
    with pytest.raises(
        PlanError, match="ffn_hidden_size: this qwen3_moe model has no mlp axis to prune; remove"
    ):
        plan_from_targets(config, {"ffn_hidden_size": 64}, {})


@pytest.mark.parametrize(
    ("name", "targets", "field"),
    [
        ("llama", {"num_attention_heads": 3}, "num_key_value_heads = 2"),
        ("nemotron_h-hybrid", {"mamba_num_heads": 5}, "n_groups = 2"),
        ("mamba2", {"mamba_num_heads": 3}, "n_groups = 2"),
    ],
)
def test_group_message_names_the_config_field_the_adapter_gives(name, targets, field):
    config = zoo_config(name)
    with pytest.raises(PlanError, match=f"per group \\({field}\\); pick a multiple of 2"):
        plan_from_targets(config, targets, {})  # refused before any score is read


# ---------------------------------------------------------------------- nested plans

# The zoo's attention has 4 query heads in 2 KV groups: 2 is the only smaller size. This variant gives
# attention heads nested sizes of their own (6 > 4 > 2 heads in 2 groups).
WIDE_ATTENTION = ("llama", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16))
NESTED_MODELS = [*ZOO_NAMES, "llama-wide-attention"]

# Mamba2 sizes its inner width as an integer multiple of hidden_size: sizes that keep heads * head_dim a
# multiple of hidden_size at every level (head_dim nested 16 > 12 > 8).
MAMBA2_LEVELS = [
    {"hidden_size": 48, "mamba_num_heads": 6, "mamba_head_dim": 16},
    {"hidden_size": 32, "mamba_num_heads": 4, "mamba_head_dim": 16},
    {"hidden_size": 16, "mamba_num_heads": 4, "mamba_head_dim": 12},
    {"hidden_size": 16, "mamba_num_heads": 2, "mamba_head_dim": 8},
]


def _config(name):
    if name == "llama-wide-attention":
        config = zoo_config(WIDE_ATTENTION[0])
        for key, value in WIDE_ATTENTION[1].items():
            setattr(config, key, value)
        return config
    return zoo_config(name)


def _model(name):
    if name == "llama-wide-attention":
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(_config(name), dtype=torch.float32).eval()
    return zoo_model(name)


def _width_levels(config, levels: int = 3) -> list[dict[str, int]]:
    """Export targets at about 3/4, 1/2 and 1/4 of every width (multiples of the groups, at least one unit per
    group and top-k experts), each strictly smaller than the full size."""
    if config.model_type == "mamba2":
        return MAMBA2_LEVELS
    adapter = get_adapter(config)
    axes = adapter.axes(config)
    out = [{} for _ in range(levels)]
    for key, kind in adapter.export_keys.items():
        axis = next((a for a in axes if a.kind == kind), None)
        if kind == "depth" or axis is None:  # e.g. a hybrid without dense MLP layers
            continue
        floor = max(axis.groups, adapter.experts_per_token(config) if kind == "experts" else 1)
        for i in range(levels):
            want = axis.size * (levels - i) // (levels + 1)
            out[i][key] = min(max(floor, want - want % axis.groups), axis.size - axis.groups)
    return out


def _depth_levels(config, scores) -> list[int]:
    """Every smaller layer count these scores make a valid plan for (e.g. NemotronH keeps an attention
    layer), largest first."""
    valid = []
    for n in range(get_adapter(config).num_layers(config) - 1, 0, -1):
        try:
            plan_from_targets(config, {"num_layers": n}, scores)
        except PlanError:
            continue
        valid.append(n)
    return valid


# Magnitude and activation (nmse) rank the one attention layer of this hybrid last among its 4 layers: every
# smaller depth would remove it, which NemotronH refuses; its depth nesting is checked with random scores.
NO_SMALLER_DEPTH = {("nemotron_h-latent-moe", "magnitude"), ("nemotron_h-latent-moe", "activation")}


def _levels(config, scores, depth: bool = True) -> list[dict[str, int]]:
    widths, depths = _width_levels(config), _depth_levels(config, scores)
    assert bool(depths) == depth, f"valid smaller depths: {depths}"
    if not depth:
        return widths
    return [{**w, "num_layers": depths[min(i, len(depths) - 1)]} for i, w in enumerate(widths)]


def assert_nested(config, small, large) -> None:
    """Every axis of ``small`` keeps a subset of what ``large`` keeps (an absent axis keeps all)."""
    for name, axis in get_adapter(config).axis_map(config).items():
        kept_small = set(small.kept.get(name, range(axis.size)))
        kept_large = set(large.kept.get(name, range(axis.size)))
        assert kept_small <= kept_large, f"{name}: {sorted(kept_small - kept_large)} kept by the smaller only"


def _check_nested_chain(config, plans, depth: bool = True) -> None:
    adapter = get_adapter(config)
    axes = adapter.axis_map(config)
    pruned = {axes[name].kind for name in plans[-1].kept}
    expected = {a.kind for a in axes.values()} - (set() if depth else {"depth"})
    assert pruned == expected, "the smallest target must prune every axis kind"
    for large, small in zip(plans, plans[1:], strict=False):
        assert_nested(config, small, large)
    assert_nested(config, plans[-1], plans[0])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """name -> activation scores of that model from one calibration on the zoo text (api.importance)."""
    root = tmp_path_factory.mktemp("nested")
    (root / "text.txt").write_text(zoo_text(num_documents=8))
    options = api.ImportanceOptions(samples=4, seq_len=32, batch_size=4)
    found = {}

    def get(name):
        if name not in found:
            _model(name).save_pretrained(root / name)
            zoo_tokenizer().save_pretrained(root / name)
            found[name] = api.importance(root / name, root / "text.txt", options=options, progress=False)
        return found[name]

    return get


def _scores(kind: str, name: str, calibrated) -> dict[str, torch.Tensor]:
    model = _model(name)
    adapter = get_adapter(model.config)
    if kind == "magnitude":
        return magnitude_scores(model, adapter)
    if kind == "random":
        return random_scores([(a.name, a.size) for a in adapter.axes(model.config)], seed=3)
    result = calibrated(name)
    return {**result.unit_scores(), "layers": result.layer_scores()["nmse"]}


@pytest.mark.parametrize("kind", ["magnitude", "random", "activation"])
@pytest.mark.parametrize("name", NESTED_MODELS)
def test_smaller_targets_keep_subsets_of_larger_ones(name, kind, calibrated):
    config = _config(name)
    scores = _scores(kind, name, calibrated)
    depth = (name, kind) not in NO_SMALLER_DEPTH
    plans = [plan_from_targets(config, targets, scores) for targets in _levels(config, scores, depth)]
    _check_nested_chain(config, plans, depth)


@pytest.mark.parametrize("name", NESTED_MODELS)
def test_rescored_plans_nest_while_head_channels_keep_their_size(name, calibrated):
    """The activation ranking re-scores outer units on the kept inner units (``rescore``, as api.prune
    does): with Mamba head channels left whole, the re-scored plans nest as the plain ones do."""
    config = _config(name)
    result = calibrated(name)
    scores = {**result.unit_scores(), "layers": result.layer_scores()["nmse"]}
    depth = (name, "activation") not in NO_SMALLER_DEPTH
    levels = [
        {k: v for k, v in targets.items() if k != "mamba_head_dim"}
        for targets in _levels(config, scores, depth)
    ]
    plans = [plan_from_targets(config, targets, scores, rescore=result.unit_scores) for targets in levels]
    for large, small in zip(plans, plans[1:], strict=False):
        assert_nested(config, small, large)


def _one_mamba_layer():
    """NemotronH with one Mamba layer of 2 groups x 2 heads x 16 head channels, and the activation scores
    of x-branch statistics restricted to kept units (one sample, ``mean`` aggregation: the channel scores are
    the numbers below). Head 0 is strong on head channel 0 alone, head 1 moderately on the 15 others; group 1
    (heads 2, 3) is plain."""
    config = zoo_config("nemotron_h-latent-moe")
    sites = get_adapter(config).score_sites(config)
    (x_site,) = [
        s for s in sites if s.module == "model.layers.0.mixer.in_proj" and s.choice == ("mamba", "x")
    ]
    heads = [
        [10.0] + [0.0] * 15,
        [0.0] + [3.0 + 0.01 * k for k in range(15)],
        [1.0] * 16,
        [0.5] * 16,
    ]
    a = torch.tensor([c for head in heads for c in head], dtype=torch.float64)
    stats = {x_site.key: {"sum_a": a, "sum_a2": a.pow(2), "n": torch.tensor(1.0, dtype=torch.float64)}}

    def rescore(kept):
        return activation_scores(sites, stats, "mean", restrict=kept)

    return config, rescore


def test_rescoring_by_hand_keeps_the_head_whose_kept_channels_are_strongest():
    config, rescore = _one_mamba_layer()
    scores = rescore({})
    assert scores["layers.0.mamba_heads"][:2].argmax() == 1  # unrestricted: L2 of head 1 ~ 11.9 > 10
    plain = [plan_from_targets(config, {"mamba_num_heads": 2, "mamba_head_dim": d}, scores) for d in (15, 1)]
    assert [p.kept["layers.0.mamba_heads"] for p in plain] == [[1, 2], [1, 2]]
    assert_nested(config, plain[1], plain[0])
    large, small = (
        plan_from_targets(config, {"mamba_num_heads": 2, "mamba_head_dim": d}, scores, rescore=rescore)
        for d in (15, 1)
    )
    # head channel 0: L2 over heads ~ 10.06, the others 3.2 to 3.4
    assert small.kept["layers.0.mamba_head_dim"] == [0]
    assert large.kept["layers.0.mamba_heads"] == [1, 2]  # on channels 0, 2..15: head 1 ~ 11.5 > 10
    assert small.kept["layers.0.mamba_heads"] == [0, 2]  # on channel 0 alone: head 0 = 10 > head 1 = 0


@pytest.mark.xfail(
    strict=True,
    reason="finding: re-scoring Mamba heads on the kept head channels breaks nesting across mamba_head_dim "
    "targets (the smaller plan keeps head 0, the larger head 1); elastic models need a rule here",
)
def test_rescored_plans_nest_across_head_channel_targets():
    config, rescore = _one_mamba_layer()
    large, small = (
        plan_from_targets(config, {"mamba_num_heads": 2, "mamba_head_dim": d}, rescore({}), rescore=rescore)
        for d in (15, 1)
    )
    assert_nested(config, small, large)
