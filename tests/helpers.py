"""Test helpers: tiny zoo models, random plans that respect every axis' groups."""

from __future__ import annotations

import socket
import warnings

import torch

from nemocompress.arch import get_adapter
from nemocompress.prune.plan import make_plan
from nemocompress.zoo import ZOO, zoo_model

warnings.filterwarnings("ignore", message=".*falling back.*")

ZOO_NAMES = sorted(ZOO)


def random_kept(model, kinds=None, seed=0, drop_layer=None) -> dict[str, list[int]]:
    """About half of every axis of the given kinds (all kinds by default), the same count in each group."""
    adapter = get_adapter(model.config)
    g = torch.Generator().manual_seed(seed)
    kept = {}
    for axis in adapter.axes(model.config):
        if kinds is not None and axis.kind not in kinds:
            continue
        if axis.kind == "depth":
            if drop_layer is not None:
                kept[axis.name] = [i for i in range(axis.size) if i != drop_layer]
            continue
        floor = 2 if axis.kind == "experts" else 1
        per_group = max(floor, axis.group_size // 2)
        idx = []
        for group in range(axis.groups):
            pick = torch.randperm(axis.group_size, generator=g)[:per_group] + group * axis.group_size
            idx += pick.tolist()
        kept[axis.name] = sorted(idx)
    return kept


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model``'s logits for ``tokens`` [B, S] without a cache (no grad)."""
    with torch.no_grad():
        return model(tokens, use_cache=False).logits


def random_plan(model, kind: str = "all"):
    """A valid plan that prunes about half of one axis kind (or of every kind, and drops layer 0, for
    ``"all"``); ``"depth"`` drops layer 0 only."""
    if kind == "depth":
        return make_plan(model.config, random_kept(model, ["depth"], drop_layer=0))
    kinds = None if kind == "all" else [kind]
    return make_plan(model.config, random_kept(model, kinds, drop_layer=0 if kind == "all" else None))


def axis_kinds(name: str) -> list[str]:
    model = zoo_model(name)
    return sorted({a.kind for a in get_adapter(model.config).axes(model.config)})


def free_port() -> int:
    """A TCP port nobody listens on now (for a two-process rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_calibration(root, name: str = "nemotron_h-hybrid"):
    """A zoo checkpoint at ``root/model`` and calibration text at ``root/text.txt``; returns ``root``."""
    from nemocompress.zoo import save_zoo_checkpoint

    save_zoo_checkpoint(name, root / "model")
    (root / "text.txt").write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(400))
    )
    return root


def seeded_scores(parent, seed: int = 0):
    """Seeded random importance (unit scores per axis, layer scores) of the checkpoint at ``parent``."""
    from nemocompress.checkpoint import load_config

    config = load_config(parent)
    adapter = get_adapter(config)
    g = torch.Generator().manual_seed(seed)
    units = {a.name: torch.rand(a.size, generator=g) for a in adapter.axes(config)}
    return units, torch.rand(adapter.num_layers(config), generator=g)


def die_in_save(n: int) -> None:
    """Make this process SIGKILL itself during its ``n``-th accelerate checkpoint save, after the files are
    written and before the directory is renamed into place (a torn checkpoint), for resume tests."""
    import os
    import signal

    from accelerate import Accelerator

    save_state, calls = Accelerator.save_state, []

    def save_then_die(self, *a, **kw):
        result = save_state(self, *a, **kw)
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Accelerator.save_state = save_then_die


def save_model_with_tokenizer(tokenizer, path, seed: int = 0, family: str = "llama") -> None:
    """A zoo ``family`` model resized to ``tokenizer``'s vocabulary, seeded, saved with the tokenizer."""
    from transformers import AutoModelForCausalLM

    from nemocompress.zoo import zoo_config

    config = zoo_config(family)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def assert_cli_errors(capsys, argv: list[str], cases: list[tuple[list[str], str]], root) -> None:
    """Each ``argv + flags + -o root/outI`` exits 2 with one line ``error: ...`` holding its message, and
    writes nothing (neither ``outI`` nor anything beside it named ``outI.*``)."""
    from pathlib import Path

    from nemocompress import cli

    capsys.readouterr()
    for i, (flags, message) in enumerate(cases):
        out = Path(root) / f"out{i}"
        assert cli.main([*argv, *flags, "-o", str(out)]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not list(out.parent.glob(f"{out.name}.*"))
