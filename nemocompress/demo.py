"""The main job on a real model, end to end: fetch SmolLM2-135M and Shakespeare, prune, compare.

result = demo()            # about a minute on a laptop CPU after the downloads
print(result.table())      # params, memory, held-out loss, bits per byte, KL and top-1 to the parent, a sample
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .report import format_table, human

__all__ = ["DEMO_EXPORT", "DEMO_PROMPT", "DemoResult", "demo"]

DEMO_EXPORT = {"hidden_size": 480, "ffn_hidden_size": 1024, "num_attention_heads": 6}
DEMO_PROMPT = "The capital of France is"


@dataclass
class DemoResult:
    prune: object  # nemocompress.api.PruneResult
    rows: list[list]

    def table(self) -> str:
        return format_table(self.rows, ["", "SmolLM2-135M", "pruned", "ratio"])


def demo(
    output_dir: str | Path | None = None,
    export_config: str | dict | None = None,
    ranking: str = "activation",
    samples: int = 16,
    seq_len: int = 256,
    progress: bool = True,
) -> DemoResult:
    """Prune SmolLM2-135M to ``export_config`` (default :data:`DEMO_EXPORT`) and compare before and after.

    Activation scores come from the train split of Shakespeare; loss, bits per byte, KL to the parent and
    top-1 agreement with it are measured by :func:`nemocompress.evaluate.evaluate` on up to ``samples``
    held-out samples of ``seq_len`` tokens (the held-out split of :func:`nemocompress.data.build_samples`,
    which nothing here tunes on); generation is greedy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import api
    from .assets import cache_root, fetch_smollm2, fetch_text
    from .data import build_samples
    from .evaluate import evaluate, generate_text

    parent_dir = fetch_smollm2()
    output_dir = Path(output_dir) if output_dir else cache_root() / "demo" / "smollm2-135m-pruned"
    options = api.ImportanceOptions(ranking=ranking)
    text = fetch_text("shakespeare")
    export = export_config or DEMO_EXPORT
    result = api.prune(
        parent_dir, output_dir, export, options, data=text if options.needs_data else None, overwrite=True,
        progress=progress,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    ids = build_samples(tokenizer, text, seq_len, num_heldout=samples).heldout
    parent = AutoModelForCausalLM.from_pretrained(parent_dir, dtype=torch.float32).eval()
    pruned = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32).eval()
    before = evaluate(parent, ids, tokenizer, progress=progress)
    after = evaluate(pruned, ids, tokenizer, reference=parent, progress=progress)
    said = [generate_text(m, tokenizer, DEMO_PROMPT, 12).strip()[:40] for m in (parent, pruned)]
    b, a = result.before, result.after
    rows = [
        ["params", human(b.params), human(a.params), f"{a.params / b.params:.3f}x"],
        [
            "memory (bf16, 4k ctx)",
            human(b.memory_bytes, "B"),
            human(a.memory_bytes, "B"),
            f"{a.memory_bytes / b.memory_bytes:.3f}x",
        ],
        [
            "held-out loss (nats/token)",
            f"{before.loss:.3f}",
            f"{after.loss:.3f}",
            f"{after.loss / before.loss:.3f}x",
        ],
        [
            "bits per byte",
            f"{before.bits_per_byte:.3f}",
            f"{after.bits_per_byte:.3f}",
            f"{after.bits_per_byte / before.bits_per_byte:.3f}x",
        ],
        ["KL to SmolLM2-135M (nats/token)", "0", f"{after.kl:.3f}", ""],
        ["top-1 agreement", "1", f"{after.top1_agreement:.3f}", ""],
        [f"'{DEMO_PROMPT}' ->", repr(said[0]), repr(said[1]), ""],
    ]
    return DemoResult(result, rows)
