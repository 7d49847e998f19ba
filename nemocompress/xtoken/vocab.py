"""Each token of a tokenizer as the bytes it stands for: the canonical form two tokenizers are compared in.

A byte-level BPE token (``"Ġthe"``, ``"Ċ"``) maps through the GPT-2 byte alphabet to its bytes (``b" the"``,
``b"\\n"``); a SentencePiece token maps ``"▁"`` to a space and a byte-fallback token (``"<0x0A>"``) to its
byte; any other token is its UTF-8 string. So the space markers ``Ġ``, ``▁`` and ``" "`` become one form,
newline and tab markers become ``\\n`` and ``\\t``, and byte tokens become the byte. Special tokens
(``<|endoftext|>``, ``<s>``) stand for no text: they are kept apart, by their content string.

vocab = TokenBytes.of(tokenizer)
vocab.pieces[id]          # bytes, or None for a special token
vocab.special[id]         # the content of a special token
vocab.ids_of[b" the"]     # the id whose bytes these are
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import NemocompressError

__all__ = ["TokenBytes", "XTokenError", "display"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"


class XTokenError(NemocompressError, ValueError):
    """Cross-tokenizer input is wrong (missing tokenizer, no overlap, a projection for other tokenizers)."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The GPT-2 byte alphabet reversed: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_kinds(tokenizer: Any) -> set[str]:
    """Types of the fast tokenizer's decoder and its sub-decoders (``ByteLevel``, ``Metaspace``, ...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds, stack = set(), [decoder]
    while stack:
        d = stack.pop()
        kinds.add(d.get("type"))
        if d.get("type") == "Replace" and d.get("content") == " " and _METASPACE in json.dumps(d):
            kinds.add("Metaspace")
        stack.extend(d.get("decoders") or [])
    return kinds


def _piece_bytes(token: str, kinds: set[str]) -> bytes | None:
    """The bytes one token string stands for under a decoder of ``kinds``; None if it cannot be read."""
    if "ByteLevel" in kinds:
        table = _byte_decoder()
        if all(c in table for c in token):
            return bytes(table[c] for c in token)
    if "ByteFallback" in kinds:
        match = _BYTE_TOKEN.fullmatch(token)
        if match:
            return bytes([int(match.group(1), 16)])
    if "Metaspace" in kinds:
        token = token.replace(_METASPACE, " ")
    if "WordPiece" in kinds and token.startswith("##"):
        token = token[2:]
    return token.encode("utf-8")


@dataclass
class TokenBytes:
    """Every id of a tokenizer as bytes (``pieces``) or, for a special token, as its content (``special``)."""

    pieces: list[bytes | None]
    special: dict[int, str]
    ids_of: dict[bytes, int] = field(default_factory=dict)

    @classmethod
    def of(cls, tokenizer: Any) -> TokenBytes:
        """Read ``tokenizer`` (a transformers tokenizer) once: ``len(tokenizer)`` ids."""
        kinds = _decoder_kinds(tokenizer)
        vocab = tokenizer.get_vocab()
        size = max(vocab.values(), default=-1) + 1
        tokens: list[str | None] = [None] * size
        for token, i in vocab.items():
            tokens[i] = token
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special = {int(i): a.content for i, a in added.items() if getattr(a, "special", False)}
        special.update(
            {i: t for t, i in vocab.items() if t in set(getattr(tokenizer, "all_special_tokens", []))}
        )
        pieces: list[bytes | None] = []
        for i, token in enumerate(tokens):
            if token is None or i in special:
                pieces.append(None)
            elif i in added:  # a normal added token is its content as written
                pieces.append(added[i].content.encode("utf-8"))
            else:
                pieces.append(_piece_bytes(token, kinds))
        ids_of: dict[bytes, int] = {}
        for i, piece in enumerate(pieces):
            if piece:
                ids_of.setdefault(piece, i)  # the lowest id wins when two ids stand for the same bytes
        return cls(pieces, special, ids_of)

    def __len__(self) -> int:
        return len(self.pieces)

    def join(self, ids) -> bytes:
        """The bytes of a sequence of ids (special tokens stand for none)."""
        return b"".join(self.pieces[i] or b"" for i in ids)

    def lengths(self, ids) -> list[int]:
        """Bytes per id of ``ids`` (0 for a special token)."""
        return [len(self.pieces[i] or b"") for i in ids]


def display(piece: bytes | None, special: str | None = None) -> str:
    """A token for a terminal table: ``▁`` for a space, ``\\n`` and ``\\t`` escaped, raw bytes as ``<0xNN>``."""
    if piece is None:
        return special or "?"
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in piece)
    return text.replace(" ", _METASPACE).replace("\n", "\\n").replace("\t", "\\t")
