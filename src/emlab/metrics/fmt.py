"""How a rate and a p-value are written, in every report and message (one format)."""

from __future__ import annotations

from typing import Any

from emlab.metrics.rule import finite


def pct(x: Any) -> str:
    """A rate as ``12.3%``; ``n/a`` for no number (None, NaN)."""
    v = finite(x)
    return "n/a" if v is None else f"{100 * v:.1f}%"


def p_value(x: Any) -> str:
    """A p-value with two significant digits; ``< 1e-300`` when it underflowed to 0."""
    v = finite(x)
    return "n/a" if v is None else ("< 1e-300" if v == 0 else f"{v:.2g}")
