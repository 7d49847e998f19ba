"""W for real tokenizer pairs (SmolLM2 -> Qwen, SmolLM2 -> GPT-2), when they are in the local cache."""

import pytest
from transformers import AutoTokenizer

from nemocompress.assets import cache_root
from nemocompress.xtoken import TokenBytes, align_pieces, build_projection

pytestmark = pytest.mark.slow


def _cached(*parts):
    path = cache_root().joinpath(*parts)
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"{path} is not cached (nemocompress.assets.fetch_smollm2 / fetch_tokenizer fetch it)")
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("teacher", ["qwen", "gpt2"])
def test_real_pair(teacher):
    smol = _cached("models", "smollm2-135m-instruct")
    other = _cached("tokenizers", teacher)
    projection = build_projection(smol, other)
    assert projection.shape == (len(smol), len(other))
    assert projection.stats["exact_share"] > 0.7 and projection.stats["student_coverage"] > 0.99
    text = "In 1905, 12,345 ships sailed\n\tfrom Kraków 🚢 at 3.14159 knots."
    smol_bytes, other_bytes = TokenBytes.of(smol), TokenBytes.of(other)
    a = [smol_bytes.pieces[i] for i in smol.encode(text, add_special_tokens=False)]
    b = [other_bytes.pieces[i] for i in other.encode(text, add_special_tokens=False)]
    alignment = align_pieces(a, b)
    assert [i for s, e in alignment.student for i in range(s, e)] == list(range(len(a)))
    assert [i for s, e in alignment.teacher for i in range(s, e)] == list(range(len(b)))
