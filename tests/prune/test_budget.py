import numpy as np
import pytest
import torch

from nemocompress.errors import PlanError
from nemocompress.prune.budget import DEVICE_PROFILES, Budget, decode_latency_ms, device_profile, parse_count


@pytest.mark.parametrize(
    "text, value",
    [
        ("6B", 6_000_000_000),
        ("900M", 900_000_000),
        ("6e9", 6_000_000_000),
        ("1.5k", 1500),
        (" 12 ", 12),
        (7e6, 7_000_000),
    ],
)
def test_counts_take_suffixes(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["abc", "6X", "-1", "0", "", "1e400"])
def test_bad_counts_name_the_fix(text):
    with pytest.raises(PlanError, match="6e9, 6B or 900M|positive"):
        parse_count(text)


def test_nano2_memory_limit_is_19_66_gib():
    budget = Budget(memory_gib=22.06, reserve_fraction=0.05, reserve_gib=1.3, context_length=131072)
    assert budget.memory_limit_bytes / 2**30 == pytest.approx(19.657)
    assert budget.targets == ["memory"]


def test_every_target_must_hold():
    budget = Budget(params=100, memory_gib=1.0)
    fits = budget.fits({"params": np.array([90, 110, 90]), "memory": np.array([2**29, 2**29, 2**31])})
    assert fits.tolist() == [True, False, False]
    assert budget.missed({"params": 110, "memory": 2**31}) == ["params", "memory"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(memory_gib=1.0, reserve_gib=2.0), "leaves nothing"),
        (dict(params=-5), "must be positive"),
        (dict(latency_ms=0), "--target-latency must be positive"),
        (dict(params=5, reserve_fraction=1.0), "--reserve-fraction"),
        (dict(params=5, dtype="int8"), "bfloat16, float16 or float32"),
        (dict(params=5, device="tpu9"), "unknown --device-profile"),
    ],
)
def test_bad_budgets_error(kwargs, match):
    with pytest.raises(PlanError, match=match):
        Budget(**kwargs)


def test_device_profiles_named_or_json():
    assert device_profile("h200").bandwidth == 4.8e12
    custom = device_profile('{"bandwidth_gbs": 100, "tflops": 10}')
    assert (custom.bandwidth, custom.flops) == (100e9, 10e12)
    assert all(p.source for p in DEVICE_PROFILES.values())


def test_decode_latency_is_bandwidth_bound_at_batch_one_and_grows_with_context():
    p = DEVICE_PROFILES["h100"]
    short = decode_latency_ms(8e9, 1e9, 1e8, 5120 * 4, 1, 4096, torch.bfloat16, p)
    expected = 1e3 * (8e9 * 2 + 1e9 + 2e8) / p.bandwidth
    assert short == pytest.approx(expected)
    assert decode_latency_ms(8e9, 8e9, 1e8, 5120 * 4, 1, 32768, torch.bfloat16, p) > short
    # a large batch makes the same step compute-bound
    big = decode_latency_ms(8e9, 1e9, 1e8, 5120 * 4, 4096, 4096, torch.bfloat16, p)
    assert big == pytest.approx(1e3 * 4096 * (2 * 8e9 + 4 * 5120 * 4 * 4096) / p.flops)
