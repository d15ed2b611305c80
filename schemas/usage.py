"""Usage events: token/cost records of single model calls, and the reports the usage agent derives.

``UsageReport`` is one record for three report kinds (rollup, forecast, budget alert) so that the
reports topic has a single value schema; fields that do not apply to a kind stay at their defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.bounds import (
    NAME_MAX_CHARS,
    Amount,
    Count,
    DurationMs,
    Name,
    Sum,
    UsdPerCall,
)
from schemas.envelope import Envelope, UtcDatetime

__all__ = ["UsageEvent", "UsageKind", "UsageReport", "UsageReportKind"]

UsageKind = Literal["chat", "embedding"]
UsageReportKind = Literal["rollup", "forecast", "budget_alert"]


class UsageEvent(Envelope):
    """Tokens and cost of one provider call; ``source_event_id`` names the event that caused it."""

    provider: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    model: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    kind: UsageKind
    input_tokens: Count = 0
    output_tokens: Count = 0
    cached_tokens: Count = 0
    cost_usd: UsdPerCall | None = None
    latency_ms: DurationMs | None = None
    source_event_id: Name | None = None


class UsageReport(Envelope):
    """A rollup over a window, a cost forecast with its interval, or a budget alert.

    ``window`` is a label such as ``"hour"``, ``"day"``, ``"24h"``, ``"7d"`` or ``"month"``;
    ``provider``/``model``/``kind`` are the grouping keys (``None`` = all).
    """

    report: UsageReportKind
    window: Name | None = None
    window_start: UtcDatetime | None = None
    window_end: UtcDatetime | None = None
    provider: Name | None = None
    model: Name | None = None
    kind: Name | None = None
    input_tokens: Sum = 0
    output_tokens: Sum = 0
    cached_tokens: Sum = 0
    events: Sum = 0
    cost_usd: Amount = 0.0
    forecast_tokens: Amount | None = None
    forecast_cost_usd: Amount | None = None
    lower_cost_usd: Amount | None = None
    upper_cost_usd: Amount | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    history_points: Count | None = None
    method: Name | None = None
    budget_usd: Amount | None = None
    spent_usd: Amount | None = None
    threshold: Amount | None = None
    period: Name | None = None
