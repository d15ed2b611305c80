"""Usage state safety: extreme-but-valid values never make a later step (rollup, forecast, alert, encode)
fail, values a contract might let through are dead-lettered, and state written with inf/NaN is read
back safely; plus the deterministic ids of the usage events our agents derive from turns and jobs."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from agents.exceptions import BudgetFileError, UsageEventError
from agents.usage.accounting import UsageAccountant, UsageConfig
from agents.usage.amounts import MAX_COUNT, MAX_USD
from agents.usage.budgets import Budget, Budgets
from agents.usage.forecast import Trend, forecast_sum
from agents.usage.pricing import ModelPrice, PriceTable
from schemas import UsageEvent, UsageReport, decode_event, derived_event_id, encode_event
from schemas.envelope import DERIVED_ID_NAMESPACE
from tests.support.usage_tables import flush, memory_stores

START = datetime(2025, 3, 3, tzinfo=UTC)
NOW_MS = int((START + timedelta(days=30)).timestamp() * 1000)


def event(hour: int, minute: int = 0, tenant: str = "big", inp: int = 0, out: int = 0,
          cost: float | None = None, model: str = "gpt-4o") -> UsageEvent:
    """Unvalidated like :func:`unchecked`: the sums must saturate even past the contract's per-event bounds."""
    at = START + timedelta(hours=hour, minutes=minute)
    return unchecked(tenant=tenant, occurred_at=at, model=model, input_tokens=inp, output_tokens=out, cost_usd=cost)


def unchecked(**fields: Any) -> UsageEvent:
    """An event the contract may or may not let through (no validation): what the agent must still survive."""
    values = {"event_id": str(uuid.uuid4()), "tenant": "big", "occurred_at": START, "provider": "openai",
              "model": "gpt-4o", "kind": "chat", "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0,
              "cost_usd": None, "latency_ms": None, "source_event_id": None, "schema_version": 1,
              "correlation_id": None, "causation_id": None, **fields}
    return UsageEvent.model_construct(**values)


class Harness:
    def __init__(self, budgets: Budgets | None = None) -> None:
        self.stores = memory_stores()
        self.accountant = UsageAccountant(UsageConfig(idle_close_ms=0), PriceTable.load(), budgets or Budgets())
        self.reports: list[UsageReport] = []
        self.errors: list[Exception] = []

    def run(self, *events: UsageEvent) -> None:
        account = self.accountant.begin(self.stores, NOW_MS)
        for item in events:
            try:
                account.add(item)
            except UsageEventError as exc:
                self.errors.append(exc)
        self.reports += [report for _, report in account.finish()]
        flush(self.stores)

    def check_reports(self) -> None:
        """Every report is finite, within the bounds, and survives the wire (the step after the agent)."""
        assert self.reports
        for report in self.reports:
            for name in ("cost_usd", "forecast_cost_usd", "lower_cost_usd", "upper_cost_usd", "spent_usd",
                         "forecast_tokens"):
                value = getattr(report, name)
                assert value is None or (math.isfinite(value) and 0 <= value <= max(MAX_USD, MAX_COUNT)), (name, report)
            for name in ("input_tokens", "output_tokens", "cached_tokens", "events"):
                assert 0 <= getattr(report, name) <= MAX_COUNT
            assert decode_event(encode_event(report), UsageReport).event_id == report.event_id


# -- extreme but valid ----------------------------------------------------------------------------------


def test_token_sums_saturate_at_the_avro_long_and_every_later_step_runs() -> None:
    harness = Harness()
    for hour in range(6):  # enough closed hours for the forecast with an interval
        harness.run(*(event(hour, minute, inp=MAX_COUNT, out=MAX_COUNT, cost=1.0) for minute in range(0, 60, 10)))
    harness.run(event(8))
    harness.check_reports()
    hours = [r for r in harness.reports if r.report == "rollup" and r.window == "hour" and r.provider is None]
    assert len(hours) == 6
    assert all((r.input_tokens, r.output_tokens, r.events) == (MAX_COUNT, MAX_COUNT, 6) for r in hours)
    forecasts = [r for r in harness.reports if r.report == "forecast"]
    assert forecasts and all(r.forecast_tokens is not None and r.forecast_tokens <= MAX_COUNT for r in forecasts)


def test_cost_sums_saturate_and_forecasts_and_alerts_stay_finite() -> None:
    harness = Harness(Budgets(thresholds=(0.8, 1.0), default=Budget(monthly_usd=1e300, daily_usd=1.0)))
    for hour in range(5):
        harness.run(*(event(hour, minute, cost=MAX_USD) for minute in range(0, 60, 5)))  # 12 × the cap an hour
    harness.run(event(7))
    harness.check_reports()
    hours = [r for r in harness.reports if r.report == "rollup" and r.window == "hour" and r.provider is None]
    assert [r.cost_usd for r in hours] == [MAX_USD] * 5
    alerts = [r for r in harness.reports if r.report == "budget_alert"]
    assert {(a.period, a.method) for a in alerts} >= {("day", "actual")}
    history = harness.stores.history.get("big")
    assert all(math.isfinite(value) and value <= MAX_USD for value in history["cost"])


def test_out_of_bound_values_are_dead_lettered_and_change_nothing() -> None:
    harness = Harness()
    bad = [
        unchecked(input_tokens=10**30),
        unchecked(output_tokens=MAX_COUNT + 1),
        unchecked(cost_usd=math.inf),
        unchecked(cost_usd=math.nan),
        unchecked(cost_usd=MAX_USD * 2),
        unchecked(cost_usd=-1.0),
    ]
    harness.run(*bad)
    assert len(harness.errors) == len(bad), harness.errors
    assert all(isinstance(error, UsageEventError) for error in harness.errors)
    assert harness.stores.tenants.get("big") is None and not list(harness.stores.windows.items())
    assert not list(harness.stores.seen.items()), "a dead-lettered event is not marked seen (it can be re-driven)"


def test_a_priced_cost_beyond_the_bound_is_dead_lettered() -> None:
    harness = Harness()
    harness.accountant.prices = PriceTable({"pricey": ModelPrice(1e12, 1e300)})
    harness.run(event(0, inp=MAX_COUNT, model="pricey"), event(0, out=10**10, model="pricey"),
                event(0, inp=1, model="pricey"))
    assert len(harness.errors) == 2 and all("price table" in str(error) for error in harness.errors), harness.errors
    assert harness.stores.tenants.get("big")["spend"]


def test_state_holding_inf_and_nan_is_read_back_safely() -> None:
    """Tables written by an older version (or by hand) with inf/NaN: the next batches still run."""
    harness = Harness(Budgets(default=Budget(monthly_usd=10.0)))
    harness.run(event(0, inp=10, cost=1.0), event(1, inp=10, cost=1.0))
    stores = harness.stores
    for key, _ in list(stores.windows.items()):
        stores.windows.set(key, [math.inf, math.nan, 0, 1, math.inf, 1, 0, 0])
    history = stores.history.get("big") or {"start": int(START.timestamp() * 1000), "cost": [], "tokens": []}
    history["cost"] = [math.inf, math.nan, -math.inf, 1e308, 1e308]
    history["tokens"] = [math.inf, 10**400, math.nan, 1.0, 2.0]
    stores.history.set("big", history)
    row = stores.tenants.get("big")
    row["spend"] = {key: math.inf for key in row["spend"]}
    row["closed"] = {key: math.nan for key in row["closed"]}
    stores.tenants.set("big", row)

    harness.run(event(3, inp=1, cost=0.5))
    harness.run(event(6, inp=1, cost=0.5))
    harness.check_reports()
    assert [r for r in harness.reports if r.report == "forecast"]


# -- the forecast on any history --------------------------------------------------------------------------


@pytest.mark.parametrize("history", [
    [1e308] * 5,
    [0.0, 1e308, 0.0, 1e308, 0.0, 1e308],
    [math.inf, 1.0, 2.0, 3.0],
    [math.nan, 1.0, 2.0, 3.0],
    [-math.inf, math.inf, math.nan, 1.0],
    [10**400, 0, 0, 0],
    [1e308, 1e308],
    [math.inf],
])
@pytest.mark.parametrize("horizon", [1, 744, 10**6])
def test_forecast_of_any_history_is_finite_and_never_raises(history: list[float], horizon: int) -> None:
    result = forecast_sum(history, horizon, 0.9)
    for value in (result.total, result.lower, result.upper, result.slope, result.residual_sd):
        assert value is None or math.isfinite(value)
    assert result.total >= 0
    if result.lower is not None and result.upper is not None:
        assert 0 <= result.lower <= result.upper


def test_forecast_of_an_exact_line_is_unchanged_by_scaling() -> None:
    line = [3.0 + 2.0 * i for i in range(10)]
    small = Trend.fit(line).forecast(5, 0.9)
    big = Trend.fit([1e300 * y for y in line]).forecast(5, 0.9)
    assert small.total == pytest.approx(sum(3.0 + 2.0 * i for i in range(10, 15)))
    assert big.total == pytest.approx(small.total * 1e300)
    assert big.upper == pytest.approx(small.upper * 1e300)


# -- prices and budgets -----------------------------------------------------------------------------------


def test_a_cost_beyond_floats_is_an_error_not_inf() -> None:
    price = ModelPrice(input_per_mtok=1e300, output_per_mtok=1e300)
    with pytest.raises(ValueError, match="overflows"):
        price.cost(10**20, 0)
    with pytest.raises(ValueError, match="overflows"):
        price.cost(10**400, 0)
    assert ModelPrice(2.5, 10.0).cost(MAX_COUNT, MAX_COUNT) == pytest.approx(MAX_COUNT * 12.5 / 1e6)


@pytest.mark.parametrize("field", ["budget_monthly_usd", "budget_daily_usd"])
def test_a_budget_setting_of_inf_is_refused(field: str) -> None:
    settings = SimpleNamespace(budget_thresholds=[0.8, 1.0], budget_monthly_usd=None, budget_daily_usd=None,
                               budgets_file=None)
    setattr(settings, field, math.inf)
    with pytest.raises(BudgetFileError, match="positive number"):
        Budgets.from_settings(settings)


# -- deterministic ids ------------------------------------------------------------------------------------


def test_usage_ids_derive_from_the_source_event_and_kind() -> None:
    source = "0b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77"
    chat = derived_event_id(source, "usage:chat")
    assert chat == derived_event_id(source, "usage:chat")
    assert chat == str(uuid.uuid5(DERIVED_ID_NAMESPACE, f"{source}:usage:chat"))
    assert chat != derived_event_id(source, "usage:embedding")
    assert chat != derived_event_id("1b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77", "usage:chat")


def test_a_replayed_derived_usage_event_counts_once() -> None:
    """Two usage events derived from one turn (a replay: new occurred_at, same derived id) count once."""
    harness = Harness()
    turn_id = str(uuid.uuid4())
    first = event(0, inp=100, out=10).model_copy(update={"event_id": derived_event_id(turn_id, "usage:chat")})
    again = event(0, 30, inp=100, out=10).model_copy(update={"event_id": derived_event_id(turn_id, "usage:chat")})
    harness.run(first)
    harness.run(again)
    harness.run(event(2))
    (hour,) = [r for r in harness.reports if r.report == "rollup" and r.window == "hour" and r.provider is None
               and r.window_start == START]
    assert (hour.events, hour.input_tokens) == (1, 100)
