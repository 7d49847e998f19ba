"""The main job on a real model, end to end: SmolLM2-135M compressed by the Minitron recipe, and the recovery.

result = demo()            # fetch SmolLM2-135M and Shakespeare, then `compress`: search, prune, distill, eval
print(result.table())      # parent / pruned / distilled: params, memory, held-out loss, bits per byte, a sample

This is :func:`nemocompress.api.compress` with small settings: a budget search to :data:`DEMO_TARGET`
parameters (zero-shot, width only), a short distillation from the parent (:data:`DEMO_KD_STEPS` steps of
4 x ``seq_len`` tokens at :data:`DEMO_KD_LR`), and the one evaluation on held-out Shakespeare that nothing
here trains or calibrates on. The run directory (default in the cache) resumes like any compress run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .report import format_table, human

__all__ = ["DEMO_EXPORT", "DEMO_KD_LR", "DEMO_KD_STEPS", "DEMO_PROMPT", "DEMO_TARGET", "DemoResult", "demo"]

DEMO_TARGET = "122M"  # of SmolLM2-135M's 134.5M parameters: 0.9x, the size that still answers the prompt
DEMO_KD_STEPS = 40
DEMO_KD_LR = (
    2e-4  # a lightly pruned student: 1e-3 moved a 114.6M one further from its parent (KL 0.52 -> 0.58)
)
#: Explicit sizes instead of the search (``demo(export_config=DEMO_EXPORT)``): 0.63x, much harder to recover.
DEMO_EXPORT = {"hidden_size": 480, "ffn_hidden_size": 1024, "num_attention_heads": 6}
DEMO_PROMPT = "The capital of France is"


@dataclass
class DemoResult:
    compress: object  # nemocompress.api.CompressResult
    rows: list[list]

    def table(self) -> str:
        headers = ["", "params", "memory (bf16, 4k ctx)", "held-out loss", "bits per byte", "KL to parent"]
        return format_table(self.rows, [*headers, f"{DEMO_PROMPT!r} ->"])


def demo(
    output_dir: str | Path | None = None,
    export_config: str | dict | None = None,
    ranking: str = "activation",
    samples: int = 16,
    seq_len: int = 128,
    kd_steps: int = DEMO_KD_STEPS,
    kd_lr: float = DEMO_KD_LR,
    target_params: str = DEMO_TARGET,
    resume: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Compress SmolLM2-135M to ``target_params`` (or to ``export_config`` sizes) on Shakespeare; compare.

    ``kd_lr``: the distillation's peak learning rate (higher suits harder pruning).
    ``ranking``: how units are ranked (:data:`nemocompress.importance.rankings.RANKINGS`).
    Loss (nats per token), bits per byte and KL to the parent are measured by
    :func:`nemocompress.evaluate.evaluate` on up to ``samples`` held-out samples of ``seq_len`` tokens;
    generation is greedy. ``resume`` continues an interrupted demo in ``output_dir``; otherwise it starts over.
    """
    from . import api
    from .assets import cache_root, fetch_smollm2, fetch_text

    parent = fetch_smollm2()
    output_dir = Path(output_dir) if output_dir else cache_root() / "demo" / "smollm2-135m-compressed"
    target = {"export_config": export_config} if export_config else {"target_params": target_params}
    result = api.compress(
        output_dir, resume=resume, overwrite=not resume, progress=progress, model=parent,
        data=fetch_text("shakespeare"), kd_steps=kd_steps, kd_lr=kd_lr, seq_len=seq_len, batch_size=4,
        calib_samples=32, eval_samples=samples, top_k=2, prompt=DEMO_PROMPT, generation_tokens=12,
        save_every=10, importance=ranking, **target,
    )  # fmt: skip
    rows = []
    for name, model in result.report["models"].items():
        m = model["metrics"]
        rows.append(
            [
                name, human(m["params"]), human(m["memory_bytes"], "B"), f"{m['loss']:.3f}",
                f"{m['bits_per_byte']:.3f}", "0" if m.get("kl") is None else f"{m['kl']:.3f}",
                repr(model["generation"].strip()[:40]),
            ]
        )  # fmt: skip
    return DemoResult(result, rows)
