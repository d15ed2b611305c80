"""The usage rules, independent of Kafka: one :class:`BatchAccount` per partition and batch.

The accountant reads and writes the agent's tables through :class:`Stores` (each table narrowed to the
partition being accounted), so the same code runs on the worker's RocksDB tables and, in the unit
tests, on in-memory ones (:class:`~streams.engine.state.MemoryTable`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.exceptions import LateEventError, UsageEventError
from agents.usage.amounts import (
    CACHED,
    COST,
    EMPTY_ROW,
    EVENTS,
    INPUT,
    MAX_COUNT,
    MAX_USD,
    OUTPUT,
    PRICED,
    REPORTED,
    UNPRICED,
    clamp_count,
    clamp_token_figure,
    clamp_usd,
    group_summary,
    window_sum,
)
from agents.usage.budgets import Budgets, crossed
from agents.usage.forecast import Forecast, Trend
from agents.usage.keys import (
    DAY_MS,
    HOUR_MS,
    SIZES,
    dt,
    floor_hour,
    group_id,
    group_names,
    iso,
    month_bounds,
    month_start_of_day,
    period_bounds,
    report_id,
    size_of,
    start_of,
    window_key,
)
from agents.usage.pricing import PriceTable
from schemas import UsageEvent, UsageReport
from streams.engine import BaseTable
from streams.settings import Settings

__all__ = [
    "TABLES",
    "BatchAccount",
    "BatchStats",
    "Stores",
    "TablePartition",
    "UsageAccountant",
    "UsageConfig",
]

logger = logging.getLogger(__name__)

TABLES = ("seen", "windows", "tenants", "history", "latest")
HORIZONS = (("24h", 24), ("7d", 168))

_REPORT_DEFAULTS = {name: field.default for name, field in UsageReport.model_fields.items()
                    if field.default_factory is None and not field.is_required()}


def _report(now_ms: int, **values: Any) -> UsageReport:
    """A report built from values this module computed: validation skipped, which is most of the cost.

    Every field is given, so pydantic resolves no default factory per report (that is slow).
    """
    return UsageReport.model_construct(**{**_REPORT_DEFAULTS, "occurred_at": dt(now_ms), **values})


# -- storage ------------------------------------------------------------------------------------------


class TablePartition:
    """A table narrowed to one partition: what the accounting reads and writes."""

    def __init__(self, table: BaseTable, partition: int) -> None:
        self.table = table
        self.partition = partition

    def get(self, key: str) -> Any:
        return self.table.get(key, self.partition)

    def set(self, key: str, value: Any) -> None:
        self.table.set(key, value, self.partition)

    def delete(self, key: str) -> None:
        self.table.delete(key, self.partition)

    def items(self) -> Iterator[tuple[str, Any]]:
        return self.table.items(self.partition)


@dataclass
class Stores:
    seen: TablePartition
    windows: TablePartition
    tenants: TablePartition
    history: TablePartition
    latest: TablePartition

    @classmethod
    def of_partition(cls, tables: Mapping[str, BaseTable], partition: int) -> Stores:
        return cls(*(TablePartition(tables[name], partition) for name in TABLES))


# -- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageConfig:
    grace_ms: int = 300_000
    idle_close_ms: int = 60_000
    max_future_ms: int = 300_000
    dedupe_ttl_ms: int = 604_800_000
    confidence: float = 0.9
    history_hours: int = 336

    @classmethod
    def from_settings(cls, settings: Settings) -> UsageConfig:
        return cls(
            grace_ms=settings.usage_grace_seconds * 1000,
            idle_close_ms=int(settings.usage_idle_close_seconds * 1000),
            max_future_ms=settings.usage_max_future_seconds * 1000,
            dedupe_ttl_ms=settings.dedupe_ttl_seconds * 1000,
            confidence=settings.forecast_confidence,
            history_hours=settings.forecast_history_hours,
        )


# -- the accounting -----------------------------------------------------------------------------------


@dataclass
class BatchStats:
    """What one batch accounted, for the Prometheus counters."""

    accepted: int = 0
    duplicates: int = 0
    #: (tenant, model) -> [input, output, cached, cost]
    usage: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0.0]))
    unpriced: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    windows_closed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    alerts: list[UsageReport] = field(default_factory=list)


class UsageAccountant:
    """The rules, independent of Kafka: one :class:`BatchAccount` per partition and batch."""

    def __init__(self, config: UsageConfig, prices: PriceTable, budgets: Budgets) -> None:
        self.config = config
        self.prices = prices
        self.budgets = budgets
        self._warned_unpriced: set[str] = set()
        self.groups: dict[tuple[str, str, str], str] = {}

    def begin(self, stores: Stores, now_ms: int) -> BatchAccount:
        return BatchAccount(self, stores, now_ms)

    def cost_of(self, event: UsageEvent) -> tuple[float, int]:
        """(cost, source) with source 0 = reported, 1 = price table, 2 = unpriced (cost 0)."""
        if event.cached_tokens > event.input_tokens:
            raise UsageEventError(
                f"cached_tokens ({event.cached_tokens}) exceeds input_tokens ({event.input_tokens}): cached "
                "tokens are the part of the input tokens served from the provider's cache"
            )
        if event.input_tokens > MAX_COUNT or event.output_tokens > MAX_COUNT:
            raise UsageEventError(f"a token count ({max(event.input_tokens, event.output_tokens)}) exceeds "
                                  f"{MAX_COUNT}, the most a report can hold")
        if event.cost_usd is not None:
            return _checked_cost(event.cost_usd, "cost_usd"), 0
        try:
            cost = self.prices.cost(event.model, event.input_tokens, event.output_tokens, event.cached_tokens)
        except (ArithmeticError, ValueError) as exc:
            raise UsageEventError(f"the cost of this event cannot be computed from the price table: {exc}") from None
        if cost is None:
            if event.model not in self._warned_unpriced and len(self._warned_unpriced) < 1000:
                self._warned_unpriced.add(event.model)
                logger.warning("no price for model %r (provider %s): its usage events count tokens at cost 0; "
                               "add it to SOMA_PRICES_FILE", event.model, event.provider)
            return 0.0, 2
        return _checked_cost(cost, "the cost from the price table"), 1


def _checked_cost(cost: float, what: str) -> float:
    if not 0 <= cost <= MAX_USD:  # NaN fails too
        raise UsageEventError(f"{what} ({cost!r}) is not a finite amount between 0 and {MAX_USD:g} USD")
    return cost


class BatchAccount:
    """Accounts the events of one batch on one partition; :meth:`finish` writes and reports."""

    def __init__(self, accountant: UsageAccountant, stores: Stores, now_ms: int) -> None:
        self.a = accountant
        self.config = accountant.config
        self.stores = stores
        self.now_ms = now_ms
        self.stats = BatchStats()
        self._rows: dict[str, dict[str, Any]] = {}
        self._touched: set[str] = set()
        self._deltas: dict[str, list[float]] = {}
        self._reports: list[tuple[str, UsageReport]] = []

    # -- per event ----------------------------------------------------------------------------------

    def row(self, tenant: str) -> dict[str, Any]:
        row = self._rows.get(tenant)
        if row is None:
            row = self.stores.tenants.get(tenant) or {
                "wm": 0, "active": 0, "open": {}, "spend": {}, "closed": {}, "alerts": {}, "fc": 0,
            }
            for section in ("spend", "closed"):  # sums written by an older version may be inf/NaN
                row[section] = {key: clamp_usd(value) for key, value in row[section].items()}
            self._rows[tenant] = row
        return row

    def add(self, event: UsageEvent) -> bool:
        """Account one event; False for a duplicate. Raises (changing nothing) when it must be dead-lettered."""
        seen = self.stores.seen
        if seen.get(event.event_id) is not None:
            self.stats.duplicates += 1
            return False
        config = self.config
        ts = int(event.occurred_at.timestamp() * 1000)
        if ts > self.now_ms + config.max_future_ms:
            raise UsageEventError(
                f"occurred_at {iso(ts)} is {(ts - self.now_ms) / 1000:.0f} s ahead of the worker's clock "
                f"(at most {config.max_future_ms // 1000} s allowed)"
            )
        cost, source = self.a.cost_of(event)
        tenant = event.tenant
        row = self.row(tenant)
        hour = ts - ts % HOUR_MS
        if hour + HOUR_MS + config.grace_ms <= row["wm"]:
            raise LateEventError(
                f"late event: occurred_at {iso(ts)} falls in the hour window {iso(hour)}–{iso(hour + HOUR_MS)}, "
                f"which closed at {iso(hour + HOUR_MS + config.grace_ms)} (window end + grace "
                f"{config.grace_ms // 1000} s); the tenant's event time is already {iso(row['wm'])}"
            )

        # Accepted: from here on nothing raises.
        seen.set(event.event_id, self.now_ms + config.dedupe_ttl_ms)
        if ts > row["wm"]:
            row["wm"] = ts
        row["active"] = self.now_ms
        self._touched.add(tenant)
        names = (event.provider, event.model, event.kind)
        group = self.a.groups.get(names)
        if group is None:
            group = group_id(*names)
            if len(self.a.groups) < 100_000:
                self.a.groups[names] = group
        day = ts - ts % DAY_MS
        for size, start in (("hour", hour), ("day", day)):
            key = window_key(tenant, group, size, start)
            delta = self._deltas.get(key)
            if delta is None:
                delta = self._deltas[key] = [0, 0, 0, 0, 0.0, 0, 0, 0]
                groups = row["open"].setdefault(f"{size}:{start}", [])
                if group not in groups:
                    groups.append(group)
            delta[INPUT] += event.input_tokens
            delta[OUTPUT] += event.output_tokens
            delta[CACHED] += event.cached_tokens
            delta[EVENTS] += 1
            delta[COST] += cost
            delta[REPORTED + source] += 1
        spend = row["spend"]
        for key in (f"day:{day}", f"month:{month_start_of_day(day)}"):
            spend[key] = spend.get(key, 0.0) + cost

        stats = self.stats
        stats.accepted += 1
        usage = stats.usage[(tenant, event.model)]
        usage[0] += event.input_tokens
        usage[1] += event.output_tokens
        usage[2] += event.cached_tokens
        usage[3] += cost
        if source == 2:
            stats.unpriced[event.model] += 1
        return True

    # -- per batch ----------------------------------------------------------------------------------

    def finish(self, idle_close: bool = False) -> list[tuple[str, UsageReport]]:
        """Write the batch's sums, close due windows, forecast and check budgets; the reports to send.

        ``idle_close``: also apply the idle rule to the partition's silent tenants; the agent passes it
        on its ticks only once it has caught up with the partition (see the module docstring).
        """
        windows = self.stores.windows
        for key, delta in self._deltas.items():
            windows.set(key, window_sum(windows.get(key), delta))
        self._deltas = {}

        for tenant in sorted(self._touched):
            row = self._rows[tenant]
            self._close_due(tenant, row)
            self._advance(tenant, row)
            self._check_actual(tenant, row)
            self.stores.tenants.set(tenant, row)

        if idle_close and self.config.idle_close_ms > 0:
            for tenant, stored in list(self.stores.tenants.items()):
                if tenant in self._touched:
                    continue
                row = self._rows.get(tenant, stored)
                if self._idle_advance(row):
                    self._close_due(tenant, row)
                    self._advance(tenant, row)
                    self.stores.tenants.set(tenant, row)
        reports, self._reports = self._reports, []
        return reports

    def _idle_advance(self, row: dict[str, Any]) -> bool:
        """Move a silent tenant's clock to the wall clock when that closes something."""
        now, grace = self.now_ms, self.config.grace_ms
        if now - row["active"] < self.config.idle_close_ms or row["wm"] >= now:
            return False
        closes_window = any(start_of(key) + SIZES[size_of(key)] + grace <= now for key in row["open"])
        closes_hour = floor_hour(now - grace) > row["fc"] and row["fc"] > 0
        if not (closes_window or closes_hour):
            return False
        row["wm"] = now
        return True

    def _close_due(self, tenant: str, row: dict[str, Any]) -> None:
        wm, grace = row["wm"], self.config.grace_ms
        due = sorted(
            (start_of(key) + SIZES[size_of(key)], size_of(key), start_of(key), key)
            for key in row["open"]
            if start_of(key) + SIZES[size_of(key)] + grace <= wm
        )
        latest = None
        for end, size, start, key in due:
            groups = row["open"].pop(key)
            total: list[Any] = list(EMPTY_ROW)
            summaries = []
            for group in groups:
                wkey = window_key(tenant, group, size, start)
                values = self.stores.windows.get(wkey)
                self.stores.windows.delete(wkey)
                if values is None:
                    continue
                values = window_sum(values, EMPTY_ROW)  # clamped: a row of an older version may hold inf
                total = window_sum(total, values)
                provider, model, kind = group_names(group)
                report = self._rollup(tenant, size, start, end, values, provider, model, kind)
                self._reports.append((tenant, report))
                summaries.append(group_summary(provider, model, kind, values))
            if not summaries:
                continue
            report = self._rollup(tenant, size, start, end, total, None, None, None)
            self._reports.append((tenant, report))
            self.stats.windows_closed[size] += 1
            if size == "hour":
                self._record_hour(tenant, row, start, total[COST], clamp_count(total[INPUT] + total[OUTPUT]))
            if latest is None:
                latest = self.stores.latest.get(tenant) or {}
            latest[size] = {**_summary(report), "groups": summaries}
        if latest is not None:
            self.stores.latest.set(tenant, latest)

        for section in ("spend", "closed", "alerts"):
            for key in list(row[section]):
                period, start = key.split(":")
                if period_bounds(period, int(start))[1] + grace <= wm:
                    del row[section][key]

    def _rollup(self, tenant: str, size: str, start: int, end: int, values: list[float], provider: str | None,
                model: str | None, kind: str | None) -> UsageReport:
        return _report(
            self.now_ms,
            event_id=report_id("rollup", tenant, provider, model, kind, size, start),
            tenant=tenant,
            report="rollup",
            window=size,
            window_start=dt(start),
            window_end=dt(end),
            provider=provider,
            model=model,
            kind=kind,
            input_tokens=clamp_count(values[INPUT]),
            output_tokens=clamp_count(values[OUTPUT]),
            cached_tokens=clamp_count(values[CACHED]),
            events=clamp_count(values[EVENTS]),
            cost_usd=clamp_usd(values[COST]),
            method=f"cost: reported={int(values[REPORTED])} priced={int(values[PRICED])} "
                   f"unpriced={int(values[UNPRICED])}",
        )

    def _record_hour(self, tenant: str, row: dict[str, Any], start: int, cost: float, tokens: float) -> None:
        history = self._history(tenant, start)
        slot = (start - history["start"]) // HOUR_MS
        if slot < len(history["cost"]):  # an hour already in the history (zero-filled): add to it
            if slot >= 0:
                history["cost"][slot] = clamp_usd(clamp_usd(history["cost"][slot]) + cost)
                history["tokens"][slot] = clamp_count(clamp_count(history["tokens"][slot]) + tokens)
        else:
            history["cost"].append(cost)
            history["tokens"].append(tokens)
        self._trim(history)
        self.stores.history.set(tenant, history)
        for period in ("day", "month"):
            key = f"{period}:{period_bounds(period, start)[0]}"
            row["closed"][key] = clamp_usd(row["closed"].get(key, 0.0) + cost)

    def _history(self, tenant: str, until: int) -> dict[str, Any]:
        """The tenant's hourly history, zero-filled up to (not including) the hour starting at ``until``."""
        history = self.stores.history.get(tenant)
        cap = self.config.history_hours
        if history is None:
            return {"start": until, "cost": [], "tokens": []}
        end = history["start"] + len(history["cost"]) * HOUR_MS
        gap = (until - end) // HOUR_MS
        if gap > cap:
            return {"start": until - cap * HOUR_MS, "cost": [0.0] * cap, "tokens": [0.0] * cap}
        if gap > 0:
            history["cost"].extend([0.0] * gap)
            history["tokens"].extend([0.0] * gap)
        return history

    def _trim(self, history: dict[str, Any]) -> None:
        extra = len(history["cost"]) - self.config.history_hours
        if extra > 0:
            del history["cost"][:extra]
            del history["tokens"][:extra]
            history["start"] += extra * HOUR_MS

    def _advance(self, tenant: str, row: dict[str, Any]) -> None:
        """When the tenant's closed hours moved on: forecast from the new history, check budgets on it."""
        closed_until = floor_hour(row["wm"] - self.config.grace_ms)
        if closed_until <= row["fc"] or self.stores.history.get(tenant) is None:
            return
        row["fc"] = closed_until
        history = self._history(tenant, closed_until)
        self._trim(history)
        self.stores.history.set(tenant, history)
        confidence = self.config.confidence
        costs, tokens = history["cost"], history["tokens"]
        cost_trend, token_trend = Trend.fit(costs), Trend.fit(tokens)
        budget = self.a.budgets.for_tenant(tenant)
        forecasts: dict[str, Any] = {}
        month_start, month_end = month_bounds(closed_until)
        horizons = [*HORIZONS, ("month", (month_end - closed_until) // HOUR_MS)]
        for label, hours in horizons:
            cost = cost_trend.forecast(hours, confidence)
            token = token_trend.forecast(hours, confidence)
            spent = row["closed"].get(f"month:{month_start}", 0.0) if label == "month" else None
            report = _report(
                self.now_ms,
                event_id=report_id("forecast", tenant, label, closed_until),
                tenant=tenant,
                report="forecast",
                window=label,
                window_start=dt(closed_until),
                window_end=dt(closed_until + hours * HOUR_MS),
                forecast_tokens=clamp_token_figure(token.total),
                forecast_cost_usd=clamp_usd(cost.total),
                lower_cost_usd=None if cost.lower is None else clamp_usd(cost.lower),
                upper_cost_usd=None if cost.upper is None else clamp_usd(cost.upper),
                confidence=cost.confidence,
                history_points=cost.history_points,
                method=cost.method,
                spent_usd=spent,
                budget_usd=budget.limit("month") if label == "month" else None,
                period="month" if label == "month" else None,
            )
            self._reports.append((tenant, report))
            forecasts[label] = {**_summary(report),
                                "lower_tokens": None if token.lower is None else clamp_token_figure(token.lower),
                                "upper_tokens": None if token.upper is None else clamp_token_figure(token.upper)}
        latest = self.stores.latest.get(tenant) or {}
        latest["forecast"] = forecasts
        self.stores.latest.set(tenant, latest)

        for period in ("day", "month"):
            limit = budget.limit(period)
            if limit is None:
                continue
            start, end = period_bounds(period, closed_until)
            hours = (end - closed_until) // HOUR_MS
            ahead = cost_trend.forecast(hours, confidence)
            if ahead.lower is None:
                continue  # no interval yet: too little history to warn on a forecast
            closed = row["closed"].get(f"{period}:{start}", 0.0)
            self._alert(tenant, row, period, start, end, "forecast", clamp_usd(closed + ahead.total), limit, ahead,
                        closed)

    def _check_actual(self, tenant: str, row: dict[str, Any]) -> None:
        budget = self.a.budgets.for_tenant(tenant)
        if budget.empty:
            return
        for key, spent in list(row["spend"].items()):
            period, start_text = key.split(":")
            limit = budget.limit(period)
            if limit is None:
                continue
            start, end = period_bounds(period, int(start_text))
            self._alert(tenant, row, period, start, end, "actual", clamp_usd(spent), limit)

    def _alert(self, tenant: str, row: dict[str, Any], period: str, start: int, end: int, basis: str,
               amount: float, limit: float, ahead: Forecast | None = None, closed: float | None = None) -> None:
        key = f"{period}:{start}"
        sent = row["alerts"].setdefault(key, [])
        # A forecast alert for a threshold the actual spend already reached says nothing new.
        already = [float(entry.split(":")[1]) for entry in sent if basis == "forecast" or entry.startswith("actual:")]
        for share in crossed(amount, limit, self.a.budgets.thresholds, already):
            sent.append(f"{basis}:{share}")
            report = UsageReport(
                event_id=report_id("budget", tenant, period, start, basis, share),
                tenant=tenant,
                report="budget_alert",
                period=period,
                window=period,
                window_start=dt(start),
                window_end=dt(end),
                budget_usd=limit,
                threshold=share,
                method=basis,
                spent_usd=amount if ahead is None else closed,
                cost_usd=amount,
                forecast_cost_usd=None if ahead is None else amount,
                lower_cost_usd=(None if ahead is None or ahead.lower is None
                                else clamp_usd((closed or 0.0) + ahead.lower)),
                upper_cost_usd=(None if ahead is None or ahead.upper is None
                                else clamp_usd((closed or 0.0) + ahead.upper)),
                confidence=None if ahead is None else ahead.confidence,
                history_points=None if ahead is None else ahead.history_points,
            )
            logger.info("budget alert: tenant %s %s %s spend %.4f USD reached %.0f%% of %.2f USD", tenant, basis,
                        period, amount, share * 100, limit)
            self._reports.append((tenant, report))
            self.stats.alerts.append(report)
            latest = self.stores.latest.get(tenant) or {}
            latest["last_alert"] = _summary(report)
            self.stores.latest.set(tenant, latest)

    # -- sweeping -----------------------------------------------------------------------------------

    def sweep_seen(self) -> int:
        """Forget event ids whose dedupe period is over; the number forgotten."""
        expired = [event_id for event_id, until in self.stores.seen.items() if until <= self.now_ms]
        for event_id in expired:
            self.stores.seen.delete(event_id)
        return len(expired)


def _summary(report: UsageReport) -> dict[str, Any]:
    return report.model_dump(mode="json", exclude_none=True, exclude={"schema_version", "correlation_id",
                                                                        "causation_id"})
