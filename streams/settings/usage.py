"""Settings of usage metrics: prices, budgets, windows and forecasts."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from streams.settings.base import Section, split_csv

__all__ = ["UsageSettings"]


class UsageSettings(Section):
    section_title: ClassVar[str] = "Usage metrics: prices, budgets, windows and forecasts"

    prices_file: Path | None = Field(
        None, alias="SOMA_PRICES_FILE",
        description="JSON or TOML file of model prices (USD per 1M tokens) laid over the shipped price table.",
    )
    budgets_file: Path | None = Field(
        None, alias="SOMA_BUDGETS_FILE",
        description="JSON or TOML file of per-tenant budgets (monthly_usd, daily_usd) and alert thresholds.",
    )
    budget_monthly_usd: float | None = Field(
        None, alias="SOMA_BUDGET_MONTHLY_USD", gt=0,
        description="Monthly budget in USD of every tenant the budgets file does not name (unset: none).",
    )
    budget_daily_usd: float | None = Field(
        None, alias="SOMA_BUDGET_DAILY_USD", gt=0,
        description="Daily budget in USD of every tenant the budgets file does not name (unset: none).",
    )
    budget_thresholds: list[float] = Field(
        default_factory=lambda: [0.8, 1.0], alias="SOMA_BUDGET_THRESHOLDS",
        description="Comma-separated shares of a budget that raise an alert (each once per period).",
    )
    usage_grace_seconds: int = Field(
        300, alias="SOMA_USAGE_GRACE_SECONDS", ge=0, le=86_400,
        description="How long after a window's end late usage events are still counted in it.",
    )
    usage_idle_close_seconds: float = Field(
        60.0, alias="SOMA_USAGE_IDLE_CLOSE_SECONDS", ge=0,
        description="A tenant silent this long has its event-time clock moved to the wall clock, closing "
        "its due windows (0: only newer events close windows).",
    )
    usage_max_future_seconds: int = Field(
        300, alias="SOMA_USAGE_MAX_FUTURE_SECONDS", ge=0,
        description="Usage events dated further ahead of the worker's clock go to the DLQ.",
    )
    usage_tick_seconds: float = Field(
        5.0, alias="SOMA_USAGE_TICK_SECONDS", gt=0, le=300,
        description="How often the usage agent looks for windows to close when no events arrive.",
    )
    forecast_confidence: float = Field(
        0.9, alias="SOMA_FORECAST_CONFIDENCE", gt=0, lt=1,
        description="Confidence of the forecast prediction intervals.",
    )
    forecast_history_hours: int = Field(
        336, alias="SOMA_FORECAST_HISTORY_HOURS", ge=3, le=8_784,
        description="Most closed hours of a tenant's history the forecast fits (14 days).",
    )

    _split_thresholds = field_validator("budget_thresholds", mode="before")(split_csv)

    @field_validator("budget_thresholds")
    @classmethod
    def _thresholds_positive(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < share <= 10 for share in value):
            raise ValueError("expected shares of the budget such as 0.8,1.0 (each above 0, at most 10)")
        return sorted(set(value))
