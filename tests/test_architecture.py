"""arch/ is the only floor that knows a model family: the floors above it name none in their code.

Every .py under the floors above arch/ is read token by token; comments and docstrings are left out (they
may explain what a family does), everything else (names, attributes, string literals) may not name a
family or a family's parameter. A generic axis word such as ``experts`` or ``heads`` is fine.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "nemocompress"
FLOORS = ("importance", "prune", "distill", "elastic", "xtoken")
FAMILY_WORDS = ("mamba", "in_proj", "nemotron", "llama", "qwen", "mixtral", "n_groups", "a_log", "conv1d")
# a word counts where it starts a name or a part of one (``mamba_source``, ``num_n_groups``), not inside
# another word (``within_projection`` does not name in_proj)
_PATTERN = re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, FAMILY_WORDS)) + ")")
_SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}


def _docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    """(line, column) where each module, class and function docstring starts."""
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                starts.add((first.lineno, first.col_offset))
    return starts


def family_names(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: word (token)`` for every code token (not comment, not docstring) naming a family."""
    docstrings = _docstring_starts(ast.parse(source, filename))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in _SKIPPED or (tok.type == tokenize.STRING and tok.start in docstrings):
            continue
        for match in _PATTERN.finditer(tok.string.lower()):
            found.append(f"{filename}:{tok.start[0]}: {match.group(1)} (in {tok.string.strip()[:60]!r})")
    return found


def _floor_files() -> list[Path]:
    files = []
    for floor in FLOORS:
        assert (ROOT / floor).is_dir(), f"floor {floor}/ is missing from {ROOT}"
        files += sorted((ROOT / floor).rglob("*.py"))
    return files


def test_floors_above_arch_name_no_family():
    found = []
    for path in _floor_files():
        found += family_names(path.read_text(), str(path.relative_to(ROOT.parent)))
    assert not found, "family knowledge above arch/ (move it into an adapter):\n" + "\n".join(found)


def test_every_floor_is_read():
    files = {p.relative_to(ROOT).parts[0] for p in _floor_files()}
    assert files == set(FLOORS)
    assert any(p.name == "scoring.py" for p in _floor_files())


SAMPLE = '''"""A module docstring about Mamba and Llama is fine."""
import torch  # so is a comment about in_proj


def f(config):
    """A docstring naming n_groups is fine."""
    x = config.n_groups
    return {"Mamba": x, "name": f"{config.model_type}-qwen3"}


class C:
    """Nemotron in a class docstring."""

    mamba_source = "x"
    within_projection = 1  # not in_proj
    y = """a Mixtral string that is not a docstring"""
    z = torch.nn.Conv1d
    w = model.A_log
'''


@pytest.mark.parametrize(
    ("line", "word"),
    [
        (7, "n_groups"),
        (8, "mamba"),
        (8, "qwen"),
        (14, "mamba"),
        (16, "mixtral"),
        (17, "conv1d"),
        (18, "a_log"),
    ],
)
def test_scanner_flags_code(line, word):
    assert any(f.startswith(f"sample.py:{line}: {word} ") for f in family_names(SAMPLE, "sample.py"))


def test_scanner_skips_comments_docstrings_and_other_words():
    found = family_names(SAMPLE, "sample.py")
    assert len(found) == 7, found
    flagged_lines = {int(f.split(":")[1]) for f in found}
    assert flagged_lines.isdisjoint({1, 2, 6, 12, 15})


def test_scanner_catches_a_planted_violation_in_a_real_file():
    source = (ROOT / "importance" / "scoring.py").read_text()
    planted = source + '\n\ndef _chosen_default():\n    return "x" if True else "mamba"\n'
    (hit,) = family_names(planted, "scoring.py")
    assert hit.startswith(f"scoring.py:{len(planted.splitlines())}: mamba ")
