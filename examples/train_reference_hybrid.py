"""Train (once; then load from the cache) the reference NemotronH hybrid and show what it learned.

    python examples/train_reference_hybrid.py                  # ~15 min on 2 idle CPU cores the first time
    python examples/train_reference_hybrid.py --max-minutes 2  # a quick, separately cached trial

On a machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps PyTorch's threads from spinning.
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress.evaluate import generate_text
from nemocompress.reference import reference_hybrid

PROMPTS = (
    "Hamlet.\nTo be, or not to be",
    "King.\nWhat say you, ",
    "import os\n\n\ndef ",
    "class Stack:\n    def ",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir", default=None, help="cache root (default: $NEMOCOMPRESS_CACHE or ~/.cache)"
    )
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training early (quick trials)")
    parser.add_argument("--new-tokens", type=int, default=40, help="tokens generated per prompt")
    args = parser.parse_args()

    path = reference_hybrid(cache_dir=args.cache_dir, max_minutes=args.max_minutes)
    summary = json.loads((path / "training.json").read_text())
    print(f"checkpoint: {path}")
    print(
        f"{summary['params']:,} params; {summary['steps']} steps, {summary['tokens']:,} tokens in "
        f"{summary['seconds']:.0f} s ({summary['tokens_per_second']:.0f} tokens/s); "
        f"train loss {summary['first_train_loss']:.2f} -> {summary['final_train_loss']:.2f}"
    )
    for domain, heldout in summary["heldout"].items():
        print(
            f"held-out {domain}: {heldout['loss']:.3f} nats/token, {heldout['bits_per_byte']:.3f} bits/byte"
        )

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"layers: {model.config.layers_block_type}")
    for prompt in PROMPTS:
        print(f"\n--- {prompt!r}\n{prompt}{generate_text(model, tokenizer, prompt, args.new_tokens)}")


if __name__ == "__main__":
    main()
