"""Usage metrics: rollups per tenant × provider × model × kind, cost forecasts, budget alerts.

The agent reads :class:`~schemas.UsageEvent` from ``soma.usage.events`` (keyed by tenant, from our
agents and from outside producers) and writes :class:`~schemas.UsageReport` to ``soma.usage.reports``.

**Cost.** An event's ``cost_usd`` is taken as reported; without one it is computed from the price
table (:mod:`agents.pricing`). An event of a model with no price keeps its tokens and counts as
*unpriced* (cost 0, named in the rollup's ``method`` and in ``soma_usage_unpriced_events_total``).

**Windows.** Tumbling UTC windows of one hour and one day, on event time (``occurred_at``). Each
tenant has an event-time clock, the newest ``occurred_at`` it has sent. A window closes — its rollups
are reported and its rows deleted — once the tenant's clock passes the window's end plus the grace
period (``SOMA_USAGE_GRACE_SECONDS``). An event whose hour window has already closed by that rule is
*late*: it goes to the DLQ with that reason (it would otherwise change a total already reported). A
tenant that sends nothing for ``SOMA_USAGE_IDLE_CLOSE_SECONDS`` has its clock moved to the wall clock,
so its windows close without new traffic — but only while the worker has caught up with the tenant's
partition (no records left below the high watermark): after downtime or under lag, "silent" only means
"not read yet", and moving the clock then would make the whole backlog late. Events dated more than
``SOMA_USAGE_MAX_FUTURE_SECONDS`` ahead of the worker's clock go to the DLQ (they would close every
window of the tenant at once). Duplicates (an ``event_id`` seen in the last ``SOMA_DEDUPE_TTL_SECONDS``)
are counted once; usage events our agents derive from a turn or an embedding job carry
:func:`schemas.derived_event_id` of it (part ``usage:<kind>``), so a turn or job processed twice (a
crash replay) is counted once.

**Bounds.** Nothing that enters the tables can make a later step fail on every restart: an event with
a token count above :data:`MAX_COUNT` (Avro ``long``) or a cost (reported or priced) that is not a
finite amount of at most :data:`MAX_USD` goes to the DLQ; sums saturate at those bounds; values read
back from the tables are clamped the same way, and the forecast takes any finite or non-finite history.

**Reports**, keyed by tenant, each with a deterministic ``event_id`` (a replay after a crash sends the
same ids, so consumers can drop repeats):

- ``rollup`` — one per provider/model/kind group of a closed window, plus the tenant's total
  (``provider``/``model``/``kind`` null); ``method`` tells where the cost came from, e.g.
  ``cost: reported=3 priced=5 unpriced=0``.
- ``forecast`` — when a tenant's closed hours advance: ``window`` ``24h``, ``7d`` and ``month`` (from
  the end of the last closed hour to the end of the UTC month; ``spent_usd`` is the month's cost of
  the closed hours so far). Method and interval: :mod:`agents.forecast` on the tenant's hourly cost
  and token history (``SOMA_FORECAST_HISTORY_HOURS``, zeros for quiet hours), confidence
  ``SOMA_FORECAST_CONFIDENCE``, ``history_points`` = hours used.
- ``budget_alert`` — when a tenant's spend in a UTC day or month reaches a threshold share of its
  budget (:mod:`agents.budgets`); ``method`` is ``actual`` (spend so far, open windows included) or
  ``forecast`` (closed spend + the forecast for the rest of the period, point estimate; only with an
  interval, i.e. at least 3 hours of history). Each (period, basis, threshold) alerts once; what was
  sent is kept in the tenant's table row, so a restart or a replay does not alert again.

**State** (RocksDB tables with changelogs, partitioned like the input, so one worker owns a tenant):
``seen`` (event id → expiry), ``windows`` (``tenant|provider|model|kind|size|window_start`` → sums of
an open window), ``tenants`` (clock, open windows, period spend, alerts sent), ``history`` (hourly cost
and tokens), ``latest`` (the last rollups and forecast, served over HTTP at ``/usage/{tenant}``).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from agents.budgets import Budgets, crossed
from agents.exceptions import LateEventError, UsageEventError
from agents.forecast import Forecast, Trend
from agents.pricing import PriceTable
from schemas import UsageEvent, UsageReport
from streams import metrics
from streams.catalog import USAGE_EVENTS, USAGE_REPORTS
from streams.engine import AgentContext, AgentRunner, BatchStream, Resources, Table, agent
from streams.engine.registry import running_agent
from streams.settings import Settings
from streams.web import page, partition_for

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MAX_COUNT",
    "MAX_USD",
    "BatchAccount",
    "DictStore",
    "Stores",
    "UsageAccountant",
    "UsageConfig",
    "group_id",
    "month_bounds",
    "window_key",
]

logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SIZES = {"hour": HOUR_MS, "day": DAY_MS}
HORIZONS = (("24h", 24), ("7d", 168))
TABLES = ("seen", "windows", "tenants", "history", "latest")
_NAMESPACE = uuid.UUID("6f0b7c1e-2a47-4c55-9a0e-5d1b0f1c0a11")
_SEEN_SWEEP_MS = 60_000
#: Largest token or event count a report holds (Avro ``long``); sums saturate here.
MAX_COUNT = 2**63 - 1
#: Largest cost in USD one event may claim and a sum holds (saturating): beyond any real bill, far from
#: where float sums and the forecast's squares lose finiteness.
MAX_USD = 1e15
_MAX_COUNT_FLOAT = float(MAX_COUNT - 1023)  # float(MAX_COUNT) rounds up to 2**63

# Window row: [input, output, cached, events, cost, reported, priced, unpriced]
_IN, _OUT, _CACHED, _EVENTS, _COST, _REPORTED, _PRICED, _UNPRICED = range(8)
_EMPTY_ROW = (0, 0, 0, 0, 0.0, 0, 0, 0)


def _count(value: Any) -> int:
    """A token or event count as the accounting keeps it: an int in 0 … MAX_COUNT (anything else: 0)."""
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNT else (0 if value < 0 else MAX_COUNT)
    if isinstance(value, float) and value > 0:  # NaN fails the comparison
        return MAX_COUNT if value >= MAX_COUNT else int(value)
    return 0


def _token_figure(value: Any) -> float:
    """A forecast token figure (a float field): 0 … the largest float not above MAX_COUNT."""
    if isinstance(value, int | float) and value > 0:  # NaN fails the comparison
        return _MAX_COUNT_FLOAT if value > _MAX_COUNT_FLOAT else float(value)
    return 0.0


def _usd(value: Any) -> float:
    """An amount in USD as the accounting keeps it: a float in 0 … MAX_USD (NaN, negatives, junk: 0)."""
    if isinstance(value, int | float) and value > 0:
        return MAX_USD if value > MAX_USD else float(value)
    return 0.0


def _window_sum(a: Any, b: Any) -> list[Any]:
    """Two window rows added field by field, saturating; a stored row that is not one counts as empty."""
    if not isinstance(a, list | tuple) or len(a) != 8:
        a = _EMPTY_ROW
    if not isinstance(b, list | tuple) or len(b) != 8:
        b = _EMPTY_ROW
    total: list[Any] = [_count(_count(x) + _count(y)) for x, y in zip(a, b, strict=True)]
    total[_COST] = _usd(_usd(a[_COST]) + _usd(b[_COST]))
    return total


# -- keys and calendar --------------------------------------------------------------------------------


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C")


def _unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


def group_id(provider: str, model: str, kind: str) -> str:
    return f"{_escape(provider)}|{_escape(model)}|{kind}"


def window_key(tenant: str, group: str, size: str, start_ms: int) -> str:
    """``tenant|provider|model|kind|size|window_start`` (``|`` and ``%`` in names are %-escaped)."""
    return f"{tenant}|{group}|{size}|{start_ms}"


def month_bounds(ms: int) -> tuple[int, int]:
    """Start and end (epoch ms) of the UTC calendar month holding ``ms``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@lru_cache(maxsize=4096)
def _month_start_of_day(day_ms: int) -> int:
    return month_bounds(day_ms)[0]


def period_bounds(period: str, ms: int) -> tuple[int, int]:
    if period == "month":
        return month_bounds(ms)
    start = ms - ms % DAY_MS
    return start, start + DAY_MS


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _iso(ms: int) -> str:
    return _dt(ms).isoformat(timespec="seconds").replace("+00:00", "Z")


_REPORT_DEFAULTS = {name: field.default for name, field in UsageReport.model_fields.items()
                    if field.default_factory is None and not field.is_required()}


def _report(now_ms: int, **values: Any) -> UsageReport:
    """A report built from values this module computed: validation skipped, which is most of the cost.

    Every field is given, so pydantic resolves no default factory per report (that is slow).
    """
    return UsageReport.model_construct(**{**_REPORT_DEFAULTS, "occurred_at": _dt(now_ms), **values})


def _report_id(*parts: object) -> str:
    """A deterministic UUID (version 5 layout, BLAKE2b of the parts): the same report gets the same id."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16, key=_NAMESPACE.bytes).hexdigest()
    variant = "89ab"[int(digest[16], 16) & 3]
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"


# -- storage ------------------------------------------------------------------------------------------


class Store(Protocol):
    """One partition of one table (the engine's :class:`Table`, or a dict in unit tests)."""

    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...
    def items(self) -> Iterable[tuple[str, Any]]: ...


class TablePartition:
    """A :class:`Table` narrowed to one partition."""

    def __init__(self, table: Table, partition: int) -> None:
        self.table = table
        self.partition = partition

    def get(self, key: str) -> Any:
        return self.table.get(key, self.partition)

    def set(self, key: str, value: Any) -> None:
        self.table.set(key, value, self.partition)

    def delete(self, key: str) -> None:
        self.table.delete(key, self.partition)

    def items(self) -> Iterable[tuple[str, Any]]:
        return self.table.items(self.partition)


class DictStore(dict[str, Any]):
    """A plain in-memory store (unit tests, benchmarks' reference)."""

    def set(self, key: str, value: Any) -> None:
        self[key] = value

    def delete(self, key: str) -> None:
        self.pop(key, None)

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        return iter(list(super().items()))


@dataclass
class Stores:
    seen: Store
    windows: Store
    tenants: Store
    history: Store
    latest: Store

    @classmethod
    def in_memory(cls) -> Stores:
        return cls(DictStore(), DictStore(), DictStore(), DictStore(), DictStore())

    @classmethod
    def of_partition(cls, tables: dict[str, Table], partition: int) -> Stores:
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
                row[section] = {key: _usd(value) for key, value in row[section].items()}
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
                f"occurred_at {_iso(ts)} is {(ts - self.now_ms) / 1000:.0f} s ahead of the worker's clock "
                f"(at most {config.max_future_ms // 1000} s allowed)"
            )
        cost, source = self.a.cost_of(event)
        tenant = event.tenant
        row = self.row(tenant)
        hour = ts - ts % HOUR_MS
        if hour + HOUR_MS + config.grace_ms <= row["wm"]:
            raise LateEventError(
                f"late event: occurred_at {_iso(ts)} falls in the hour window {_iso(hour)}–{_iso(hour + HOUR_MS)}, "
                f"which closed at {_iso(hour + HOUR_MS + config.grace_ms)} (window end + grace "
                f"{config.grace_ms // 1000} s); the tenant's event time is already {_iso(row['wm'])}"
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
            delta[_IN] += event.input_tokens
            delta[_OUT] += event.output_tokens
            delta[_CACHED] += event.cached_tokens
            delta[_EVENTS] += 1
            delta[_COST] += cost
            delta[_REPORTED + source] += 1
        spend = row["spend"]
        for key in (f"day:{day}", f"month:{_month_start_of_day(day)}"):
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
            windows.set(key, _window_sum(windows.get(key), delta))
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
        closes_window = any(_start_of(key) + SIZES[_size_of(key)] + grace <= now for key in row["open"])
        closes_hour = _floor_hour(now - grace) > row["fc"] and row["fc"] > 0
        if not (closes_window or closes_hour):
            return False
        row["wm"] = now
        return True

    def _close_due(self, tenant: str, row: dict[str, Any]) -> None:
        wm, grace = row["wm"], self.config.grace_ms
        due = sorted(
            (_start_of(key) + SIZES[_size_of(key)], _size_of(key), _start_of(key), key)
            for key in row["open"]
            if _start_of(key) + SIZES[_size_of(key)] + grace <= wm
        )
        latest = None
        for end, size, start, key in due:
            groups = row["open"].pop(key)
            total: list[Any] = list(_EMPTY_ROW)
            summaries = []
            for group in groups:
                wkey = window_key(tenant, group, size, start)
                values = self.stores.windows.get(wkey)
                self.stores.windows.delete(wkey)
                if values is None:
                    continue
                values = _window_sum(values, _EMPTY_ROW)  # clamped: a row of an older version may hold inf
                total = _window_sum(total, values)
                provider, model, kind = (_unescape(part) for part in group.split("|"))
                report = self._rollup(tenant, size, start, end, values, provider, model, kind)
                self._reports.append((tenant, report))
                summaries.append({"provider": provider, "model": model, "kind": kind, "input_tokens": values[_IN],
                                  "output_tokens": values[_OUT], "cached_tokens": values[_CACHED],
                                  "events": values[_EVENTS], "cost_usd": values[_COST]})
            if not summaries:
                continue
            report = self._rollup(tenant, size, start, end, total, None, None, None)
            self._reports.append((tenant, report))
            self.stats.windows_closed[size] += 1
            if size == "hour":
                self._record_hour(tenant, row, start, total[_COST], _count(total[_IN] + total[_OUT]))
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
            event_id=_report_id("rollup", tenant, provider, model, kind, size, start),
            tenant=tenant,
            report="rollup",
            window=size,
            window_start=_dt(start),
            window_end=_dt(end),
            provider=provider,
            model=model,
            kind=kind,
            input_tokens=_count(values[_IN]),
            output_tokens=_count(values[_OUT]),
            cached_tokens=_count(values[_CACHED]),
            events=_count(values[_EVENTS]),
            cost_usd=_usd(values[_COST]),
            method=f"cost: reported={int(values[_REPORTED])} priced={int(values[_PRICED])} "
                   f"unpriced={int(values[_UNPRICED])}",
        )

    def _record_hour(self, tenant: str, row: dict[str, Any], start: int, cost: float, tokens: float) -> None:
        history = self._history(tenant, start)
        slot = (start - history["start"]) // HOUR_MS
        if slot < len(history["cost"]):  # an hour already in the history (zero-filled): add to it
            if slot >= 0:
                history["cost"][slot] = _usd(_usd(history["cost"][slot]) + cost)
                history["tokens"][slot] = _count(_count(history["tokens"][slot]) + tokens)
        else:
            history["cost"].append(cost)
            history["tokens"].append(tokens)
        self._trim(history)
        self.stores.history.set(tenant, history)
        for period in ("day", "month"):
            key = f"{period}:{period_bounds(period, start)[0]}"
            row["closed"][key] = _usd(row["closed"].get(key, 0.0) + cost)

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
        closed_until = _floor_hour(row["wm"] - self.config.grace_ms)
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
                event_id=_report_id("forecast", tenant, label, closed_until),
                tenant=tenant,
                report="forecast",
                window=label,
                window_start=_dt(closed_until),
                window_end=_dt(closed_until + hours * HOUR_MS),
                forecast_tokens=_token_figure(token.total),
                forecast_cost_usd=_usd(cost.total),
                lower_cost_usd=None if cost.lower is None else _usd(cost.lower),
                upper_cost_usd=None if cost.upper is None else _usd(cost.upper),
                confidence=cost.confidence,
                history_points=cost.history_points,
                method=cost.method,
                spent_usd=spent,
                budget_usd=budget.limit("month") if label == "month" else None,
                period="month" if label == "month" else None,
            )
            self._reports.append((tenant, report))
            forecasts[label] = {**_summary(report),
                                "lower_tokens": None if token.lower is None else _token_figure(token.lower),
                                "upper_tokens": None if token.upper is None else _token_figure(token.upper)}
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
            self._alert(tenant, row, period, start, end, "forecast", _usd(closed + ahead.total), limit, ahead,
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
            self._alert(tenant, row, period, start, end, "actual", _usd(spent), limit)

    def _alert(self, tenant: str, row: dict[str, Any], period: str, start: int, end: int, basis: str,
               amount: float, limit: float, ahead: Forecast | None = None, closed: float | None = None) -> None:
        key = f"{period}:{start}"
        sent = row["alerts"].setdefault(key, [])
        # A forecast alert for a threshold the actual spend already reached says nothing new.
        already = [float(entry.split(":")[1]) for entry in sent if basis == "forecast" or entry.startswith("actual:")]
        for share in crossed(amount, limit, self.a.budgets.thresholds, already):
            sent.append(f"{basis}:{share}")
            report = UsageReport(
                event_id=_report_id("budget", tenant, period, start, basis, share),
                tenant=tenant,
                report="budget_alert",
                period=period,
                window=period,
                window_start=_dt(start),
                window_end=_dt(end),
                budget_usd=limit,
                threshold=share,
                method=basis,
                spent_usd=amount if ahead is None else closed,
                cost_usd=amount,
                forecast_cost_usd=None if ahead is None else amount,
                lower_cost_usd=None if ahead is None or ahead.lower is None else _usd((closed or 0.0) + ahead.lower),
                upper_cost_usd=None if ahead is None or ahead.upper is None else _usd((closed or 0.0) + ahead.upper),
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


def _size_of(key: str) -> str:
    return key.split(":", 1)[0]


def _start_of(key: str) -> int:
    return int(key.split(":", 1)[1])


def _floor_hour(ms: int) -> int:
    return ms - ms % HOUR_MS


def _summary(report: UsageReport) -> dict[str, Any]:
    return report.model_dump(mode="json", exclude_none=True, exclude={"schema_version", "correlation_id",
                                                                        "causation_id"})


# -- the agent ----------------------------------------------------------------------------------------


class UsageContext(AgentContext):
    """What one run of the usage agent holds: the accountant (rules, prices, budgets) and its sweep clock."""

    def __init__(self, settings: Settings, resources: Resources) -> None:
        super().__init__(settings, resources)
        self.accountant = UsageAccountant(
            UsageConfig.from_settings(settings),
            PriceTable.load(settings.prices_file),
            Budgets.from_settings(settings),
        )
        self.next_sweep_ms = 0


@agent(
    "usage",
    topic=USAGE_EVENTS,
    tables=TABLES,
    context=UsageContext,
    tick_seconds=lambda settings: settings.usage_tick_seconds,
)
async def usage_agent(stream: BatchStream[UsageEvent], state: UsageContext) -> None:
    """Account usage events into windows; report rollups, forecasts and budget alerts."""
    accountant = state.accountant
    async for batch in stream:
        now = batch.now_ms
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for record in batch:
            by_partition[record.partition].append(record)
        partitions = set(by_partition) | (set(batch.partitions) if batch.tick else set())
        sweep = now >= state.next_sweep_ms
        if sweep:
            state.next_sweep_ms = now + _SEEN_SWEEP_MS
        for partition in sorted(partitions):
            if partition not in batch.partitions:
                continue
            account = accountant.begin(Stores.of_partition(stream.tables, partition), now)
            for record in by_partition.get(partition, ()):
                with batch.guard(record, on_error=_count_failure):
                    if not account.add(record.event):
                        logger.debug("duplicate usage event %s ignored", record.event.event_id)
            # The idle rule only once this partition is read to its end: a backlog is not silence.
            idle_close = batch.tick and await batch.lag(partition) == 0
            for tenant, report in account.finish(idle_close=idle_close):
                batch.emit(USAGE_REPORTS.name, tenant, report)
            if sweep:
                account.sweep_seen()
            _export(account.stats)


def _count_failure(record: Any, error: Exception) -> None:
    metrics.USAGE_EVENTS.labels("late" if isinstance(error, LateEventError) else "rejected").inc()


def _export(stats: BatchStats) -> None:
    if stats.accepted:
        metrics.USAGE_EVENTS.labels("accepted").inc(stats.accepted)
    if stats.duplicates:
        metrics.USAGE_EVENTS.labels("duplicate").inc(stats.duplicates)
    for (tenant, model), (inp, out, cached, cost) in stats.usage.items():
        tenant_label, model_label = metrics.usage_labels(tenant, model)
        metrics.USAGE_TOKENS.labels(tenant_label, model_label, "input").inc(inp)
        metrics.USAGE_TOKENS.labels(tenant_label, model_label, "output").inc(out)
        metrics.USAGE_TOKENS.labels(tenant_label, model_label, "cached").inc(cached)
        metrics.USAGE_COST.labels(tenant_label, model_label).inc(cost)
    for model, count in stats.unpriced.items():
        metrics.USAGE_UNPRICED.labels(metrics.model_label(model)).inc(count)
    for size, count in stats.windows_closed.items():
        metrics.USAGE_WINDOWS_CLOSED.labels(size).inc(count)
    for alert in stats.alerts:
        metrics.USAGE_BUDGET_ALERTS.labels(alert.period, alert.method, f"{alert.threshold:g}").inc()


# -- the HTTP query -----------------------------------------------------------------------------------


def tenant_usage(runner: AgentRunner | None, tenant: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of ``GET /usage/{tenant}`` on this worker.

    200: the tenant's latest closed rollups (hour, day), its latest forecast, its open windows, its
    period spend and budget. 404: this worker owns the tenant's partition but has no usage for it.
    421: another worker owns the partition (the body names the partition and the ones owned here; ask
    the other workers). 503: the agent is not running or still restoring its tables.
    """
    consumer = runner.consumer if runner is not None else None
    context = runner.context if runner is not None else None
    if runner is None or consumer is None or not isinstance(context, UsageContext):
        return 503, {"error": "the usage agent is not running on this worker (yet); retry shortly"}
    count = len(consumer.partitions_for_topic(USAGE_EVENTS.name) or ())
    if not count:
        return 503, {"error": f"no metadata for {USAGE_EVENTS.name} yet; retry shortly"}
    partition = partition_for(tenant.encode(), count)
    owned = list(runner.assigned_partitions)
    if partition not in owned:
        return 421, {
            "error": "this worker does not own the tenant's partition; ask the other workers",
            "tenant": tenant, "partition": partition, "owned_partitions": owned,
        }
    stores = Stores.of_partition(runner.tables, partition)
    row = stores.tenants.get(tenant)
    latest = stores.latest.get(tenant) or {}
    if row is None:
        return 404, {"error": "no usage recorded for this tenant", "tenant": tenant, "partition": partition}
    open_windows = []
    for key, groups in sorted(row["open"].items(), key=lambda item: (_size_of(item[0]), _start_of(item[0]))):
        size, start = _size_of(key), _start_of(key)
        rows = []
        for group in groups:
            values = stores.windows.get(window_key(tenant, group, size, start))
            if values is None:
                continue
            provider, model, kind = (_unescape(part) for part in group.split("|"))
            rows.append({
                "provider": provider, "model": model, "kind": kind, "input_tokens": values[_IN],
                "output_tokens": values[_OUT], "cached_tokens": values[_CACHED], "events": values[_EVENTS],
                "cost_usd": values[_COST],
            })
        open_windows.append({"window": size, "window_start": _iso(start), "window_end": _iso(start + SIZES[size]),
                             "groups": rows})
    budgets = context.accountant.budgets
    budget = budgets.for_tenant(tenant)
    return 200, {
        "tenant": tenant,
        "partition": partition,
        "event_time": _iso(row["wm"]) if row["wm"] else None,
        "closed_until": _iso(row["fc"]) if row["fc"] else None,
        "latest": {size: latest[size] for size in ("hour", "day") if size in latest},
        "forecast": latest.get("forecast"),
        "last_alert": latest.get("last_alert"),
        "open_windows": open_windows,
        "spend": {key: value for key, value in row["spend"].items()},
        "budget": {"monthly_usd": budget.monthly_usd, "daily_usd": budget.daily_usd,
                   "thresholds": list(budgets.thresholds)},
    }


@page("/usage/{tenant}")
async def usage_view(self: Any, request: Any, tenant: str) -> Any:
    """The latest rollups and forecast of one tenant, from the worker that owns its partition."""
    status, body = tenant_usage(running_agent("usage"), tenant)
    return self.json(body, status=status)


@page("/usage")
async def usage_index(self: Any, request: Any) -> Any:
    """The tenants this worker holds usage for, and its partitions (to find the owner of a tenant)."""
    runner = running_agent("usage")
    if runner is None or runner.consumer is None:
        return self.json({"error": "the usage agent is not running on this worker (yet)"}, status=503)
    tenants: list[str] = []
    for partition in runner.assigned_partitions:
        tenants.extend(key for key, _ in runner.tables["tenants"].items(partition))
    return self.json({"partitions": list(runner.assigned_partitions), "tenants": sorted(tenants)})
