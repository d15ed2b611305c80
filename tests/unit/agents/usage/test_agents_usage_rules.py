"""The usage accounting rules on in-memory tables: rollups, boundaries, late and duplicate events,
forecasts and budget alerts. The same code runs in the agent on RocksDB tables (integration tests)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.exceptions import LateEventError, UsageEventError
from agents.usage.accounting import UsageAccountant, UsageConfig
from agents.usage.budgets import Budget, Budgets
from agents.usage.forecast import METHOD, forecast_sum
from agents.usage.keys import HOUR_MS, month_bounds
from agents.usage.pricing import PriceTable
from schemas import UsageEvent, UsageReport
from tests.support.usage_tables import flush, memory_stores

NOW = datetime(2025, 4, 1, tzinfo=UTC)  # the worker's wall clock: after every event below
NOW_MS = int(NOW.timestamp() * 1000)
PRICES = PriceTable.load()


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def event_factory() -> Callable[..., UsageEvent]:
    def make(at: str, tenant: str = "acme", provider: str = "openai", model: str = "gpt-4o", kind: str = "chat",
             inp: int = 0, out: int = 0, cached: int = 0, cost: float | None = None,
             event_id: str | None = None) -> UsageEvent:
        return UsageEvent(event_id=event_id or str(uuid.uuid4()), tenant=tenant, occurred_at=at, provider=provider,
                          model=model, kind=kind, input_tokens=inp, output_tokens=out, cached_tokens=cached,
                          cost_usd=cost)

    return make


class Harness:
    """An accountant over in-memory tables; ``run`` accounts one batch and keeps its reports."""

    def __init__(self, budgets: Budgets | None = None, **config: Any) -> None:
        self.config = UsageConfig(**{"idle_close_ms": 0, **config})
        self.stores = memory_stores()
        self.accountant = UsageAccountant(self.config, PRICES, budgets or Budgets())
        self.reports: list[UsageReport] = []
        self.errors: list[Exception] = []

    def restart(self) -> None:
        """A new accountant on the same stores (what a worker restart restores from the changelog)."""
        self.accountant = UsageAccountant(self.config, PRICES, self.accountant.budgets)

    def run(self, *events: UsageEvent, now_ms: int = NOW_MS, tick: bool = False) -> list[bool]:
        account = self.accountant.begin(self.stores, now_ms)
        accepted = []
        for event in events:
            try:
                accepted.append(account.add(event))
            except UsageEventError as exc:
                self.errors.append(exc)
                accepted.append(False)
        self.reports += [report for _, report in account.finish(idle_close=tick)]
        flush(self.stores)
        return accepted

    def rollups(self, window: str | None = None) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        return {
            (r.window, r.window_start.isoformat() if r.window_start else None, r.provider, r.model, r.kind):
            (r.input_tokens, r.output_tokens, r.cached_tokens, r.events, pytest.approx(r.cost_usd, abs=1e-12), r.method)
            for r in self.reports if r.report == "rollup" and (window is None or r.window == window)
        }

    def of(self, kind: str) -> list[UsageReport]:
        return [r for r in self.reports if r.report == kind]


def test_rollups_equal_the_hand_computed_set(event_factory: Callable[..., UsageEvent]) -> None:
    e = event_factory
    harness = Harness()
    harness.run(
        # gpt-4o: 2.50 in, 1.25 cached, 10.00 out per 1M: (600*2.5 + 400*1.25 + 200*10) / 1e6 = 0.004
        e("2025-03-01T10:05:00Z", inp=1000, out=200, cached=400),
        e("2025-03-01T10:40:00Z", inp=2000, out=100, cost=0.05),  # reported cost wins over the table
        e("2025-03-01T10:59:59.999Z", model="text-embedding-3-small", kind="embedding", inp=5000),  # 0.0001
    )
    assert harness.of("rollup") == [], "no window closes before the event time passes end + grace"
    harness.run(
        e("2025-03-01T11:00:00Z", inp=100, out=100),  # (100*2.5 + 100*10) / 1e6 = 0.00125, in the 11:00 window
        e("2025-03-01T11:30:00Z", provider="local", model="smollm2-135m-instruct", inp=50, out=60),  # free
        e("2025-03-01T11:31:00Z", provider="acme", model="mystery-model", inp=10, out=10),  # no price
    )
    harness.run(e("2025-03-02T00:10:00Z", model="gpt-4o-mini", inp=1, out=1))  # closes 10:00, 11:00 and 03-01

    h10, h11, d1 = "2025-03-01T10:00:00+00:00", "2025-03-01T11:00:00+00:00", "2025-03-01T00:00:00+00:00"
    c = "cost: reported={} priced={} unpriced={}".format
    assert harness.rollups() == {
        ("hour", h10, "openai", "gpt-4o", "chat"): (3000, 300, 400, 2, 0.054, c(1, 1, 0)),
        ("hour", h10, "openai", "text-embedding-3-small", "embedding"): (5000, 0, 0, 1, 0.0001, c(0, 1, 0)),
        ("hour", h10, None, None, None): (8000, 300, 400, 3, 0.0541, c(1, 2, 0)),
        ("hour", h11, "openai", "gpt-4o", "chat"): (100, 100, 0, 1, 0.00125, c(0, 1, 0)),
        ("hour", h11, "local", "smollm2-135m-instruct", "chat"): (50, 60, 0, 1, 0.0, c(0, 1, 0)),
        ("hour", h11, "acme", "mystery-model", "chat"): (10, 10, 0, 1, 0.0, c(0, 0, 1)),
        ("hour", h11, None, None, None): (160, 170, 0, 3, 0.00125, c(0, 2, 1)),
        ("day", d1, "openai", "gpt-4o", "chat"): (3100, 400, 400, 3, 0.05525, c(1, 2, 0)),
        ("day", d1, "openai", "text-embedding-3-small", "embedding"): (5000, 0, 0, 1, 0.0001, c(0, 1, 0)),
        ("day", d1, "local", "smollm2-135m-instruct", "chat"): (50, 60, 0, 1, 0.0, c(0, 1, 0)),
        ("day", d1, "acme", "mystery-model", "chat"): (10, 10, 0, 1, 0.0, c(0, 0, 1)),
        ("day", d1, None, None, None): (8160, 470, 400, 6, 0.05535, c(1, 4, 1)),
    }
    # Closed windows are gone from the table; the open ones (the 00:00 hour and day of 03-02) remain.
    assert sorted(key.split("|")[-2] for key, _ in harness.stores.windows.items()) == ["day", "hour"]
    # Rollup ids are deterministic: a replay after a crash sends the same ids.
    ids = {r.event_id for r in harness.of("rollup")}
    assert len(ids) == 12


def test_window_boundaries_and_the_grace_period(event_factory: Callable[..., UsageEvent]) -> None:
    e = event_factory
    harness = Harness(grace_ms=300_000)
    harness.run(e("2025-03-01T10:30:00Z", inp=1), e("2025-03-01T11:04:59.999Z", inp=1))
    # The 10:00 window ends at 11:00 and closes at 11:05:00.000: until then a 10:xx event still counts.
    assert harness.run(e("2025-03-01T10:59:00Z", inp=10)) == [True]
    harness.run(e("2025-03-01T11:05:00Z", inp=1))  # event time reaches 11:05:00.000: closed
    assert harness.run(e("2025-03-01T10:59:59.999Z", inp=100)) == [False]
    assert isinstance(harness.errors[-1], LateEventError)
    assert "late event" in str(harness.errors[-1]) and "grace 300 s" in str(harness.errors[-1])

    (hour10,) = [r for r in harness.of("rollup") if r.window == "hour" and r.provider is None]
    assert hour10.window_start == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert hour10.window_end == datetime(2025, 3, 1, 11, tzinfo=UTC)
    assert (hour10.input_tokens, hour10.events) == (11, 2), "the late-but-within-grace event counts, the later one not"


def test_late_event_within_grace_of_a_day_but_not_of_its_hour_is_late(event_factory: Callable[..., UsageEvent]) -> None:
    """One rule for both window sizes: the hour decides, so no event is in one rollup and not the other."""
    harness = Harness()
    harness.run(event_factory("2025-03-01T10:00:00Z", inp=1), event_factory("2025-03-01T13:00:00Z", inp=1))
    assert harness.run(event_factory("2025-03-01T10:30:00Z", inp=1)) == [False]
    assert isinstance(harness.errors[-1], LateEventError)


def test_duplicates_are_counted_once(event_factory: Callable[..., UsageEvent]) -> None:
    e = event_factory
    harness = Harness()
    first = e("2025-03-01T10:00:00Z", inp=7, cost=1.0)
    again = first.model_copy()
    assert harness.run(first, again) == [True, False]  # in one batch
    assert harness.run(again) == [False]  # in a later one
    harness.restart()
    assert harness.run(again) == [False]  # after a restart (the seen table is state, not memory)
    harness.run(e("2025-03-02T00:10:00Z"))
    day = [r for r in harness.of("rollup") if r.window == "day" and r.provider is None]
    assert [(r.input_tokens, r.events, r.cost_usd) for r in day] == [(7, 1, 1.0)]


def test_rule_breaking_events_change_nothing(event_factory: Callable[..., UsageEvent]) -> None:
    harness = Harness()
    future = event_factory("2025-04-01T00:10:00Z", inp=1)  # 10 min ahead of the worker's clock
    bad_cache = event_factory("2025-03-01T10:00:00Z", inp=5, cached=6)
    assert harness.run(future, bad_cache) == [False, False]
    assert "ahead of the worker's clock" in str(harness.errors[0])
    assert "cached_tokens (6) exceeds input_tokens (5)" in str(harness.errors[1])
    assert not list(harness.stores.seen.items()) and not list(harness.stores.windows.items())
    assert harness.run(bad_cache.model_copy(update={"cached_tokens": 5})) == [True], "a fixed re-drive is accepted"


def test_idle_tenant_closes_its_windows_by_the_wall_clock(event_factory: Callable[..., UsageEvent]) -> None:
    harness = Harness(idle_close_ms=60_000)
    harness.run(event_factory("2025-03-01T10:00:00Z", inp=3), now_ms=NOW_MS)
    harness.run(now_ms=NOW_MS + 59_000, tick=True)
    assert harness.of("rollup") == []
    harness.run(now_ms=NOW_MS + 60_000, tick=True)
    assert {(r.window, r.input_tokens) for r in harness.of("rollup") if r.provider is None} == {("hour", 3), ("day", 3)}
    harness.run(now_ms=NOW_MS + 120_000, tick=True)
    assert len(harness.of("rollup")) == 4, "a window closes once"


def test_forecast_from_the_hourly_history(event_factory: Callable[..., UsageEvent]) -> None:
    harness = Harness(confidence=0.8)
    costs = [0.5 + 0.01 * hour + (0.03 if hour % 3 else -0.02) for hour in range(48)]
    start = ms("2025-03-10T00:00:00")
    events = [event_factory(datetime.fromtimestamp((start + h * HOUR_MS + 60_000) / 1000, UTC).isoformat(),
                            inp=100 + h, cost=cost) for h, cost in enumerate(costs)]
    harness.run(*events)
    harness.run(event_factory("2025-03-12T00:05:00Z", inp=1, cost=0.0))  # closes hour 47 (ends 00:00, +5 min)

    forecasts = {r.window: r for r in harness.of("forecast")}
    assert set(forecasts) == {"24h", "7d", "month"}
    day = forecasts["24h"]
    expected = forecast_sum(costs, 24, 0.8)
    assert day.history_points == 48 and day.confidence == 0.8 and day.method == METHOD
    assert day.forecast_cost_usd == pytest.approx(expected.total)
    assert (day.lower_cost_usd, day.upper_cost_usd) == (pytest.approx(expected.lower), pytest.approx(expected.upper))
    assert day.forecast_tokens == pytest.approx(forecast_sum([100 + h for h in range(48)], 24, 0.8).total)
    assert day.window_start == datetime(2025, 3, 12, tzinfo=UTC)
    assert day.window_end == datetime(2025, 3, 13, tzinfo=UTC)
    month = forecasts["month"]
    assert month.window_end == datetime(2025, 4, 1, tzinfo=UTC)
    assert month.spent_usd == pytest.approx(sum(costs)), "the month's closed spend so far"
    assert harness.stores.latest.get("acme")["forecast"]["24h"]["forecast_cost_usd"] == pytest.approx(expected.total)


def test_each_budget_alert_once_per_period_even_after_a_restart(event_factory: Callable[..., UsageEvent]) -> None:
    harness = Harness(budgets=Budgets(thresholds=(0.8, 1.0), default=Budget(monthly_usd=1.0)))
    for cost in (0.5, 0.35, 0.1):  # 0.85: crosses 80 %
        harness.run(event_factory("2025-03-01T10:00:00Z", cost=cost))
    harness.restart()
    for cost in (0.1, 0.5):  # 1.05: crosses 100 %; 1.55: nothing new
        harness.run(event_factory("2025-03-01T10:10:00Z", cost=cost))
    alerts = [(a.period, a.method, a.threshold, a.budget_usd, round(a.spent_usd or 0, 6))
              for a in harness.of("budget_alert")]
    assert alerts == [("month", "actual", 0.8, 1.0, 0.85), ("month", "actual", 1.0, 1.0, 1.05)]
    first = harness.of("budget_alert")[0]
    assert first.window_start == datetime(2025, 3, 1, tzinfo=UTC)
    assert first.window_end == datetime(2025, 4, 1, tzinfo=UTC)
    # A new month is a new period: the thresholds alert again.
    harness.run(event_factory("2025-04-01T00:00:00Z", cost=0.9))
    assert [(a.window_start, a.method, a.threshold) for a in harness.of("budget_alert")][2:] == [
        (datetime(2025, 4, 1, tzinfo=UTC), "actual", 0.8)
    ]


def test_forecast_budget_alert(event_factory: Callable[..., UsageEvent]) -> None:
    """Spend of 1 USD/hour for 24 h against a 300 USD month: actual 8 %, forecast to month end far above."""
    harness = Harness(budgets=Budgets(thresholds=(0.8, 1.0), tenants={"acme": Budget(monthly_usd=300.0)}))
    start = ms("2025-03-01T00:00:00")
    harness.run(*(event_factory(datetime.fromtimestamp((start + h * HOUR_MS) / 1000, UTC).isoformat(), cost=1.0)
                  for h in range(24)))
    harness.run(event_factory("2025-03-02T00:05:00Z", cost=0.0))
    alerts = harness.of("budget_alert")
    assert {(a.method, a.threshold) for a in alerts} == {("forecast", 0.8), ("forecast", 1.0)}
    # Raised as soon as hours 00:00-21:00 closed (event time 23:00): 22 USD spent, 722 h to go at 1 USD/h.
    alert = alerts[0]
    assert alert.spent_usd == pytest.approx(22.0)
    assert alert.forecast_cost_usd == pytest.approx(22.0 + 722.0)
    assert alert.lower_cost_usd == pytest.approx(744.0) and alert.upper_cost_usd == pytest.approx(744.0)
    assert alert.history_points == 22 and alert.confidence == 0.9
    harness.run(event_factory("2025-03-02T01:05:00Z", cost=1.0))
    assert len(harness.of("budget_alert")) == 2, "no second alert in the same period"


def test_seen_ids_expire(event_factory: Callable[..., UsageEvent]) -> None:
    harness = Harness(dedupe_ttl_ms=1_000)
    event = event_factory("2025-03-01T10:00:00Z", inp=1)
    harness.run(event)
    account = harness.accountant.begin(harness.stores, NOW_MS + 1_000)
    assert account.sweep_seen() == 1
    assert harness.run(event, now_ms=NOW_MS + 1_000) == [True]


def test_month_bounds_are_utc_calendar_months() -> None:
    assert month_bounds(ms("2024-12-31T23:59:59")) == (ms("2024-12-01T00:00:00"), ms("2025-01-01T00:00:00"))
    assert month_bounds(ms("2024-02-10T00:00:00")) == (ms("2024-02-01T00:00:00"), ms("2024-03-01T00:00:00"))
