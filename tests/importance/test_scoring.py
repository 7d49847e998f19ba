"""Scores from summed statistics (importance/scoring.py), checked against numbers worked out by hand: the
per-channel aggregations, how a site's channels become outer and inner unit scores, FLAP's formula, the
expert metrics and the choice of score sites."""

import math

import pytest
import torch

from nemocompress.arch import ExpertsCall, ScoreSite, Segment
from nemocompress.errors import NemocompressError
from nemocompress.importance.scoring import activation_scores, channel_scores, flap_scores


def _stats(channels) -> dict[str, torch.Tensor]:
    """Statistics of one sample whose aggregate is ``channels``: with ``mean`` they score as given."""
    a = torch.tensor(channels, dtype=torch.float64)
    return {"sum_a": a, "sum_a2": a.pow(2), "n": torch.tensor(1.0, dtype=torch.float64)}


def test_channel_aggregations_by_hand():
    # two samples: channel 0 saw 1 and 3, channel 1 saw 2 and 6
    stats = {"sum_a": torch.tensor([4.0, 8.0]), "sum_a2": torch.tensor([10.0, 40.0]), "n": torch.tensor(2.0)}
    torch.testing.assert_close(channel_scores(stats, "l2"), torch.tensor([math.sqrt(10), math.sqrt(40)]))
    torch.testing.assert_close(channel_scores(stats, "mean"), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(channel_scores(stats, "var"), torch.tensor([1.0, 4.0]))  # E[a^2] - E[a]^2
    with pytest.raises(ValueError, match="batch_agg must be one of"):
        channel_scores(stats, "max")


def test_variance_never_goes_negative_from_rounding():
    stats = {"sum_a": torch.tensor([3.0]), "sum_a2": torch.tensor([3.0 - 1e-7]), "n": torch.tensor(3.0)}
    assert channel_scores(stats, "var").item() == 0.0


# One site of 2 heads x 3 head channels, then 2 MLP neurons, then 3 channels no axis cuts.
HEADS = Segment(6, outer="heads", inner="head_dim", inner_size=3)
SITE = ScoreSite("m", "output", (HEADS, Segment(2, outer="mlp"), Segment(3)))
CHANNELS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0, 100.0, 100.0]


def test_segments_give_outer_units_l2_over_their_block_and_inner_units_l2_over_blocks():
    scores = activation_scores([SITE], {SITE.key: _stats(CHANNELS)}, batch_agg="mean")
    assert set(scores) == {"heads", "head_dim", "mlp"}
    # head h: L2 over its channels; head channel p: L2 over the heads at position p
    torch.testing.assert_close(scores["heads"], torch.tensor([math.sqrt(1 + 4 + 9), math.sqrt(16 + 25 + 36)]))
    expected_dim = [math.sqrt(1 + 16), math.sqrt(4 + 25), math.sqrt(9 + 36)]
    torch.testing.assert_close(scores["head_dim"], torch.tensor(expected_dim))
    torch.testing.assert_close(scores["mlp"], torch.tensor([7.0, 8.0]))
    assert all(v.dtype == torch.float32 for v in scores.values())


def test_restrict_scores_outer_units_on_the_kept_inner_units_only():
    restrict = {"head_dim": torch.tensor([0, 2])}
    scores = activation_scores([SITE], {SITE.key: _stats(CHANNELS)}, batch_agg="mean", restrict=restrict)
    torch.testing.assert_close(scores["heads"], torch.tensor([math.sqrt(1 + 9), math.sqrt(16 + 36)]))
    expected_dim = [math.sqrt(1 + 16), math.sqrt(4 + 25), math.sqrt(9 + 36)]  # inner units are not restricted
    torch.testing.assert_close(scores["head_dim"], torch.tensor(expected_dim))


def test_an_axis_scored_at_several_sites_sums_them():
    norm = ScoreSite("norm", "output", (Segment(2, outer="mlp"),))
    stats = {SITE.key: _stats(CHANNELS), norm.key: _stats([0.5, 0.25])}
    scores = activation_scores([SITE, norm], stats, batch_agg="mean")
    torch.testing.assert_close(scores["mlp"], torch.tensor([7.5, 8.25]))
    only = activation_scores([SITE, norm], {norm.key: stats[norm.key]}, batch_agg="mean")
    assert set(only) == {"mlp"}, "a site without statistics contributes nothing"


def test_a_choice_group_uses_its_chosen_variant_else_its_default():
    variants = ("x", "z")
    x = ScoreSite("mixer", "x", (Segment(2, outer="heads"),), choice=("mamba", "x"), variants=variants)
    z = ScoreSite("mixer", "z", (Segment(2, outer="heads"),), choice=("mamba", "z"), variants=variants)
    stats = {x.key: _stats([1.0, 2.0]), z.key: _stats([5.0, 3.0])}
    default = activation_scores([x, z], stats, batch_agg="mean")
    chosen = activation_scores([x, z], stats, batch_agg="mean", choices={"mamba": "z"})
    other_group = activation_scores([x, z], stats, batch_agg="mean", choices={"attention": "q"})
    assert default["heads"].tolist() == [1.0, 2.0] == other_group["heads"].tolist()
    assert chosen["heads"].tolist() == [5.0, 3.0]


EXPERTS = ScoreSite(
    "moe.experts",
    "input",
    (Segment(3, outer="experts"), Segment(2, outer="expert_ffn")),
    how="experts",
    experts=ExpertsCall(args=("hidden_states", "top_k_index", "top_k_weights"), up="up", down="down"),
)
EXPERT_STATS = {
    **_stats([2.0, 4.0]),  # expert neurons: ordinary channel statistics
    "routed": torch.tensor([4.0, 0.0, 2.0]),
    "reap": torch.tensor([2.0, 0.0, 3.0]),
    "out_norm": torch.tensor([8.0, 0.0, 1.0]),
}


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("reap", [0.5, 0.0, 1.5]), ("frequency", [4.0, 0.0, 2.0]), ("output_norm", [2.0, 0.0, 0.5])],
)
def test_expert_metrics_by_hand(metric, expected):
    """reap and output_norm are means over the tokens routed to the expert; an unused expert scores 0."""
    stats = {EXPERTS.key: EXPERT_STATS}
    for scores in (
        activation_scores([EXPERTS], stats, batch_agg="mean", expert_metric=metric),
        flap_scores([EXPERTS], stats, expert_metric=metric),
    ):
        assert scores["experts"].tolist() == expected
    assert activation_scores([EXPERTS], stats, batch_agg="mean")["expert_ffn"].tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match="expert metric must be one of"):
        activation_scores([EXPERTS], stats, expert_metric="load")


def _token_moments(tokens, wcol2=None) -> dict[str, torch.Tensor]:
    x = torch.tensor(tokens, dtype=torch.float64)  # [tokens, channels]
    out = {"tok_sum": x.sum(0), "tok_sumsq": x.pow(2).sum(0), "n_tok": torch.tensor(float(len(x)))}
    return out | ({} if wcol2 is None else {"wcol2": torch.tensor(wcol2, dtype=torch.float64)})


def test_flap_is_weight_column_norm_times_token_variance_summed_over_a_unit():
    # 2 heads x 2 head channels into an output projection; tokens per channel: [1, 3], [0, 4], [2, 2], [1, 5]
    heads = Segment(4, outer="heads", inner="head_dim", inner_size=2)
    proj = ScoreSite("attn.o_proj", "input", (heads,), weight="attn.o_proj.weight")
    norm = ScoreSite("norm", "output", (Segment(2, outer="hidden"),))
    stats = {
        proj.key: _token_moments([[1.0, 0.0, 2.0, 1.0], [3.0, 4.0, 2.0, 5.0]], wcol2=[1.0, 2.0, 3.0, 0.5]),
        norm.key: _token_moments([[1.0, 10.0], [5.0, 10.0]]),  # no weight: the variance alone
    }
    scores = flap_scores([proj, norm], stats)
    variance = [1.0, 4.0, 0.0, 4.0]  # population variance of each channel's two tokens
    channel = [v * w for v, w in zip(variance, [1.0, 2.0, 3.0, 0.5], strict=True)]  # [1, 8, 0, 2]
    torch.testing.assert_close(
        scores["heads"], torch.tensor([channel[0] + channel[1], channel[2] + channel[3]])
    )
    torch.testing.assert_close(
        scores["head_dim"], torch.tensor([channel[0] + channel[2], channel[1] + channel[3]])
    )
    torch.testing.assert_close(scores["hidden"], torch.tensor([4.0, 0.0]))


def test_flap_skips_choice_sites_without_a_weight_and_needs_token_moments():
    x = ScoreSite("mixer", "x", (Segment(2, outer="heads"),), choice=("mamba", "x"), variants=("x",))
    out = ScoreSite("mixer.out_proj", "input", (Segment(2, outer="heads"),), weight="mixer.out_proj.weight")
    stats = {
        x.key: _token_moments([[0.0, 0.0], [9.0, 9.0]]),
        out.key: _token_moments([[0.0, 1.0], [2.0, 1.0]], [1, 1]),
    }
    assert flap_scores([x, out], stats)["heads"].tolist() == [1.0, 0.0]
    with pytest.raises(NemocompressError, match="token moments"):
        flap_scores([out], {out.key: _stats([1.0, 2.0])})
