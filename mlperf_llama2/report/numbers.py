"""Numbers printed beside a limit: never rounded onto it or across it."""

from __future__ import annotations

from typing import Optional, Sequence


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_vs_limits(value: Optional[float], limits: Sequence[float], digits: int = 1) -> str:
    """`value` with as many decimals as it takes to stay on its side of every limit (and off it): 39.97 ms is
    never printed as 40.0 against a 40 ms limit, nor 40.04 ms."""
    if value is None:
        return "-"
    text = fmt(value, digits)
    while digits < 6 and any(value != limit and ((float(text) < limit) != (value < limit) or float(text) == limit)
                             for limit in limits):
        digits += 1
        text = fmt(value, digits)
    return text
