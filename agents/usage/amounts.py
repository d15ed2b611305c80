"""Bounded amounts: token counts and USD as the usage tables hold them, and the sums of one window.

Nothing that enters the tables can make a later step fail on every restart: counts stay within an
Avro ``long``, costs within :data:`MAX_USD`, sums saturate there, and a value read back from a table
is clamped the same way (state written by an older version may hold inf or NaN).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CACHED",
    "COST",
    "EMPTY_ROW",
    "EVENTS",
    "INPUT",
    "MAX_COUNT",
    "MAX_USD",
    "OUTPUT",
    "PRICED",
    "REPORTED",
    "UNPRICED",
    "clamp_count",
    "clamp_token_figure",
    "clamp_usd",
    "group_summary",
    "window_sum",
]

#: Largest token or event count a report holds (Avro ``long``); sums saturate here.
MAX_COUNT = 2**63 - 1
#: Largest cost in USD one event may claim and a sum holds (saturating): beyond any real bill, far from
#: where float sums and the forecast's squares lose finiteness.
MAX_USD = 1e15
_MAX_COUNT_FLOAT = float(MAX_COUNT - 1023)  # float(MAX_COUNT) rounds up to 2**63

# Window row: [input, output, cached, events, cost, reported, priced, unpriced]
INPUT, OUTPUT, CACHED, EVENTS, COST, REPORTED, PRICED, UNPRICED = range(8)
EMPTY_ROW = (0, 0, 0, 0, 0.0, 0, 0, 0)


def clamp_count(value: Any) -> int:
    """A token or event count as the accounting keeps it: an int in 0 … MAX_COUNT (anything else: 0)."""
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNT else (0 if value < 0 else MAX_COUNT)
    if isinstance(value, float) and value > 0:  # NaN fails the comparison
        return MAX_COUNT if value >= MAX_COUNT else int(value)
    return 0


def clamp_token_figure(value: Any) -> float:
    """A forecast token figure (a float field): 0 … the largest float not above MAX_COUNT."""
    if isinstance(value, int | float) and value > 0:  # NaN fails the comparison
        return _MAX_COUNT_FLOAT if value > _MAX_COUNT_FLOAT else float(value)
    return 0.0


def clamp_usd(value: Any) -> float:
    """An amount in USD as the accounting keeps it: a float in 0 … MAX_USD (NaN, negatives, junk: 0)."""
    if isinstance(value, int | float) and value > 0:
        return MAX_USD if value > MAX_USD else float(value)
    return 0.0


def window_sum(a: Any, b: Any) -> list[Any]:
    """Two window rows added field by field, saturating; a stored row that is not one counts as empty."""
    if not isinstance(a, list | tuple) or len(a) != 8:
        a = EMPTY_ROW
    if not isinstance(b, list | tuple) or len(b) != 8:
        b = EMPTY_ROW
    total: list[Any] = [clamp_count(clamp_count(x) + clamp_count(y)) for x, y in zip(a, b, strict=True)]
    total[COST] = clamp_usd(clamp_usd(a[COST]) + clamp_usd(b[COST]))
    return total


def group_summary(provider: str, model: str, kind: str, values: Any) -> dict[str, Any]:
    """One group's sums of a window as the rollup's ``groups`` and ``GET /usage/{tenant}`` list them."""
    return {"provider": provider, "model": model, "kind": kind, "input_tokens": values[INPUT],
            "output_tokens": values[OUTPUT], "cached_tokens": values[CACHED], "events": values[EVENTS],
            "cost_usd": values[COST]}
