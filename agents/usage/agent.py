"""The usage agent: accounts each batch of ``soma.usage.events`` per partition and sends the reports.

The rules live in :mod:`agents.usage.accounting`; this module runs them on the engine's tables, applies
the idle rule only on a partition read to its end, sweeps expired event ids now and then, and turns
what a batch accounted into the Prometheus counters.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from agents.exceptions import LateEventError
from agents.usage.accounting import TABLES, BatchStats, Stores, UsageAccountant, UsageConfig
from agents.usage.budgets import Budgets
from agents.usage.pricing import PriceTable
from schemas import UsageEvent
from streams import metrics
from streams.catalog import USAGE_EVENTS, USAGE_REPORTS
from streams.engine import AgentContext, BatchStream, Resources, agent
from streams.settings import Settings

__all__ = ["UsageContext", "usage_agent"]

logger = logging.getLogger(__name__)

_SEEN_SWEEP_MS = 60_000


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
