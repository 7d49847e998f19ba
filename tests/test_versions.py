"""The versions we claim: setup.cfg's floors are the pins CI tests, and what older transformers lack is said."""

import configparser
import re
import warnings
from pathlib import Path

import pytest

from nemocompress.arch import get_adapter
from nemocompress.arch import mamba2 as mamba2_adapter
from nemocompress.zoo import zoo_model

ROOT = Path(__file__).resolve().parents[1]


def test_install_requires_floors_are_the_pinned_minimum_versions():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    floors = dict(re.fullmatch(r"([\w-]+)>=([\d.]+)", r.strip()).groups() for r in
                  config["options"]["install_requires"].split("\n") if r.strip())  # fmt: skip
    pins = dict(
        line.split("==") for line in (ROOT / ".ci" / "min-versions.txt").read_text().split() if "==" in line
    )
    assert pins.keys() == {"torch", "transformers", "accelerate"}
    for name, pin in pins.items():
        assert pin.split(".")[:2] == floors[name].split(".")[:2], (
            f"{name}: setup.cfg >= {floors[name]}, CI tests {pin}"
        )
    assert (
        ".venv-min" in (ROOT / ".ci" / "run").read_text()
        and "min-versions.txt" in (ROOT / ".ci" / "run").read_text()
    )


def test_mamba2_norm_mask_groups_as_the_installed_transformers_norm_does():
    model = zoo_model("mamba2")
    norm = model.backbone.layers[0].mixer.norm
    width = norm.weight.numel()
    groups_computed = width // norm.group_size if hasattr(norm, "group_size") else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sites = [s for s in get_adapter(model.config).mask_sites(model.config) if s.how == "gated_rms_norm"]
    assert sites and {s.groups for s in sites} == {groups_computed}
    assert model.config.n_groups == 2  # the zoo model is one where the two conventions differ


def test_old_transformers_mamba2_norm_warns_once_and_masks_all_groups_together(monkeypatch):
    monkeypatch.setattr(mamba2_adapter, "_gated_norm_is_grouped", lambda: False)
    mamba2_adapter._norm_groups.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"transformers>=5\.23"):
            assert mamba2_adapter._norm_groups(4) == 1
        assert mamba2_adapter._norm_groups(1) == 1
    finally:
        mamba2_adapter._norm_groups.cache_clear()
