"""Collect activation statistics with forward hooks, in one pass over calibration batches, no gradients.

Every statistic is a sum (over samples or tokens), so statistics from several processes or runs add up;
:mod:`nemocompress.importance.scoring` turns them into scores. Which activation scores which axis comes from
the adapter's score sites; nothing here knows a model family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import Adapter, ScoreSite
from ..arch.masking import overridden_forwards

__all__ = ["Stats", "ActivationCollector", "SEQ_AGGREGATIONS", "CONSTANT_STATS"]

Stats = dict[str, dict[str, torch.Tensor]]
SEQ_AGGREGATIONS = ("mean", "l2")
FLUSH_EVERY = 64  # batches between sums of the per-sample aggregates (bounds the memory they hold)
CONSTANT_STATS = ("wcol2",)  # properties of the weights, the same in every shard: never summed


class ActivationCollector:
    """Forward hooks that accumulate, per score site:

    - ``sum_a``, ``sum_a2``, ``n``: per sample a_b = aggregate over the sequence of |X| ([C]),
      summed over samples, squared and summed, and the sample count (METHODS.md section 1);
    - with ``token_moments`` (the default): ``tok_sum``, ``tok_sumsq``, ``n_tok``, token-level first and
      second moments (FLAP's variance), so that one calibration serves every built-in ranking;
    - ``wcol2``: squared column norms of the site's output projection (for FLAP), when it has one;
    - for fused experts: ``reap``, ``routed``, ``out_norm`` per expert and the expert-neuron moments.

    Use as a context manager around forward passes. ``seq_agg``: ``mean`` (of |X|) or ``l2`` over the
    sequence.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, seq_agg: str = "mean", token_moments: bool = True):
        if seq_agg not in SEQ_AGGREGATIONS:
            raise ValueError(f"seq_agg must be one of {SEQ_AGGREGATIONS}, got {seq_agg!r}")
        self.model, self.seq_agg, self.token_moments = model, seq_agg, token_moments
        self.sites = adapter.score_sites(model.config)
        self.stats: Stats = {}
        self._pending: dict[str, list[tuple[torch.Tensor, ...]]] = {}  # per-sample sums not yet summed
        self._pending_tokens: dict[str, float] = {}  # tokens behind them, per site
        self._hooks: list = []

    def __enter__(self) -> ActivationCollector:
        by_module: dict[str, list[ScoreSite]] = {}
        for site in self.sites:
            by_module.setdefault(site.module, []).append(site)
        forwards = {}
        for name, sites in by_module.items():
            module = self.model.get_submodule(name)
            for site in sites:
                if site.weight is not None:
                    w = getattr(module, site.weight).detach()
                    cols = w[:, site.start : site.start + site.width].to(torch.float64)
                    self.stats.setdefault(site.key, {})["wcol2"] = cols.pow(2).sum(0).cpu()
            if any(s.how == "experts" for s in sites):
                if len(sites) > 1:  # the experts' forward is replaced: no hook could see the module's input
                    raise ValueError(f"{name}: an experts score site must be the module's only score site")
                forwards[module] = self._experts_forward(sites[0], module)
            else:
                self._hooks.append(module.register_forward_hook(self._hook(sites), with_kwargs=True))
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(overridden_forwards(forwards))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._exit.close()
        self.flush()

    def flush(self) -> None:
        """Sum the per-sample aggregates gathered so far into :attr:`stats` (in float64).

        Hooks only keep each batch's ``[B, C]`` per-sample sums: a few small operations per site and batch add up
        to a measurable share of a forward on small models, so the sums are taken here, once.
        """
        for key, rows in self._pending.items():
            a, *moments = (torch.cat(parts).double() for parts in zip(*rows, strict=True))
            self._add(key, sum_a=a.sum(0), sum_a2=a.pow(2).sum(0), n=torch.tensor(float(a.shape[0])))
            if moments:
                n_tok = torch.tensor(self._pending_tokens[key])
                self._add(key, tok_sum=moments[0].sum(0), tok_sumsq=moments[1].sum(0), n_tok=n_tok)
        self._pending, self._pending_tokens = {}, {}

    def _hook(self, sites: list[ScoreSite]):
        def hook(module, args, kwargs, output):
            for site in sites:
                x = output if site.where == "output" else (args[0] if args else next(iter(kwargs.values())))
                x = x[0] if isinstance(x, tuple) else x
                self._activation(site, x[..., site.start : site.start + site.width])

        return hook

    def _add(self, key: str, **values: torch.Tensor) -> None:
        slot = self.stats.setdefault(key, {})
        for name, v in values.items():
            v = v.detach().to(torch.float64).cpu()
            slot[name] = slot[name] + v if name in slot else v

    @torch.no_grad()
    def _activation(self, site: ScoreSite, x: torch.Tensor) -> None:
        x = x.float()
        if x.ndim == 2:
            x = x[None]
        if not self.token_moments:
            per_sample = x.abs().mean(1) if self.seq_agg == "mean" else x.pow(2).mean(1).sqrt()
            self._pending.setdefault(site.key, []).append((per_sample,))
            return
        # Per sample [B, C]: sum and sum of squares (fused, no x^2 temporary), on one contiguous copy: a
        # site is often a slice of a wider activation, and reducing a strided slice over the sequence is
        # several times slower than copying it first. About 2-4% of a forward on a small hybrid (RESULTS.md).
        x = x.contiguous()
        sums, sumsq = x.sum(1), torch.linalg.vecdot(x, x, dim=1)
        per_sample = x.abs().mean(1) if self.seq_agg == "mean" else (sumsq / x.shape[1]).sqrt()
        self._pending.setdefault(site.key, []).append((per_sample, sums, sumsq))
        self._pending_tokens[site.key] = self._pending_tokens.get(site.key, 0.0) + x.shape[0] * x.shape[1]

    def _experts_forward(self, site: ScoreSite, module: nn.Module):
        """The experts' forward, computed once per routed (token, expert) pair with the statistics taken on
        the way: REAP, routing frequency and output norm per expert, and the expert-neuron moments (one
        ranking shared by all experts). The output equals the module's own forward.
        """
        call = site.experts
        activation = getattr(module, call.activation)

        def forward(*args, **kwargs):
            given = {**dict(zip(call.args, args)), **kwargs}
            hidden_states, top_k_index, top_k_weights = (given[name] for name in call.args)
            up, down = getattr(module, call.up), getattr(module, call.down)
            num_experts, k = up.shape[0], top_k_index.shape[-1]
            flat = top_k_index.reshape(-1)
            order = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=num_experts)
            gates = top_k_weights.reshape(-1)[order]
            h = _per_expert_linear(hidden_states[order // k], up, counts)
            if call.gated:
                gate, h = h.chunk(2, dim=-1)
                h = activation(gate) * h
            else:
                h = activation(h)
            y = _per_expert_linear(h, down, counts)
            norm = y.float().norm(dim=-1)
            expert = flat[order]
            per_expert = torch.zeros(2, num_experts, device=norm.device)
            per_expert[0].index_add_(0, expert, gates.float() * norm)
            per_expert[1].index_add_(0, expert, norm)
            h = h.float()
            self._add(
                site.key,
                reap=per_expert[0],
                routed=counts,
                out_norm=per_expert[1],
                sum_a=h.abs().sum(0),
                sum_a2=h.pow(2).sum(0),
                n=torch.tensor(float(flat.numel())),
            )
            weighted = torch.empty_like(y, dtype=torch.promote_types(y.dtype, gates.dtype))
            weighted[order] = y * gates[:, None]
            return weighted.view(-1, k, weighted.shape[-1]).sum(1).to(hidden_states.dtype)

        return forward

    def collect(self, batches: Iterable[torch.Tensor], on_batch: Callable[[], None] | None = None) -> Stats:
        """Run ``model(batch)`` for every batch (``use_cache=False``) and return the statistics.

        ``on_batch`` is called after each batch (to show progress, or to :meth:`flush` and save the sums).
        """
        with self, torch.no_grad():
            for i, batch in enumerate(batches, 1):
                self.model(batch.to(next(self.model.parameters()).device), use_cache=False)
                if i % FLUSH_EVERY == 0:
                    self.flush()
                if on_batch is not None:
                    on_batch()
        return self.stats


def _per_expert_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``x`` [S, in] sorted by expert, ``weight`` [E, out, in], ``counts`` [E] rows per expert -> [S, out].

    One grouped matmul where torch's kernel takes the shapes, dtype and device (as transformers' default
    experts implementation does); one matmul per expert otherwise.
    """
    if hasattr(F, "grouped_mm"):
        try:
            return F.grouped_mm(x, weight.transpose(-2, -1), offs=counts.cumsum(0).to(torch.int32))
        except RuntimeError:  # e.g. rows not 16-byte aligned, or a dtype the device's kernel lacks
            pass
    out = x.new_empty(x.shape[0], weight.shape[1])
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            torch.mm(x[start : start + n], weight[e].T, out=out[start : start + n])
            start += n
    return out
