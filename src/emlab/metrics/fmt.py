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


def rate_ci(rate: Any, lo: Any, hi: Any, none: str = "n/a") -> str:
    """``12.3% [10.1%, 14.5%]``; ``none`` when there is no rate."""
    if finite(rate) is None:
        return none
    return f"{pct(rate)} [{pct(lo)}, {pct(hi)}]"


def rate_ci_short(rate: Any, lo: Any, hi: Any) -> str:
    """``12.3% [10.1, 14.5]`` (terminal tables and the README's): the CI in points."""
    r = finite(rate)
    if r is None:
        return "n/a"
    if finite(lo) is None or finite(hi) is None:
        return pct(r)
    return f"{100 * r:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def number(x: Any, digits: int = 1, none: str = "n/a") -> str:
    """A judge score or loss with ``digits`` decimals; ``none`` for no number."""
    v = finite(x)
    return none if v is None else f"{v:.{digits}f}"
