"""Plain-text tables for summaries printed at the end of a command."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "human"]


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (bytes with unit 'B' use powers of 1024: '1.18 MiB')."""
    if unit == "B":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or suffix == "TiB":
                return f"{n:.0f} B" if suffix == "B" else f"{n:.2f} {suffix}"
            n /= 1024
    for suffix in ("", "K", "M", "B", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}" if suffix == "" else f"{n:.2f}{suffix}"
        n /= 1000
    return str(n)


def format_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """Left-aligned text columns, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", "").split()[0].rstrip("KMBTx%"))
        return True
    except (ValueError, IndexError):
        return False
