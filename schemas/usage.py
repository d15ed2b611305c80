"""Usage events: token/cost records of single model calls, and the reports the usage agent derives.

``UsageReport`` is one record for three report kinds (rollup, forecast, budget alert) so that the
reports topic has a single value schema; fields that do not apply to a kind stay at their defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.envelope import Envelope, UtcDatetime

__all__ = ["UsageEvent", "UsageKind", "UsageReport", "UsageReportKind"]

UsageKind = Literal["chat", "embedding"]
UsageReportKind = Literal["rollup", "forecast", "budget_alert"]


class UsageEvent(Envelope):
    """Tokens and cost of one provider call; ``source_event_id`` names the event that caused it."""

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    kind: UsageKind
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    cost_usd: float | None = Field(default=None, ge=0.0)
    latency_ms: float | None = Field(default=None, ge=0.0)
    source_event_id: str | None = None


class UsageReport(Envelope):
    """A rollup over a window, a cost forecast with its interval, or a budget alert.

    ``window`` is a label such as ``"hour"``, ``"day"``, ``"24h"``, ``"7d"`` or ``"month"``;
    ``provider``/``model``/``kind`` are the grouping keys (``None`` = all).
    """

    report: UsageReportKind
    window: str | None = None
    window_start: UtcDatetime | None = None
    window_end: UtcDatetime | None = None
    provider: str | None = None
    model: str | None = None
    kind: str | None = None
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    events: int = Field(default=0, ge=0)
    cost_usd: float = 0.0
    forecast_tokens: float | None = None
    forecast_cost_usd: float | None = None
    lower_cost_usd: float | None = None
    upper_cost_usd: float | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    history_points: int | None = Field(default=None, ge=0)
    method: str | None = None
    budget_usd: float | None = None
    spent_usd: float | None = None
    threshold: float | None = None
    period: str | None = None
